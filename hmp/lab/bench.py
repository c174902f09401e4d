"""`qemu-hmp bench`: measured speed and memory figures, as ratios taken side by side in one run.

Machines are shared and noisy, so every target is a ratio of two figures measured in the
same run (engine vs raw library, 2 threads vs 1, compress on vs off), each the best of a few
repetitions. Tables go to stdout (tabulate), everything to JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
from tabulate import tabulate
from zlib_ng import zlib_ng

from engine import wire
from engine.compression import CHUNK, CODECS, CompressPool, DecompressPool
from engine.guest import PAGE_SIZE, GuestRam
from engine.workload import Workload
from engine.xbzrle import PageCache
from hmp.lab import cases, experiment, host, qemu_compare
from hmp.lab.experiment import Result, Setup, figure
from hmp.monitor import strtosz

MiB = 1 << 20


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def render(self) -> str:
        table = tabulate(self.rows, self.headers, tablefmt="github", floatfmt=".2f")
        return f"## {self.title}\n\n{table}\n"


@dataclass
class Report:
    """Tables are printed as soon as they are measured; the targets at the end."""

    out: TextIO = sys.stdout
    tables: list[Table] = field(default_factory=list)
    checks: list[tuple[str, float, str, bool]] = field(default_factory=list)  # name, value, target

    def add(self, table: Table) -> None:
        self.tables.append(table)
        self.out.write(table.render() + "\n")
        self.out.flush()

    def check(self, name: str, value: float, target: str, ok: bool) -> None:
        self.checks.append((name, value, target, ok))

    def targets(self) -> str:
        rows = [[n, v, t, "yes" if ok else "NO"] for n, v, t, ok in self.checks]
        return Table("Targets", ["figure", "measured", "target", "met"], rows).render()

    def to_json(self) -> dict[str, Any]:
        return {
            "tables": [
                {"title": t.title, "headers": t.headers, "rows": t.rows} for t in self.tables
            ],
            "targets": [
                {"figure": n, "measured": v, "target": t, "met": ok} for n, v, t, ok in self.checks
            ],
        }


def best_of(reps: int, run: Callable[[], float]) -> float:
    """The shortest of ``reps`` timings (seconds): the least disturbed by other load."""
    return min(run() for _ in range(reps))


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- compression stages (in-process: the compressor itself, no sockets) ------------------------


def idle_pages(size: int, seed: int) -> tuple[GuestRam, npt.NDArray[np.intp]]:
    """An idle-profile guest and its non-zero pages (the ones that get compressed)."""
    ram = GuestRam(size)
    Workload("idle", seed).fill(ram)
    pages = np.arange(ram.pages)
    return ram, pages[~ram.zero_mask(pages)]


def pool_seconds(pool: CompressPool, pages: npt.NDArray[np.intp]) -> float:
    def run() -> None:
        futures = [pool.compress(pages[i : i + CHUNK]) for i in range(0, len(pages), CHUNK)]
        for f in futures:
            f.result()

    return timed(run)


def compress_stages(report: Report, size: int, reps: int, seed: int) -> None:
    ram, pages = idle_pages(size, seed)
    mb = len(pages) * PAGE_SIZE / 1e6
    views = [ram.page(int(i)) for i in pages]
    table = Table(
        f"Compression stages: {len(pages)} non-zero idle-guest pages ({mb:.0f} MB), best of {reps}",
        ["codec", "stage", "threads", "MB/s", "ratio"],
    )
    raw = mb / best_of(reps, lambda: timed(lambda: [zlib_ng.compress(v, 1) for v in views]))
    ratio = len(pages) * PAGE_SIZE / sum(len(zlib_ng.compress(v, 1)) for v in views)
    table.rows.append(["zlib-ng (library)", "compress", 1, raw, ratio])
    rates: dict[tuple[str, int], float] = {}
    for codec in ("zlib", "zstd"):
        for threads in (1, 2, 12):
            pool = CompressPool(CODECS[codec], 1, threads, ram)
            try:
                pool_seconds(pool, pages[:CHUNK])  # start the threads and their streams
                rates[codec, threads] = mb / min(pool_seconds(pool, pages) for _ in range(reps))
            finally:
                pool.close()
            table.rows.append([codec, "compress (engine)", threads, rates[codec, threads], ""])
        decomp = decompress_rate(ram, pages, codec, reps)
        table.rows.append([codec, "decompress (engine)", 1, decomp, ""])
        report.check(
            f"{codec}: decompression / compression speed, 1 thread each",
            decomp / rates[codec, 1],
            "report (classic claim >= 4)",
            True,
        )
        report.check(
            f"{codec}: compress-threads 2 vs 1",
            rates[codec, 2] / rates[codec, 1],
            ">= 1.7",
            rates[codec, 2] / rates[codec, 1] >= 1.7,
        )
        report.check(
            f"{codec}: compress-threads 12 vs 2",
            rates[codec, 12] / rates[codec, 2],
            ">= 0.9",
            rates[codec, 12] / rates[codec, 2] >= 0.9,
        )
    report.check(
        "engine compressor vs raw zlib-ng, 1 thread",
        rates["zlib", 1] / raw,
        ">= 0.8",
        rates["zlib", 1] / raw >= 0.8,
    )
    report.add(table)


def decompress_rate(ram: GuestRam, pages: npt.NDArray[np.intp], codec: str, reps: int) -> float:
    """MB/s of pages one decompress worker writes into a (pre-faulted) guest."""
    pool = CompressPool(CODECS[codec], 1, 1, ram)
    try:
        chunks = [pool.compress(pages[i : i + CHUNK]).result() for i in range(0, len(pages), CHUNK)]
    finally:
        pool.close()
    target = GuestRam(ram.size)
    target.array[:] = 1  # fault the target in once: page faults are not decompression
    workers = DecompressPool(CODECS[codec], 1, target)

    def run() -> None:
        futures = [
            workers.decompress(pages[i * CHUNK : (i + 1) * CHUNK], memoryview(c.data), c.sizes)
            for i, c in enumerate(chunks)
        ]
        for f in futures:
            f.result()

    try:
        seconds = best_of(reps, lambda: timed(run))
    finally:
        workers.close()
    assert bytes(target.page(int(pages[0]))) == bytes(ram.page(int(pages[0])))
    return len(pages) * PAGE_SIZE / 1e6 / seconds


# -- two-process migrations ------------------------------------------------------------------


# The classic table's figures: `query-migrate` key, and its unit's size (ms, ms, kB).
FIG_COLUMNS = (("total-time", 1), ("downtime", 1), ("ram.transferred", 1024))


def fig_row(label: str, result: Result, base: Result | None = None) -> list[Any]:
    row: list[Any] = [label, result.status]
    for key, unit in FIG_COLUMNS:
        value, plain = result.number(key), base.number(key) if base else 0.0
        row += [value / unit, value / plain if plain else ""]
    return [*row, result.info.get("compression", {}).get("compression-rate", "")]


def classic_runs(report: Report) -> None:
    """The classic experiment on two cases, plain vs compressed, plus zstd and multifd rows."""
    headers = ["config", "status", "total ms", "x plain", "downtime ms", "x plain"]
    headers += ["transferred kB", "x plain", "compression rate"]
    best: dict[str, float] = {}
    for key in ("idle-32mibs", "random-1gbe"):
        plain_setup = cases.CASES[key].setup
        table = Table(f"Classic experiment: {cases.describe(plain_setup)}", headers)
        plain = experiment.run(plain_setup)
        table.rows.append(fig_row("compress off", plain))
        configs = {
            "zlib-ng level 1, 12/3 threads": cases.compressed(plain_setup),
            "zstd level 1, 12/3 threads": cases.compressed(plain_setup, "zstd"),
            "multifd 4 channels, zstd": replace(plain_setup, multifd=4, multifd_compression="zstd"),
            "adaptive (x-compress-auto), zstd": replace(
                cases.compressed(plain_setup, "zstd"), compress_auto=True
            ),
        }
        results = {name: experiment.run(setup) for name, setup in configs.items()}
        for name, result in results.items():
            table.rows.append(fig_row(name, result, plain))
        report.add(table)
        zlib = results["zlib-ng level 1, 12/3 threads"]

        def ratio(result: Result, label: str, base: Result = plain) -> float:
            return result.number(label) / max(base.number(label), 1e-9)

        checks = [("total-time", 0.6)]
        if key == "idle-32mibs":
            checks += [("ram.transferred", 0.6), ("downtime", 0.65)]
            for label in ("total-time", "ram.transferred"):
                best[label] = min(ratio(r, label) for n, r in results.items() if "zlib" not in n)
        for label, target in checks:
            value = ratio(zlib, label)
            report.check(f"{key}: zlib-ng on/off {label}", value, f"<= {target}", value <= target)
    for label, value in best.items():
        report.check(
            f"idle-32mibs: best of zstd/multifd/adaptive, on/off {label}",
            value,
            "<= 0.45",
            value <= 0.45,
        )


def xbzrle_setups(ram: str) -> dict[str, Setup]:
    """The two guests of the xbzrle comparison, in ``ram``: one rewriting 6000 pages/s of a
    working set of its own memory (an eighth of RAM, at most 32 MiB: inside the default 64 MiB
    cache) with 8-byte changes, near what 32 MiB/s carries, so plain needs passes; and one
    writing random words anywhere in half of RAM (far more pages than the cache holds)."""
    size = strtosz(ram, "M")
    wss = min(size // 8, 32 * MiB)  # half the default cache at most
    base = Setup("xbzrle", ram=ram, max_bandwidth="32M", timeout=60.0)
    return {
        "working set < cache, small changes": replace(
            base, name="xbzrle-wss", workload=f"idle,rate=6000,wss={wss // MiB}M"
        ),
        "random writes, wss = RAM/2": replace(
            base, name="xbzrle-random", workload=f"random-writer,rate=5000,wss={size // 2 // MiB}M"
        ),
    }


def xbzrle_runs(report: Report, ram: str) -> None:
    """xbzrle vs plain vs compress on each guest: transferred, total time, passes."""
    headers = ["config", "status", "total ms", "x plain", "transferred kB", "x plain"]
    headers += ["dirty syncs", "xbzrle pages", "xbzrle cache miss rate"]
    for title, plain_setup in xbzrle_setups(ram).items():
        table = Table(f"xbzrle: {ram} guest, {title} ({plain_setup.workload}), 32 MiB/s", headers)
        configs = {
            "plain": plain_setup,
            "xbzrle (64 MiB cache)": replace(plain_setup, xbzrle=True),
            "compress (zlib-ng 1, 12/3 threads)": cases.compressed(plain_setup),
        }
        results = {name: experiment.run(setup) for name, setup in configs.items()}
        plain = results["plain"]
        for name, result in results.items():
            cache = result.info.get("xbzrle-cache", {})
            row: list[Any] = [name, result.status]
            for key, unit in (("total-time", 1), ("ram.transferred", 1024)):
                value = result.number(key)
                row += [value / unit, value / max(plain.number(key), 1e-9)]
            row += [
                result.number("ram.dirty-sync-count"),
                cache.get("pages", ""),
                cache.get("cache-miss-rate", ""),
            ]
            table.rows.append(row)
        report.add(table)
        ratio = results["xbzrle (64 MiB cache)"].number("ram.transferred") / max(
            plain.number("ram.transferred"), 1e-9
        )
        if plain_setup.name == "xbzrle-random":  # no deltas to win: only the bookkeeping
            report.check(f"{title}: xbzrle/plain transferred", ratio, "<= 1.05", ratio <= 1.05)
        else:
            report.check(f"{title}: xbzrle/plain transferred", ratio, "<= 1.0", ratio <= 1.0)
        src = results["xbzrle (64 MiB cache)"].rss_kib["src"] * 1024
        over = (src - strtosz(ram, "M") - strtosz(plain_setup.xbzrle_cache, "M")) / MiB
        label = f"{title}: xbzrle src RSS over guest + cache (MiB)"
        report.check(label, over, "<= 100", over <= 100)
    xbzrle_encode_speed(report)


def xbzrle_encode_speed(report: Report, pages: int = 16384) -> None:
    """The C encoder on cache hits (an 8-byte change per page): MB of page data per second on
    one thread, the best of 5 passes over 64 MiB."""
    ram = GuestRam(pages * PAGE_SIZE)
    rng = np.random.default_rng(1)
    ram.page_array[:] = rng.integers(0, 256, size=ram.page_array.shape, dtype=np.uint8)
    cache, indices = PageCache(2 * pages * PAGE_SIZE), np.arange(pages, dtype=np.intp)
    batches = [indices[i : i + wire.MAX_BATCH] for i in range(0, pages, wire.MAX_BATCH)]
    for batch in batches:  # misses: every page enters the cache
        cache.encode(ram, batch, 1, False)
    words, best = ram.page_array.view(np.uint64), float("inf")
    for age in range(3, 8):
        words[indices, rng.integers(0, PAGE_SIZE // 8, size=pages)] ^= np.uint64(0xFF)
        start = time.perf_counter()
        for batch in batches:
            cache.encode(ram, batch, age, False)
        best = min(best, time.perf_counter() - start)
    speed = pages * PAGE_SIZE / best / 1e6
    report.check("xbzrle encode, cache hits, one thread (MB/s)", speed, ">= 500", speed >= 500)


def monitor_latency(report: Report, calls: int = 200) -> None:
    """`info migrate` round trips on the source during a heavy compressed migration."""
    setup = replace(cases.compressed(cases.CASES["idle-32mibs"].setup), max_bandwidth="0", link=0)
    setup = replace(setup, ram="4G", workload="random-writer,rate=20000,wss=1G")
    with experiment.migrating(setup) as (src, _dst):
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            src.execute("info migrate", 10)
            times.append((time.perf_counter() - t0) * 1000)
        active = src.qmp.execute("query-migrate").get("status") == "active"
        src.execute("migrate_cancel", 10)
    times.sort()
    p99 = times[int(len(times) * 0.99) - 1]
    report.add(
        Table(
            f"Monitor latency: {calls} x `info migrate` during {cases.describe(setup)}",
            ["p50 ms", "p99 ms", "max ms", "still active at the end"],
            [[times[len(times) // 2], p99, times[-1], active]],
        )
    )
    report.check(
        "info migrate p99 latency during a compressed migration (ms)", p99, "<= 20", p99 <= 20
    )


def against_qemu(report: Report, workdir: Path) -> None:
    """Real QEMU 7.2 and qemu-hmp migrating the same image with the same commands."""
    if not qemu_compare.available():
        report.add(Table("Against QEMU 7.2: qemu-system-x86_64 is not installed", []))
        return
    headers = ["flags", "QEMU total ms", "ours total ms", "ours / QEMU", "QEMU runs", "ours runs"]
    headers += ["QEMU transferred kB", "ours transferred kB", "QEMU rate", "ours rate"]
    table = Table(
        f"Against QEMU 7.2: {qemu_compare.IMAGE_MIB} MiB image of this machine's binaries and "
        "text, compress 2/1 threads, level 1, max-bandwidth 100G; medians of 3 alternating runs",
        headers,
    )
    for prealloc in (False, True):
        qemu, ours = qemu_compare.compare(workdir, prealloc)
        times = [[figure(run.info, "total-time") for run in side] for side in (qemu, ours)]
        q, o = (statistics.median(t) for t in times)
        table.rows.append(
            ["-mem-prealloc" if prealloc else "(none)", q, o, o / q if q and o else ""]
            + [" ".join(f"{t:.0f}" for t in side) for side in times]
            + [figure(side[0].info, "ram.transferred") // 1024 for side in (qemu, ours)]
            + [figure(side[0].info, "compression.compression-rate") for side in (qemu, ours)]
        )
        label = "with -mem-prealloc" if prealloc else "defaults"
        ratio = o / q if q and o else float("nan")  # nan: one side did not complete
        report.check(f"total time vs QEMU 7.2, {label}", ratio, "<= 0.2", ratio <= 0.2)
    report.add(table)


def _ms(run: qemu_compare.Run) -> float:
    return figure(run.info, "total-time")


def _sent(run: qemu_compare.Run) -> float:
    return figure(run.info, "ram.transferred")


def _median_fastest(runs: list[qemu_compare.Run]) -> str:
    times = [_ms(run) for run in runs]
    return f"{statistics.median(times):.0f} / {min(times):.0f}" if times else ""


@dataclass
class Side:
    """One program's runs of a config on a link, and the floor of each."""

    runs: list[qemu_compare.Run]
    floors_ms: list[float]

    @property
    def median(self) -> float:
        return statistics.median(_ms(r) for r in self.runs) if self.runs else float("nan")

    @property
    def fastest(self) -> float:
        return min(_ms(r) for r in self.runs) if self.runs else float("nan")

    @property
    def floor(self) -> float:
        return statistics.median(self.floors_ms) if self.floors_ms else float("nan")

    def cell(self) -> str:
        """Each run's total time, in parentheses its floor and the host's CPU steal meanwhile,
        and its status unless completed."""
        cells = []
        for run, floor in zip(self.runs, self.floors_ms, strict=True):
            status = run.info.get("status")
            cells.append(
                f"{_ms(run):.0f} ({floor:.0f}, {_steal(run.steal)})"
                + ("" if status == "completed" else f" {status}")
            )
        return " ".join(cells)


