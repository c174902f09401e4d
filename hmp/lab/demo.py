"""`qemu-hmp demo`: the classic "compress off vs on" experiment, presented as the articles did.

This module is the presentation: the CPU this machine has free, a live progress line per
migration (plain, compressed, and compressed under the adaptive policy), a line per case on
how our ratio compares with the articles' and why, a terminal chart and a PNG chart per case,
then the articles' table with our figures next to the published ones and the ratios.
Compression pays when there is CPU to spare and the network is the limit: the demo shows
that rule rather than falling victim to it. Running the migrations
is a Runner's job: ``run_classic`` (two real qemu-hmp processes per run), or any callable
of the same shape (tests pass a recorded one).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, TextIO

from tabulate import tabulate

from engine.stats import Sample
from hmp.lab import cases, experiment
from hmp.lab.cases import CASES, DEFAULT_CASES, Case, Figures, describe
from hmp.monitor import terminal_chart, write_png
from hmp.shell import Progress, progress_text


@dataclass(frozen=True)
class Measured:
    """One migration the runner ran; ``setup`` says what it really was (sizes, link, threads)."""

    figures: Figures
    series: Sequence[Sample]
    setup: str
    link_use: float = 1.0  # the run's mean rate over the cap it had (link or max-bandwidth)
    cores_used: float = 0.0  # CPU seconds both endpoints used per second of the migration


ProgressFn = Callable[[Progress], None]


class Runner(Protocol):
    def __call__(self, case: Case, mode: str, progress: ProgressFn) -> Measured: ...


# plain and compress are the articles' runs; adaptive is the same compression steered by
# x-compress-auto, which measures the link and the compressors and so never loses to plain.
MODES = ("plain", "compress", "adaptive")
PUBLISHED = {"plain": "plain", "compress": "compressed"}  # mode → Case field
CPU_BOUND = 0.75  # a run that filled less of its cap than this was paced by its CPU
CLOSE = 0.1  # a ratio within this share of the published one "matches"
COLUMNS = (
    ("total time ms", "total_time_ms"),
    ("downtime ms", "downtime_ms"),
    ("transferred kB", "transferred_kb"),
)


def _spin(seconds: float) -> float:
    wall, cpu = time.monotonic(), time.process_time()
    while time.monotonic() - wall < seconds:
        pass
    return time.process_time() - cpu


def cpu_available(seconds: float = 0.3) -> float:
    """Cores this machine gives us now: one spinning process per core, CPU time over wall."""
    cores = os.cpu_count() or 1
    with multiprocessing.get_context("fork").Pool(cores) as pool:
        return sum(pool.map(_spin, [seconds] * cores)) / seconds


def setup_for(case: Case, mode: str) -> experiment.Setup:
    if mode == "plain":
        return case.setup
    packed = cases.compressed(case.setup)
    return replace(packed, compress_auto=True) if mode == "adaptive" else packed


def figures(result: experiment.Result) -> Figures:
    kbytes = result.number("ram.transferred") // 1024  # as `info migrate` shows it
    return Figures(result.number("total-time"), result.number("downtime"), kbytes)


def run_classic(case: Case, mode: str, progress: ProgressFn) -> Measured:
    """The demo's runner: one real two-process migration of ``case`` in ``mode``."""
    setup = setup_for(case, mode)
    result = experiment.run(setup, lambda info: progress(Progress.from_query_migrate(info)))
    if result.status != "completed":
        raise RuntimeError(f"{describe(setup)}: migration {result.status}")
    seconds = result.number("total-time") / 1000
    rate = result.number("ram.transferred") / seconds if seconds else 0.0
    cap = cases.cap_bps(setup)
    cores = sum(result.cpu_s.values()) / seconds if seconds else 0.0
    use = rate / cap if cap else 1.0
    return Measured(figures(result), result.series, describe(setup), use, cores)


def why(case: Case, runs: Mapping[str, Measured], cores: float) -> str:
    """One line on how our compress/plain ratio compares with the articles', and why."""
    ours = runs["compress"].figures.total_time_ms / runs["plain"].figures.total_time_ms
    theirs = case.compressed.total_time_ms / case.plain.total_time_ms
    adaptive = runs["adaptive"].figures.total_time_ms / runs["plain"].figures.total_time_ms
    head = f"  compress/plain total time {ours:.2f}, published {theirs:.2f}: "
    run = runs["compress"]
    if run.link_use < CPU_BOUND and run.cores_used >= CPU_BOUND * cores:
        return head + (
            f"the compress run filled {run.link_use:.0%} of its link while the endpoints used"
            f" {run.cores_used:.1f} of the {cores:.1f} free cores: CPU-bound, compression pays"
            f" only with CPU to spare; the adaptive policy measured it ({adaptive:.2f})\n"
        )
    if abs(ours - theirs) <= CLOSE * theirs:
        return head + "as published\n"
    return head + case.differs + "\n"


