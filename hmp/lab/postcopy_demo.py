"""The demo's postcopy case: a busy guest that does not converge in precopy, then completes in
postcopy on the same link, with the request latency its destination's vCPU saw.

Precopy runs until its setup's timeout (the guest dirties faster than the link carries, so
what is left never fits the downtime limit) and is cancelled; postcopy-preempt then moves
the same guest: the guest runs on the destination from the switch, and the chart shows both
runs' remaining RAM and the faults' waits over time. Running the migrations is a Runner's
job: ``run_postcopy_case`` (two real qemu-hmp processes per run) or a recorded one (tests).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from engine.stats import Sample
from hmp.lab import experiment
from hmp.lab.cases import Figures, PostcopyCase, describe
from hmp.lab.demo import LiveLine, ProgressFn, figures
from hmp.monitor import Faults, fault_chart, terminal_chart, write_png
from hmp.shell import Progress

MiB = 1024 * 1024
MODES = ("precopy", "postcopy")


@dataclass(frozen=True)
class Outcome:
    """One run of the case: how it ended and what it measured."""

    status: str
    figures: Figures
    series: Sequence[Sample]
    setup: str
    left: Progress  # the source's last progress while it ran (what precopy could not send)
    blocktime_ms: int = 0  # the destination's postcopy vCPU blocktime
    faults: Faults = field(default_factory=lambda: Faults([], []))


class CaseRunner(Protocol):
    def __call__(self, case: PostcopyCase, mode: str, progress: ProgressFn) -> Outcome: ...


def run_postcopy_case(case: PostcopyCase, mode: str, progress: ProgressFn) -> Outcome:
    """The demo's runner: one real two-process migration of ``case`` in ``mode``."""
    setup = case.precopy if mode == "precopy" else case.postcopy
    left = Progress("setup")

    def seen(info: Mapping[str, Any]) -> None:
        nonlocal left
        step = Progress.from_query_migrate(info)
        if step.status in ("active", "postcopy-active"):
            left = step
        progress(step)

    result = experiment.run(setup, seen)
    return Outcome(
        result.status,
        figures(result),
        result.series,
        describe(setup),
        left,
        int(result.dst_info.get("postcopy-blocktime", 0)),
        Faults.from_query(result.faults),
    )


def _precopy_line(run: Outcome) -> str:
    if run.status == "completed":
        return f"completed in {run.figures.total_time_ms:.0f} ms"
    left = run.left
    return (
        f"{run.status} after {left.elapsed_ms / 1000:.1f} s: it does not converge,"
        f" {left.remaining / MiB:.0f} MiB still to send"
        f" (expected downtime {left.expected_downtime_ms} ms)"
    )


def _postcopy_line(run: Outcome) -> str:
    f = run.figures
    text = f"{run.status}: {f.total_time_ms:.0f} ms, downtime {f.downtime_ms:.0f} ms"
    text += f", {f.transferred_kb:.0f} kB"
    waits = sorted(run.faults.waits_ms)
    if waits:
        p50, p99 = (waits[min(len(waits) - 1, int(q * len(waits)))] for q in (0.5, 0.99))
        text += (
            f"; the destination's vCPU waited {run.blocktime_ms} ms in {len(waits)} faults"
            f" (p50 {p50:.2f} ms, p99 {p99:.2f} ms)"
        )
    return text


def present(runner: CaseRunner, case: PostcopyCase, out_dir: Path, out: TextIO) -> int:
    """Both runs with a live line each, their chart and the fault chart, and a PNG; 0 when
    postcopy completed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    line = LiveLine(out)
    out.write(f"\n{case.title}\n")
    runs: dict[str, Outcome] = {}
    for mode in MODES:
        label = f"  {mode:<9}"
        runs[mode] = run = runner(case, mode, line.progress(label))
        text = _precopy_line(run) if mode == "precopy" else _postcopy_line(run)
        line.done(f"{label}{text}  ({run.setup})")
    series = {mode: runs[mode].series for mode in MODES}
    faults = runs["postcopy"].faults
    out.write(terminal_chart(series))
    out.write(fault_chart(faults))
    png = out_dir / f"qemu-hmp-demo-{case.key}.png"
    write_png(png, series, f"{case.title} — ours: {runs['postcopy'].setup}", faults)
    out.write(f"chart: {png}\n")
    return 0 if runs["postcopy"].status == "completed" else 1