def _steal(percent: float | None) -> str:
    return "?" if percent is None else f"{percent:.0f}%"


def _floors(
    runs: list[qemu_compare.Run], link: qemu_compare.Link, image: memoryview
) -> list[float]:
    """Each run's floor, ms: its bytes at the link's rate, or (loopback) a raw socket copy of
    as many bytes of the image into fresh memory, measured now."""
    if link.rate:
        return [_sent(r) / link.rate * 1000 for r in runs]
    return [raw_socket_seconds(image, True, int(_sent(r))) * 1000 for r in runs]


QEMU_HEADERS = ["config", "QEMU median / fastest ms", "ours median / fastest ms"]
QEMU_HEADERS += ["ours / QEMU (medians)", "QEMU MB sent", "ours MB sent", "QEMU floor ms"]
QEMU_HEADERS += ["ours floor ms", "ours / its floor (medians)"]
QEMU_HEADERS += ["runs: QEMU ms (floor, host steal)", "runs: ours ms (floor, host steal)"]


def _qemu_row(config: qemu_compare.Config, qemu: Side, ours: Side) -> list[Any]:
    def mb(side: Side) -> str:
        return f"{statistics.median(_sent(r) for r in side.runs) / 1e6:.0f}" if side.runs else ""

    ratio = ours.median / qemu.median if qemu.runs else ""
    return [
        config.label + ("" if config.qemu else " (ours only)"),
        _median_fastest(qemu.runs),
        _median_fastest(ours.runs),
        ratio,
        mb(qemu),
        mb(ours),
        qemu.floor if qemu.runs else "",
        ours.floor,
        ours.median / ours.floor,
        qemu.cell(),
        ours.cell(),
    ]


