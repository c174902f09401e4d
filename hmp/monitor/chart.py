"""Charts of migration time series (engine.stats.Sample lists): PNG and terminal text.

Both take several named series (e.g. ``{"plain": [...], "compress": [...]}``) so that runs are
compared on one chart: remaining RAM and throughput over time since `migrate`, and the guest's
dirty rate and the auto-converge throttle when any series has them (a remedy's effect shows
as the throttle steps up and the dirty rate comes down). A postcopy destination's page faults
(`Faults`: when each began since the switch, and how long the vCPU waited) add a panel of
request latency over time.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.stats import Sample

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MiB = 1024 * 1024
SPARKS = "▁▂▃▄▅▆▇█"

Series = Mapping[str, Sequence[Sample]]

Panel = tuple[str, str, Callable[[Sample], float]]  # title, unit, value of a sample
ALWAYS: tuple[Panel, ...] = (
    ("remaining RAM", "MiB", lambda s: s.remaining / MiB),
    ("throughput", "mbps", lambda s: s.mbps),
)
WHEN_SEEN: tuple[Panel, ...] = (  # drawn only when some sample is not zero
    ("dirty rate", "pages/s", lambda s: s.dirty_pages_rate),
    ("cpu throttle", "%", lambda s: s.cpu_throttle),
)
TITLE_WIDTH = 70  # characters of a PNG title line that fit an 800-pixel figure


@dataclass(frozen=True)
class Faults:
    """A postcopy destination's page faults (x-query-postcopy-faults), in ms, in order."""

    at_ms: Sequence[float]  # when each began, since the switch
    waits_ms: Sequence[float]  # how long the vCPU waited for its page

    @classmethod
    def from_query(cls, answer: Mapping[str, Any]) -> Faults:
        return cls(answer.get("at-ms", []), answer.get("waits-ms", []))


def panels(series: Series) -> tuple[Panel, ...]:
    samples = [s for run in series.values() for s in run]
    return ALWAYS + tuple(p for p in WHEN_SEEN if any(p[2](s) for s in samples))


def figure(series: Series, title: str = "migration", faults: Faults | None = None) -> Figure:
    """Stacked panels sharing the time axis, one line per series; a long title wraps. With
    ``faults``, a last panel of each fault's wait over time since the switch."""
    # matplotlib is imported here: a REPL that never draws a chart should not pay for it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = panels(series)
    extra = 1 if faults is not None and faults.waits_ms else 0
    rows = len(shown) + extra
    fig = Figure(figsize=(8, 1.5 + 2.25 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas: no display needed
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    for ax, (panel, unit, value) in zip(axes, shown, strict=False):
        if ax is not axes[0]:
            ax.sharex(axes[0])
        for name, samples in series.items():
            ax.plot([s.t_ms / 1000 for s in samples], [value(s) for s in samples], label=name)
        ax.set_ylabel(f"{panel} ({unit})")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    axes[0].set_title(textwrap.fill(title, TITLE_WIDTH))
    axes[len(shown) - 1].set_xlabel("time since migrate (s)")
    if extra and faults is not None:
        ax = axes[-1]
        at = [t / 1000 for t in faults.at_ms]
        ax.scatter(at, faults.waits_ms, s=4, color="C3", label="a fault's wait")
        ax.set_ylabel("page-request wait (ms)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        ax.set_xlabel("time since the postcopy switch (s), on the destination")
    return fig


def write_png(
    path: str | Path, series: Series, title: str = "migration", faults: Faults | None = None
) -> None:
    figure(series, title, faults).savefig(path, format="png")


def resample(values: Sequence[float], width: int) -> list[float]:
    """``width`` points: the mean of each of ``width`` equal slices (or the values as they are)."""
    if len(values) <= width:
        return list(values)
    return [
        sum(chunk) / len(chunk)
        for i in range(width)
        if (chunk := values[i * len(values) // width : (i + 1) * len(values) // width])
    ]


def sparkline(values: Sequence[float], top: float) -> str:
    if top <= 0:
        return SPARKS[0] * len(values)
    last = len(SPARKS) - 1
    return "".join(SPARKS[min(last, round(v / top * last))] for v in values)


def terminal_chart(series: Series, width: int = 48) -> str:
    """Per panel, one sparkline per series on a shared scale, with its peak and duration."""
    named = {name: samples for name, samples in series.items() if samples}
    if not named:
        return "no migration time series\n"
    label = max(len(name) for name in named)
    lines = []
    for panel, unit, value in panels(named):
        values = {name: [value(s) for s in samples] for name, samples in named.items()}
        top = max(max(v) for v in values.values())
        lines.append(f"{panel} ({unit}, peak {top:.1f}):")
        for name, samples in named.items():
            spark = sparkline(resample(values[name], width), top)
            lines.append(f"  {name:<{label}} {spark} {samples[-1].t_ms / 1000:.1f} s")
    return "\n".join(lines) + "\n"


def fault_chart(faults: Faults, width: int = 48) -> str:
    """Postcopy's page-request latency over time since the switch: per slice of time, the
    longest wait and the number of faults, with the whole run's percentiles."""
    if not faults.waits_ms:
        return "no postcopy page faults\n"
    waits = sorted(faults.waits_ms)
    p50, p99 = (waits[min(len(waits) - 1, int(q * len(waits)))] for q in (0.5, 0.99))
    end = max(faults.at_ms) or 1.0  # the last fault falls in the last slice
    slices = min(width, len(waits))
    longest = [0.0] * slices
    count = [0.0] * slices
    for at, wait in zip(faults.at_ms, faults.waits_ms, strict=True):
        k = min(slices - 1, int(at / end * slices))
        longest[k] = max(longest[k], wait)
        count[k] += 1
    seconds = f"{end / 1000:.1f} s"
    return (
        f"postcopy page-request wait (ms, peak {waits[-1]:.1f}, p50 {p50:.2f}, p99 {p99:.2f},"
        f" {len(waits)} faults):\n"
        f"  longest {sparkline(longest, waits[-1])} {seconds}\n"
        f"  faults  {sparkline(count, max(count))} since the switch\n"
    )
