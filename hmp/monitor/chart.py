"""Charts of migration time series (engine.stats.Sample lists): PNG and terminal text.

Both take several named series (e.g. ``{"plain": [...], "compress": [...]}``) so that runs are
compared on one chart: remaining RAM and throughput over time since `migrate`, and the guest's
dirty rate and the auto-converge throttle when any series has them (a remedy's effect shows
as the throttle steps up and the dirty rate comes down).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

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


def panels(series: Series) -> tuple[Panel, ...]:
    samples = [s for run in series.values() for s in run]
    return ALWAYS + tuple(p for p in WHEN_SEEN if any(p[2](s) for s in samples))


def figure(series: Series, title: str = "migration") -> Figure:
    """Stacked panels sharing the time axis, one line per series; a long title wraps."""
    # matplotlib is imported here: a REPL that never draws a chart should not pay for it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = panels(series)
    fig = Figure(figsize=(8, 1.5 + 2.25 * len(shown)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas: no display needed
    axes = fig.subplots(len(shown), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (panel, unit, value) in zip(axes, shown, strict=True):
        for name, samples in series.items():
            ax.plot([s.t_ms / 1000 for s in samples], [value(s) for s in samples], label=name)
        ax.set_ylabel(f"{panel} ({unit})")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    axes[0].set_title(textwrap.fill(title, TITLE_WIDTH))
    axes[-1].set_xlabel("time since migrate (s)")
    return fig


def write_png(path: str | Path, series: Series, title: str = "migration") -> None:
    figure(series, title).savefig(path, format="png")


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