def _completed(run: qemu_compare.Run) -> bool:
    return run.info.get("status") == "completed"


def _link_checks(
    report: Report, link: qemu_compare.Link, measured: dict[str, tuple[Side, Side]]
) -> None:
    """The issue's targets for one link, as ratios of figures taken in this run."""
    shared = {name: sides for name, sides in measured.items() if sides[0].runs}
    if not link.rate:
        if "plain" in measured:
            qemu, ours = measured["plain"]
            value = ours.median / qemu.fastest
            report.check("loopback plain: ours median / QEMU fastest", value, "<= 1", value <= 1)
            value = ours.median / ours.floor
            report.check("loopback plain: ours median / raw copy", value, "<= 2", value <= 2)
        for name, (qemu, ours) in shared.items():
            value = ours.median / qemu.median
            report.check(f"loopback {name}: ours / QEMU median", value, "<= 0.5", value <= 0.5)
        return
    # Our best config is the fastest whose every run completed (a failed run's time is not
    # a migration's).
    whole = [ours for _, ours in measured.values() if all(_completed(r) for r in ours.runs)]
    if not shared or not whole:
        return
    best = min(whole, key=lambda ours: ours.median)
    theirs = min(qemu.median for qemu, _ in shared.values())
    value = best.median / theirs
    report.check(f"{link.name}: our best / QEMU's best config", value, "<= 0.8", value <= 0.8)
    value = best.median / best.floor
    report.check(f"{link.name}: our best config / its floor", value, "<= 1.1", value <= 1.1)