def cpu_report(cores: float, total: int) -> str:
    text = f"CPU: {cores:.1f} of {total} cores free for the two endpoints\n"
    if cores < 1.5:
        text += (
            "  this machine is busy: compressing at level 1 needs about a core per side, so"
            " the fixed-compress rows may be CPU-bound and lose to plain; the adaptive row"
            " measures that and should not\n"
        )
    return text


class LiveLine:
    """One line rewritten in place on a terminal; elsewhere only its final text is printed."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.live = out.isatty()

    def update(self, text: str) -> None:
        if self.live:
            self.out.write(f"\r{text}\x1b[K")
            self.out.flush()

    def progress(self, label: str) -> ProgressFn:
        return lambda p: self.update(label + progress_text(p))

    def done(self, text: str) -> None:
        self.out.write(f"\r{text}\x1b[K\n" if self.live else f"{text}\n")
        self.out.flush()


def _ratio(compressed: float, plain: float) -> str:
    return f"{compressed / plain:.2f}" if plain and compressed else "-"


def table(results: Iterable[tuple[Case, Mapping[str, Measured]]]) -> str:
    """The articles' layout, ours then theirs: per case each mode, then mode/plain ratios."""
    headers = ["case", "run"]
    for name, _field in COLUMNS:
        headers += [name, "published"]
    rows: list[list[str]] = []
    for case, runs in results:
        for mode in MODES:
            theirs = getattr(case, PUBLISHED[mode]) if mode in PUBLISHED else None
            row = [case.title if mode == MODES[0] else "", mode]
            for _name, field in COLUMNS:
                mine = getattr(runs[mode].figures, field)
                row += [f"{mine:.0f}", f"{getattr(theirs, field):.0f}" if theirs else "-"]
            rows.append(row)
        for mode in MODES[1:]:
            theirs = getattr(case, PUBLISHED[mode]) if mode in PUBLISHED else None
            ratio = ["", f"{mode}/plain"]
            for _name, field in COLUMNS:
                plain = getattr(runs["plain"].figures, field)
                ratio.append(_ratio(getattr(runs[mode].figures, field), plain))
                ratio.append(
                    _ratio(getattr(theirs, field), getattr(case.plain, field)) if theirs else "-"
                )
            rows.append(ratio)
    align = ("left", "left") + ("right",) * (len(headers) - 2)
    return tabulate(rows, headers, disable_numparse=True, colalign=align) + "\n"


def run_demo(
    runner: Runner,
    cases: Sequence[Case],
    out_dir: Path,
    out: TextIO,
    cores: tuple[float, int] | None = None,
) -> int:
    """``cores``: (free, total) as measured; measured here when not given."""
    out_dir.mkdir(parents=True, exist_ok=True)
    free, total = cores or (cpu_available(), os.cpu_count() or 1)
    out.write(cpu_report(free, total))
    line = LiveLine(out)
    results = []
    for case in cases:
        out.write(f"\n{case.title}\n")
        runs = {}
        for mode in MODES:
            label = f"  {mode:<9}"
            measured = runner(case, mode, line.progress(label))
            figures = measured.figures
            line.done(
                f"{label}{figures.total_time_ms:.0f} ms, downtime {figures.downtime_ms:.0f} ms,"
                f" {figures.transferred_kb:.0f} kB  ({measured.setup})"
            )
            runs[mode] = measured
        out.write(why(case, runs, free))
        series = {mode: runs[mode].series for mode in MODES}
        out.write(terminal_chart(series))
        png = out_dir / f"qemu-hmp-demo-{case.key}.png"
        write_png(png, series, f"{case.title} — ours: {runs['plain'].setup}")
        out.write(f"chart: {png}\n")
        results.append((case, runs))
    out.write("\n" + table(results))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="qemu-hmp demo",
        description="The classic compress off/on migration experiment on two real endpoints.",
    )
    lesson = cases.POSTCOPY_CASE
    every = (*DEFAULT_CASES, lesson.key)
    parser.add_argument(
        "--case",
        action="append",
        choices=[*CASES, lesson.key],
        help=f"a case to run (repeatable; default: {', '.join(every)})",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("qemu-hmp-demo"), help="directory for the PNG charts"
    )
    args = parser.parse_args(argv)
    keys = args.case or every
    classic = [CASES[key] for key in keys if key in CASES]
    status = run_demo(run_classic, classic, args.out, sys.stdout) if classic else 0
    if lesson.key in keys:
        # After the compression table: the other answer to a guest that does not converge.
        from hmp.lab import postcopy_demo  # here: it builds on this module

        status |= postcopy_demo.present(
            postcopy_demo.run_postcopy_case, lesson, args.out, sys.stdout
        )
    return status
