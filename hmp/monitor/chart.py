"""Charts of migration time series (engine.stats.Sample lists): PNG and terminal text.

Both take several named series (e.g. ``{"plain": [...], "compress": [...]}``) so that runs are
compared on one chart: remaining RAM and throughput over time since `migrate`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from engine.stats import Sample

MiB = 1024 * 1024
SPARKS = "▁▂▃▄▅▆▇█"

Series = Mapping[str, Sequence[Sample]]

# (title, unit, value of a sample): the two panels of both chart kinds.
PANELS: tuple[tuple[str, str, Callable[[Sample], float]], ...] = (
    ("remaining RAM", "MiB", lambda s: s.remaining / MiB),
    ("throughput", "mbps", lambda s: s.mbps),
)


def write_png(path: str | Path, series: Series, title: str = "migration") -> None:
    """Two stacked panels sharing the time axis, one line per series."""
    # matplotlib is imported here: a REPL that never draws a chart should not pay for it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas: no display needed
    axes = fig.subplots(len(PANELS), 1, sharex=True)
    for ax, (panel, unit, value) in zip(axes, PANELS, strict=True):
        for name, samples in series.items():
            ax.plot([s.t_ms / 1000 for s in samples], [value(s) for s in samples], label=name)
        ax.set_ylabel(f"{panel} ({unit})")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    axes[0].set_title(title)
    axes[-1].set_xlabel("time since migrate (s)")
    fig.savefig(path, format="png")


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
    for panel, unit, value in PANELS:
        values = {name: [value(s) for s in samples] for name, samples in named.items()}
        top = max(max(v) for v in values.values())
        lines.append(f"{panel} ({unit}, peak {top:.1f}):")
        for name, samples in named.items():
            spark = sparkline(resample(values[name], width), top)
            lines.append(f"  {name:<{label}} {spark} {samples[-1].t_ms / 1000:.1f} s")
    return "\n".join(lines) + "\n"