def against_qemu_links(
    report: Report,
    workdir: Path,
    runs: int,
    configs: list[str],
    links: list[str],
    qemu: str = "7.2",
) -> None:
    """`bench qemu`: real QEMU (release ``qemu``) and qemu-hmp in its dialect on the same image
    with the same commands, per config and link, alternating; then `info migrate` latency
    during the heaviest config."""
    release = qemu_compare.RELEASES[qemu]
    if not qemu_compare.available(release.name):
        report.add(Table(f"Against QEMU {release.name}: {release.program} is not installed", []))
        return
    image_file = qemu_compare.image_path(workdir)
    image = memoryview(image_file.read_bytes())
    heaviest: tuple[tuple[bool, float], qemu_compare.Link, qemu_compare.Config] | None = None
    rss: list[qemu_compare.Run] = []
    for link in (qemu_compare.LINKS[name] for name in links):
        title = (
            f"Against QEMU {qemu} on {link.label}: {qemu_compare.IMAGE_MIB} MiB image in a "
            f"{qemu_compare.GUEST_MIB} MiB guest, max-bandwidth 100G, {runs} alternating runs "
            "per side, QEMU's own total time"
        )
        measured: dict[str, tuple[Side, Side]] = {}
        table = Table(title, QEMU_HEADERS)
        try:
            with qemu_compare.shaped_link(link) as prefix:
                for name in configs:
                    config = qemu_compare.CONFIGS_BY_RELEASE[qemu][name]
                    theirs, ours = qemu_compare.compare(
                        workdir, runs=runs, config=config, prefix=prefix
                    )
                    sides = (
                        Side(theirs, _floors(theirs, link, image)),
                        Side(ours, _floors(ours, link, image)),
                    )
                    measured[name] = sides
                    rss += ours
                    table.rows.append(_qemu_row(config, *sides))
                    # Heaviest: the longest on loopback, where every config is bound by CPU.
                    weight = (not link.rate, sides[1].median)
                    if heaviest is None or weight > heaviest[0]:
                        heaviest = (weight, link, config)
        except qemu_compare.LinkUnavailable as exc:
            report.add(Table(f"{link.label}: skipped ({exc})", []))
            continue
        report.add(table)
        _link_checks(report, link, measured)
    if heaviest is not None:
        _, link, config = heaviest
        with qemu_compare.shaped_link(link) as prefix:
            times, run = qemu_compare.monitor_latency_ms(image_file, config, prefix)
        _latency_and_rss(report, f"{config.label} on {link.label}", times, [*rss, run])


