"""`qemu-hmp demo`: the classic "compress off vs on" experiment, presented as the articles did.

This module is the presentation: a live progress line per migration, a terminal chart and a
PNG chart per case (plain vs compressed on one chart), then the articles' table with our
figures next to the published ones and the compressed/plain ratios. Running the migrations
is a Runner's job: ``run_classic`` (two real qemu-hmp processes per run), or any callable
of the same shape (tests pass a recorded one).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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


ProgressFn = Callable[[Progress], None]


class Runner(Protocol):
    def __call__(self, case: Case, compress: bool, progress: ProgressFn) -> Measured: ...


MODES = (("plain", False), ("compress", True))
COLUMNS = (
    ("total time ms", "total_time_ms"),
    ("downtime ms", "downtime_ms"),
    ("transferred kB", "transferred_kb"),
)


def figures(result: experiment.Result) -> Figures:
    kbytes = result.number("ram.transferred") // 1024  # as `info migrate` shows it
    return Figures(result.number("total-time"), result.number("downtime"), kbytes)


def run_classic(case: Case, compress: bool, progress: ProgressFn) -> Measured:
    """The demo's runner: one real two-process migration of ``case``, plain or compressed."""
    setup = cases.compressed(case.setup) if compress else case.setup
    result = experiment.run(setup, lambda info: progress(Progress.from_query_migrate(info)))
    if result.status != "completed":
        raise RuntimeError(f"{describe(setup)}: migration {result.status}")
    return Measured(figures(result), result.series, describe(setup))


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
    return f"{compressed / plain:.2f}" if plain else "-"


def table(results: Iterable[tuple[Case, Measured, Measured]]) -> str:
    """The articles' layout: per case plain, compress and compress/plain; ours, then theirs."""
    headers = ["case", "run"]
    for name, _field in COLUMNS:
        headers += [name, "published"]
    rows: list[list[str]] = []
    for case, plain, compressed in results:
        ours = {"plain": plain.figures, "compress": compressed.figures}
        theirs = {"plain": case.plain, "compress": case.compressed}
        for run, _compress in MODES:
            row = [case.title if run == "plain" else "", run]
            for _name, field in COLUMNS:
                row += [f"{getattr(ours[run], field):.0f}", f"{getattr(theirs[run], field):.0f}"]
            rows.append(row)
        ratio = ["", "compress/plain"]
        for _name, field in COLUMNS:
            ratio += [
                _ratio(getattr(compressed.figures, field), getattr(plain.figures, field)),
                _ratio(getattr(case.compressed, field), getattr(case.plain, field)),
            ]
        rows.append(ratio)
    align = ("left", "left") + ("right",) * (len(headers) - 2)
    return tabulate(rows, headers, disable_numparse=True, colalign=align) + "\n"


def run_demo(runner: Runner, cases: Sequence[Case], out_dir: Path, out: TextIO) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    line = LiveLine(out)
    results = []
    for case in cases:
        out.write(f"\n{case.title}\n")
        runs = {}
        for mode, compress in MODES:
            label = f"  {mode:<9}"
            measured = runner(case, compress, line.progress(label))
            figures = measured.figures
            line.done(
                f"{label}{figures.total_time_ms:.0f} ms, downtime {figures.downtime_ms:.0f} ms,"
                f" {figures.transferred_kb:.0f} kB  ({measured.setup})"
            )
            runs[mode] = measured
        series = {mode: runs[mode].series for mode, _ in MODES}
        out.write(terminal_chart(series))
        png = out_dir / f"qemu-hmp-demo-{case.key}.png"
        write_png(png, series, f"{case.title} — ours: {runs['plain'].setup}")
        out.write(f"chart: {png}\n")
        results.append((case, runs["plain"], runs["compress"]))
    out.write("\n" + table(results))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="qemu-hmp demo",
        description="The classic compress off/on migration experiment on two real endpoints.",
    )
    parser.add_argument(
        "--case",
        action="append",
        choices=list(CASES),
        help=f"a case to run (repeatable; default: {', '.join(DEFAULT_CASES)})",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("qemu-hmp-demo"), help="directory for the PNG charts"
    )
    args = parser.parse_args(argv)
    cases = [CASES[key] for key in args.case or DEFAULT_CASES]
    return run_demo(run_classic, cases, args.out, sys.stdout)
