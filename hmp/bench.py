"""`qemu-hmp bench`: measured speed and memory figures, as ratios taken side by side in one run.

Machines are shared and noisy, so every target is a ratio of two figures measured in the
same run (engine vs raw library, 2 threads vs 1, compress on vs off), each the best of a few
repetitions. Tables go to stdout (tabulate), everything to JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from tabulate import tabulate
from zlib_ng import zlib_ng

from engine.compression import CHUNK, CODECS, CompressPool, DecompressPool
from engine.guest import PAGE_SIZE, GuestRam
from engine.workload import Workload

MiB = 1 << 20


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def render(self) -> str:
        return f"## {self.title}\n\n" + tabulate(self.rows, self.headers, floatfmt=".2f") + "\n"


@dataclass
class Report:
    tables: list[Table] = field(default_factory=list)
    checks: list[tuple[str, float, str, bool]] = field(default_factory=list)  # name, value, target

    def check(self, name: str, value: float, target: str, ok: bool) -> None:
        self.checks.append((name, value, target, ok))

    def render(self) -> str:
        parts = [t.render() for t in self.tables]
        rows = [[n, v, t, "yes" if ok else "NO"] for n, v, t, ok in self.checks]
        parts.append(Table("Targets", ["figure", "measured", "target", "met"], rows).render())
        return "\n".join(parts)

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
    report.tables.append(table)


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
            workers.decompress(pages[i * CHUNK : (i + 1) * CHUNK], [memoryview(b) for b in c.data])
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


# -- the command -------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qemu-hmp bench", description=__doc__)
    parser.add_argument("what", choices=("compress", "engine", "all"))
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per figure (best kept)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    report = Report()
    if args.what in ("compress", "all"):
        compress_stages(report, 512 * MiB, args.reps, args.seed)
    sys.stdout.write(report.render())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_json(), f, indent=2)
    return 0
