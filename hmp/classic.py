"""The classic "compress off vs on" experiment (DESIGN.md), scaled to this machine.

Each published case maps to a Setup: the same guest profile and network, the sizes chosen so
a run takes seconds. The network is the emulated link (`x-link-bandwidth`) where the articles
had 1 GbE, and `max-bandwidth` where they had a limited migration speed.
"""

from __future__ import annotations

from dataclasses import replace

from hmp.demo import Case, Figures, Measured, ProgressFn
from hmp.experiment import Result, Setup, run
from hmp.toolbar import Progress

GBE = 125_000_000  # 1 Gbit/s in bytes/s

# key → the plain migration; the compressed one adds what the articles used.
SETUPS: dict[str, Setup] = {
    "idle-1gbe": Setup("idle-1gbe", ram="4G", max_bandwidth="1G", link=GBE),
    "random-1gbe": Setup(
        "random-1gbe",
        ram="2G",
        workload="random-writer,rate=25000,wss=1G",
        max_bandwidth="1G",
        link=GBE,
    ),
    "idle-32mibs": Setup("idle-32mibs", ram="2G", max_bandwidth="32M"),
    "idle-limited": Setup("idle-limited", ram="2G", max_bandwidth="25M"),
}


def compressed(setup: Setup, method: str = "zlib") -> Setup:
    """The articles' compressed run: level 1, 12 compress and 3 decompress threads."""
    return replace(setup, compress=True, method=method, level=1, threads=12, dthreads=3)


def describe(setup: Setup) -> str:
    if setup.link % GBE == 0 and setup.link:
        net = f"{setup.link // GBE} Gbit/s link"
    elif setup.link:
        net = f"{setup.link / 2**20:g} MiB/s link"
    else:
        net = f"{setup.max_bandwidth}/s"
    what = f"{setup.ram} {setup.workload.split(',')[0]} guest, {net}"
    if setup.compress:
        what += f", {setup.method} level {setup.level}, {setup.threads}/{setup.dthreads} threads"
    if setup.multifd:
        what += f", multifd {setup.multifd}x {setup.multifd_compression}"
    return what


def figures(result: Result) -> Figures:
    return Figures(
        result.number("total time"), result.number("downtime"), result.number("transferred ram")
    )


def run_classic(case: Case, compress: bool, progress: ProgressFn) -> Measured:
    """The demo's runner: one real two-process migration of ``case``, plain or compressed."""
    setup = compressed(SETUPS[case.key]) if compress else SETUPS[case.key]
    result = run(setup, lambda f: progress(Progress.from_figures(f)))
    if result.status != "completed":
        raise RuntimeError(f"{describe(setup)}: migration {result.status}")
    return Measured(figures(result), result.series, describe(setup))