def _latency_and_rss(
    report: Report, where: str, times: list[float], runs: list[qemu_compare.Run]
) -> None:
    times = sorted(times)
    p99 = times[max(0, -(-len(times) * 99 // 100) - 1)] if times else float("nan")
    guest = qemu_compare.GUEST_MIB
    peak = {side: max(r.rss_kib[side] for r in runs) / 1024 for side in ("src", "dst")}
    p50 = times[len(times) // 2] if times else float("nan")
    row = [len(times), p50, p99, max(times, default=0.0), peak["src"], peak["dst"], guest]
    report.add(
        Table(
            f"qemu-hmp: `info migrate` typed back to back during {where}; peak RSS of all runs",
            ["calls", "p50 ms", "p99 ms", "max ms", "src RSS MiB", "dst RSS MiB", "guest MiB"],
            [row],
        )
    )
    report.check(f"info migrate p99 during {where} (ms)", p99, "<= 20", p99 <= 20)
    for side, mib in peak.items():
        report.check(f"{side} peak RSS over guest (MiB)", mib - guest, "<= 100", mib - guest <= 100)


# -- the engine against the machine's limits ---------------------------------------------------


def _receive(port: Any, size: int, fresh: bool) -> None:
    """A raw receiver in its own process: ``size`` bytes into fresh guest-like RAM (``fresh``,
    as a destination receives) or into one reused 1 MiB buffer (the socket alone)."""
    ram = GuestRam(-(-size // PAGE_SIZE) * PAGE_SIZE if fresh else MiB, huge=False)
    with socket.create_server(("127.0.0.1", 0)) as server:
        port.put(server.getsockname()[1])
        conn, _ = server.accept()
        with conn:
            for off in range(0, size, MiB):
                start = off if fresh else 0
                wire.recv_into(conn, ram.buf[start : start + min(MiB, size - off)])
            conn.sendall(b"k")


def raw_socket_seconds(data: memoryview, fresh: bool, size: int = 0) -> float:
    """``size`` bytes (default: all) of ``data``, from its start again as often as needed,
    over a plain loopback TCP socket, process to process, 1 MiB sends."""
    size = size or len(data)
    ctx = multiprocessing.get_context("spawn")
    port = ctx.Queue()
    child = ctx.Process(target=_receive, args=(port, size, fresh))
    child.start()
    try:
        with socket.create_connection(("127.0.0.1", port.get(timeout=60)), timeout=300) as sock:
            t0, sent = time.perf_counter(), 0
            while sent < size:
                at = sent % len(data)
                piece = data[at : at + min(MiB, size - sent)]
                sock.sendall(piece)
                sent += len(piece)
            sock.recv(1)
            return time.perf_counter() - t0
    finally:
        child.join(30)


def _fill(workload: str, size: int, out: Any) -> None:
    """In a fresh process, as a qemu-hmp source at start: build guest RAM and fill it; puts
    the user and system CPU seconds and the wall seconds that took."""
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    ram = GuestRam(size)
    Workload(workload, 0).fill(ram)
    wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    out.put((after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, wall))


def fill_seconds(workload: str, size: int) -> tuple[float, float, float]:
    """User, system and wall seconds of one fill, in a child (its heap and page cache cold)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_fill, args=(workload, size, out))
    child.start()
    try:
        result: tuple[float, float, float] = out.get(timeout=300)
        return result
    finally:
        child.join(30)


def fill_runs(report: Report, reps: int) -> None:
    """CPU time to fill a 2 GiB guest at start (what delays the first prompt), best of reps.
    CPU time, not wall: other processes on the machine delay the wall clock, not the work."""
    size = 2 << 30
    table = Table(
        f"Guest RAM fill at start, 2 GiB, fresh process each, best of {reps} by CPU",
        ["workload", "CPU s (user+sys)", "user s", "sys s", "wall s"],
    )
    for workload in ("idle", "random"):
        user, system, wall = min(
            (fill_seconds(workload, size) for _ in range(reps)), key=lambda r: r[0] + r[1]
        )
        table.rows.append([workload, user + system, user, system, wall])
        report.check(
            f"fill 2 GiB {workload} guest: seconds (CPU user+sys)",
            user + system,
            "< 1",
            user + system < 1,
        )
    report.add(table)


def engine_runs(report: Report, reps: int) -> None:
    fill_runs(report, reps)
    size = 1 << 30
    ram = GuestRam(size)
    Workload("random", 1).fill(ram)
    raw = size / 1e6 / min(raw_socket_seconds(ram.buf, fresh=True) for _ in range(reps))
    socket_only = size / 1e6 / min(raw_socket_seconds(ram.buf, fresh=False) for _ in range(reps))
    ram.close()
    random_1g = Setup("random-1g", ram="1G", workload="random", max_bandwidth="0")
    rand = min(
        (experiment.run(random_1g) for _ in range(reps)), key=lambda r: r.number("total-time")
    )
    zero = experiment.run(Setup("zero-4g", ram="4G", workload="zero", max_bandwidth="0"))
    moved = size / 1e6 / (rand.number("total-time") / 1000)
    scan = 4 * size / 1e9 / (zero.number("total-time") / 1000)
    cold, warm = zero_scan_rates(4 * size)
    table = Table(
        "Engine: uncompressed migration vs the machine's limits",
        ["run", "status", "total ms", "MB/s of guest RAM", "src RSS MiB", "dst RSS MiB"],
    )
    table.rows.append(["raw TCP copy of 1 GiB into fresh RAM", "", size / 1e3 / raw, raw, "", ""])
    reused = size / 1e3 / socket_only
    table.rows.append(["raw TCP copy of 1 GiB, one reused buffer", "", reused, socket_only, "", ""])
    for label, result, rate in (
        ("1 GiB random guest", rand, moved),
        ("4 GiB zero guest", zero, scan * 1e3),
    ):
        table.rows.append(
            [
                label,
                result.status,
                result.number("total-time"),
                rate,
                result.rss_kib["src"] / 1024,
                result.rss_kib["dst"] / 1024,
            ]
        )
    report.add(table)
    report.add(
        Table(
            "Zero-page detection in one process, 4 GiB zero guest (GuestRam.zero_mask)",
            ["first read (page faults) GB/s", "again GB/s"],
            [[cold, warm]],
        )
    )
    # The copy into fresh RAM stores the bytes as a destination must; the reused buffer shows
    # the socket alone (what memory costs), so it is reported, not a target.
    ratio = moved / raw
    report.check("1 GiB random: engine vs raw copy into fresh RAM", ratio, ">= 0.6", ratio >= 0.6)
    report.check(
        "1 GiB random: engine vs raw copy into one reused buffer",
        moved / socket_only,
        "report (socket only)",
        True,
    )
    report.check("4 GiB zero guest, migration scan rate (GB/s)", scan, ">= 2", scan >= 2)
    for label, result, guest in (("1 GiB random", rand, size), ("4 GiB zero", zero, 4 * size)):
        for side in ("src", "dst"):
            over = result.rss_kib[side] * 1024 - guest
            report.check(
                f"{label}: {side} RSS over guest RAM (MiB)", over / MiB, "<= 100", over <= 100 * MiB
            )
    digest_cost(report)


# A guest that dirties ~100 MB/s over half its RAM, three times what max-bandwidth 32M sends.
POSTCOPY_WORKLOAD = "random-writer,rate=25000,wss={wss}"


def postcopy_runs(
    report: Report, ram: str, link: qemu_compare.Link = qemu_compare.LINKS["loopback"]
) -> None:
    """Precopy (which does not converge within its limit) vs auto-converge vs postcopy vs
    postcopy-preempt, one run each, on a guest dirtying faster than max-bandwidth sends; the
    background stream of postcopy at max-bandwidth and unlimited (it fills the socket, or
    the link, which requested pages must cross without preempt). On a shaped ``link`` both
    endpoints run in its namespace; where it cannot be made, on the emulated link
    (x-link-bandwidth) at its rate, and the table says which."""
    try:
        with qemu_compare.shaped_link(link) as prefix:
            rtt = qemu_compare.round_trip_s(prefix)
            _postcopy_runs(report, ram, link, link.label, prefix, rtt)
            return
    except qemu_compare.LinkUnavailable as exc:
        where = f"{link.name}, emulated by x-link-bandwidth ({exc})"
    _postcopy_runs(report, ram, link, where, (), qemu_compare.round_trip_s(()), emulate=True)


# How long `bench postcopy` watches a busy thread's stalls before its runs.
STALL_PROBE_S = 5.0


def _postcopy_runs(
    report: Report,
    ram: str,
    link: qemu_compare.Link,
    where: str,
    prefix: Sequence[str],
    rtt_s: float,
    emulate: bool = False,
) -> None:
    size = strtosz(ram)
    bandwidth = 32 * MiB
    guest = POSTCOPY_WORKLOAD.format(wss=size // 2)
    base = Setup("postcopy", ram=ram, workload=guest, max_bandwidth="32M")
    base = replace(base, timeout=max(30.0, 2 * size / bandwidth), link=link.rate if emulate else 0)
    runs = {
        "precopy": base,
        "auto-converge": replace(base, auto_converge=True),
        "postcopy, background 32M": replace(base, postcopy=True, max_postcopy_bandwidth="32M"),
        "postcopy, background unlimited": replace(base, postcopy=True),
        "postcopy-preempt, background 32M": replace(
            base, postcopy=True, preempt=True, max_postcopy_bandwidth="32M"
        ),
        "postcopy-preempt, background unlimited": replace(base, postcopy=True, preempt=True),
    }
    headers = ["run", "status", "total ms", "downtime ms", "vCPU blocktime ms", "faults"]
    headers += ["wait p50 ms", "wait p99 ms", "src RSS MiB", "dst RSS MiB", "host steal"]
    idle = host.stalls(STALL_PROBE_S)  # before the runs: nothing else of ours runs yet
    title = f"Postcopy: {ram} guest writing 25000 pages/s, max-bandwidth 32M, on {where}"
    title += f" (round trip {rtt_s * 1e6:.0f} us; before the runs, a busy thread stalled"
    title += (
        f" {idle.per_s:.1f} times/s over {idle.over_ms:g} ms, longest {idle.longest_ms:.1f} ms)"
    )
    table = Table(title, headers)
    results, steals = {}, {}
    for label, setup in runs.items():
        with host.StealMeter() as meter:
            result = results[label] = experiment.run(setup, prefix=prefix)
        steal = steals[label] = meter.percent
        waits = result.faults.get("waits-ms", [])
        p50, p99 = (float(np.percentile(waits, q)) for q in (50, 99)) if waits else ("", "")
        table.rows.append(
            [
                label,
                result.status,
                # A cancelled migration's total time reads 0 (QEMU's): its last sample instead.
                result.number("total-time") or (result.series[-1].t_ms if result.series else 0),
                result.number("downtime") if result.status == "completed" else "",
                result.dst_info.get("postcopy-blocktime", ""),
                result.faults.get("faults", ""),
                p50,
                p99,
                result.rss_kib["src"] / 1024,
                result.rss_kib["dst"] / 1024,
                _steal(steal),
            ]
        )
    report.add(table)
    limit = size / bandwidth * 1000
    report.check(
        "precopy converges within its limit", float(results["precopy"].status == "completed"),
        "report (expected 0: it does not)", True,
    )  # fmt: skip
    total = results["postcopy, background 32M"].number("total-time")
    report.check(
        "postcopy (32M) total time / (guest RAM / 32 MiB/s)",
        total / limit,
        "<= 1.2",
        total <= 1.2 * limit and results["postcopy, background 32M"].status == "completed",
    )
    # On loopback 5 ms; on a link 3x a round trip and a page's time on the wire (the issue's).
    bound_ms = 5.0 if not link.rate else 3 * (rtt_s + PAGE_SIZE / link.rate) * 1000
    for label in ("postcopy-preempt, background unlimited", "postcopy, background unlimited"):
        waits = results[label].faults.get("waits-ms", [])
        p99 = float(np.percentile(waits, 99)) if waits else 0.0
        target = f"<= {bound_ms:.2f}" if "preempt" in label else "report"
        ok = p99 <= bound_ms if "preempt" in label else True
        report.check(f"{label}: faulting vCPU's wait p99 (ms, {link.name})", p99, target, ok)
    # The host's stalls (its steal) land anywhere in a fault's path, whatever its threads do.
    label = "postcopy-preempt, background unlimited"
    steal = steals[label]
    report.check(
        f"{label}: host CPU steal (%)", float("nan") if steal is None else steal, "report", True
    )
    stalls = "host: a busy thread's stalls over 1 ms, before the runs (per s)"
    report.check(stalls, idle.per_s, "report", True)
    report.check("host: its longest stall (ms)", idle.longest_ms, "report", True)
    for label, result in results.items():
        if not result.setup.postcopy:
            continue
        for side in ("src", "dst"):
            over = result.rss_kib[side] * 1024 - size
            report.check(
                f"{label}: {side} RSS over guest RAM (MiB)", over / MiB, "<= 100", over <= 100 * MiB
            )


def zero_scan_rates(size: int) -> tuple[float, float]:
    ram = GuestRam(size)
    pages = np.arange(ram.pages)
    try:
        cold = size / 1e9 / timed(lambda: ram.zero_mask(pages))
        warm = size / 1e9 / timed(lambda: ram.zero_mask(pages))
    finally:
        ram.close()
    return cold, warm


def digest_cost(report: Report) -> None:
    """What the end-to-end digest costs: a CRC per page sent, and one hash at completion."""
    size = 1 << 30
    ram = GuestRam(size)
    Workload("random", 2).fill(ram)
    pages = np.arange(ram.pages)
    per_gib = timed(lambda: ram.crc_pages(pages)) * 1000
    digest = wire.PageDigest(4 * ram.pages)
    final = timed(digest.hexdigest) * 1000
    ram.close()
    report.add(
        Table(
            "End-to-end digest cost",
            ["CRC-32 per page, ms per GiB sent", "final hash of a 4 GiB guest's CRC table, ms"],
            [[per_gib, final]],
        )
    )


# -- the command -------------------------------------------------------------------------------


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return int(text)


def _names(table: dict[str, Any]) -> Callable[[str], list[str]]:
    """An option's comma-separated names, each one of ``table``'s."""

    def parse(text: str) -> list[str]:
        names = [name for name in text.split(",") if name]
        unknown = [name for name in names if name not in table]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"{','.join(unknown) or text!r}: expected some of {','.join(table)}"
            )
        return names

    return parse


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qemu-hmp bench", description=__doc__)
    parser.add_argument(
        "what", choices=("compress", "engine", "fill", "xbzrle", "postcopy", "qemu", "all")
    )
    parser.add_argument("--ram", default="1G", help="guest RAM of the xbzrle and postcopy runs")
    parser.add_argument(
        "--link",
        choices=list(qemu_compare.LINKS),
        default="loopback",
        help="postcopy: where the runs' bytes go (1gbit: a tc-shaped namespace link, as for qemu)",
    )
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per figure (best kept)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="where the QEMU comparison keeps its image")
    parser.add_argument(
        "--runs", type=_positive, default=3, help="qemu: runs per side and config (>= 1)"
    )
    parser.add_argument(
        "--qemu",
        choices=tuple(qemu_compare.CONFIGS_BY_RELEASE),
        default="7.2",
        help="qemu: the QEMU release to compare with, and our dialect (default: 7.2; the "
        "other benches run 7.2's)",
    )
    parser.add_argument(
        "--configs",
        type=str,
        help=f"qemu: comma-separated, of {','.join(qemu_compare.CONFIGS)} (7.2) or "
        f"{','.join(qemu_compare.CONFIGS_11)} (11.1) (default: all of the release's)",
    )
    parser.add_argument(
        "--links",
        type=_names(qemu_compare.LINKS),
        default=list(qemu_compare.LINKS),
        help=f"qemu: comma-separated, of {','.join(qemu_compare.LINKS)} (default: all)",
    )
    args = parser.parse_args(argv)
    if args.qemu != "7.2" and args.what != "qemu":
        parser.error(f"--qemu {args.qemu}: only `bench qemu` compares with another release")
    table = qemu_compare.CONFIGS_BY_RELEASE[args.qemu]
    try:
        configs = _names(table)(args.configs) if args.configs else list(table)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"argument --configs: {exc}")
    report = Report()
    if args.workdir:  # the image is built there on the first run
        args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.what in ("compress", "all"):
            compress_stages(report, 512 * MiB, args.reps, args.seed)
            classic_runs(report)
            monitor_latency(report)
            against_qemu(report, args.workdir or Path(tempfile.mkdtemp(prefix="qemu-hmp-")))
        if args.what == "qemu":
            root = qemu_compare.RELEASES[args.qemu].root or None
            workdir = args.workdir or Path(tempfile.mkdtemp(prefix="qemu-hmp-", dir=root))
            against_qemu_links(report, workdir, args.runs, configs, args.links, args.qemu)
        if args.what in ("engine", "all"):
            engine_runs(report, args.reps)
        elif args.what == "fill":  # a part of engine
            fill_runs(report, args.reps)
        if args.what in ("xbzrle", "all"):
            xbzrle_runs(report, args.ram)
        if args.what in ("postcopy", "all"):
            postcopy_runs(report, args.ram, qemu_compare.LINKS[args.link])
    finally:  # what was measured is kept even when a later run fails
        sys.stdout.write(report.targets())
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report.to_json(), f, indent=2)
    return 0 if all(ok for *_, ok in report.checks) else 1
