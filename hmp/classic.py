"""The classic "compress off vs on" experiment (DESIGN.md), scaled to this machine.

Each published case maps to a Setup: the same guest profile and network, the sizes chosen so
a run takes seconds. The articles' testbed was 1 GbE, emulated here with `x-link-bandwidth`
(it also bounds stop-and-copy, as a wire does, while QEMU lifts max-bandwidth there); their
"~32 MiB/s" case is QEMU's default max-bandwidth on that network, and "limited bandwidth" a
slower network. Their idle guests were booted OSes, which are never quite still: ours
rewrite 1000 pages/s of 8 MiB of their own memory (timers, counters, logs). What is dirty at
the stop is what the downtime has to send, and compression shrinks it.
"""

from __future__ import annotations

from dataclasses import replace

from engine.workload import MiB, WorkloadSpec, parse_size
from hmp.demo import Case, Figures, Measured, ProgressFn
from hmp.experiment import Result, Setup, run
from hmp.toolbar import Progress

GBE = 125_000_000  # 1 Gbit/s in bytes/s
IDLE_OS = "idle,rate=1000,wss=8M"

# key → the plain migration; the compressed one adds what the articles used.
SETUPS: dict[str, Setup] = {
    "idle-1gbe": Setup("idle-1gbe", ram="4G", workload=IDLE_OS, max_bandwidth="1G", link=GBE),
    "random-1gbe": Setup(
        "random-1gbe",
        ram="2G",
        workload="random-writer,rate=25000,wss=1G",
        max_bandwidth="1G",
        link=GBE,
    ),
    "idle-32mibs": Setup("idle-32mibs", ram="2G", workload=IDLE_OS, max_bandwidth="32M", link=GBE),
    "idle-limited": Setup(
        "idle-limited", ram="2G", workload=IDLE_OS, max_bandwidth="1G", link=25 * MiB
    ),
}


def compressed(setup: Setup, method: str = "zlib") -> Setup:
    """The articles' compressed run: level 1, 12 compress and 3 decompress threads."""
    return replace(setup, compress=True, method=method, level=1, threads=12, dthreads=3)


def describe(setup: Setup) -> str:
    if setup.link % GBE == 0 and setup.link:
        net = f"{setup.link // GBE} Gbit/s link"
    elif setup.link:
        net = f"{setup.link / 2**20:g} MiB/s link"
    if not setup.link:
        net = f"{setup.max_bandwidth}/s"
    elif parse_size(setup.max_bandwidth) < setup.link:
        net += f", max-bandwidth {setup.max_bandwidth}"
    spec = WorkloadSpec.parse(setup.workload)
    writes = f" writing {spec.rate} pages/s" if spec.rate else ""
    what = f"{setup.ram} {spec.name} guest{writes}, {net}"
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
