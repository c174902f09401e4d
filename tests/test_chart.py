"""Charts and exports of migration time series: PNG, terminal sparklines, CSV/JSON, commands."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.machine import Machine, MachineOptions
from engine.stats import Sample
from hmp.monitor.chart import figure, resample, sparkline, terminal_chart, write_png
from hmp.monitor.series import COLUMNS, to_csv, to_json
from hmp.monitor.session import Monitor

MiB = 1024 * 1024


def recorded(total_mib: int, mbps: float, seconds: float) -> list[Sample]:
    """A hand-built series: constant throughput drains RAM, one sample per 100 ms."""
    rate = mbps * 1e6 / 8 / 1000  # bytes per ms
    out = []
    for t in range(100, int(seconds * 1000) + 1, 100):
        sent = min(total_mib * MiB, int(rate * t))
        out.append(Sample(t, sent, total_mib * MiB - sent, mbps, 0, 0))
    return out


PLAIN = recorded(256, 940.0, 2.4)
COMPRESSED = recorded(256, 2100.0, 1.1)


def test_png_renders_both_series(tmp_path: Path) -> None:
    path = tmp_path / "chart.png"
    write_png(path, {"plain": PLAIN, "compress": COMPRESSED}, "idle 256 MiB guest")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        assert img.size == (800, 600)
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
    colours = {tuple(int(c) for c in p) for p in pixels}
    # matplotlib's first two line colours (C0 blue, C1 orange): both series are drawn.
    assert (0x1F, 0x77, 0xB4) in colours and (0xFF, 0x7F, 0x0E) in colours
    assert len(colours) > 50  # text, axes and antialiased lines: not a blank canvas


def test_a_long_title_stays_inside_the_png() -> None:
    title = "guest writing random data, 1 GbE — ours: 2G random-writer guest writing 25000 pages/s"
    fig = figure({"plain": PLAIN}, title)
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    fig.draw(renderer)
    box = fig.axes[0].title.get_window_extent(renderer)
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
    assert "\n" in fig.axes[0].get_title()


def test_dirty_rate_and_throttle_are_charted_when_they_move() -> None:
    throttled = [replace(s, dirty_pages_rate=20000 - 100 * i, cpu_throttle=min(99, 20 * i))
                 for i, s in enumerate(PLAIN)]  # fmt: skip
    assert [ax.get_ylabel() for ax in figure({"plain": PLAIN}).axes] == [
        "remaining RAM (MiB)", "throughput (mbps)"]  # fmt: skip
    assert [ax.get_ylabel() for ax in figure({"plain": PLAIN, "ac": throttled}).axes] == [
        "remaining RAM (MiB)", "throughput (mbps)", "dirty rate (pages/s)", "cpu throttle (%)"
    ]  # fmt: skip
    text = terminal_chart({"auto-converge": throttled}, width=12)
    assert "dirty rate (pages/s, peak 20000.0):" in text
    assert "cpu throttle (%, peak 99.0):" in text


def test_resample_means_equal_slices() -> None:
    assert resample([1, 2, 3], 5) == [1, 2, 3]
    assert resample([0, 2, 4, 6], 2) == [1, 5]


def test_sparkline_scale() -> None:
    assert sparkline([0, 4, 8], 8) == "▁▅█"
    assert sparkline([0, 0], 0) == "▁▁"


def test_terminal_chart_shares_a_scale_between_series() -> None:
    text = terminal_chart({"plain": PLAIN, "compress": COMPRESSED}, width=12)
    lines = text.splitlines()
    assert lines[0] == "remaining RAM (MiB, peak 244.8):"
    assert lines[1].startswith("  plain    █") and lines[1].endswith(" 2.4 s")
    assert lines[2].startswith("  compress ") and lines[2].endswith(" 1.1 s")
    assert lines[3] == "throughput (mbps, peak 2100.0):"
    assert lines[4] == "  plain    " + "▄" * 12 + " 2.4 s"  # 940 of 2100: half height
    assert lines[5] == "  compress " + "█" * 11 + " 1.1 s"  # 11 samples, fewer than 12
    assert terminal_chart({"x": []}) == "no migration time series\n"


def test_csv_and_json_carry_every_sample_field() -> None:
    rows = list(csv.reader(io.StringIO(to_csv(PLAIN[:2]))))
    assert (
        tuple(rows[0])
        == COLUMNS
        == (
            "t_ms",
            "transferred",
            "remaining",
            "mbps",
            "dirty_pages_rate",
            "cpu_throttle",
        )
    )
    assert rows[1] == ["100", "11750000", str(256 * MiB - 11750000), "940.0", "0", "0"]
    assert json.loads(to_json(PLAIN[:1])) == [
        {
            "t_ms": 100,
            "transferred": 11750000,
            "remaining": 256 * MiB - 11750000,
            "mbps": 940.0,
            "dirty_pages_rate": 0,
            "cpu_throttle": 0,
        }
    ]


@pytest.fixture
def migrated() -> Iterator[Monitor]:
    """A source whose last migration really ran (16 MiB over 127.0.0.1)."""
    dst = Machine(MachineOptions(ram_size=16 * MiB, incoming="tcp:127.0.0.1:0"))
    src = Machine(MachineOptions(ram_size=16 * MiB, seed=3))
    try:
        address = dst.query_migrate().socket_address
        assert address is not None
        src.set_parameters({"max-bandwidth": 8 * MiB})  # long enough for a few samples
        src.migrate(address[0])
        assert src.wait_migration(60).status == "completed"
        yield Monitor(src, io.StringIO(), io.StringIO())
    finally:
        src.close()
        dst.close()


def run(mon: Monitor, line: str) -> str:
    out = mon.out
    assert isinstance(out, io.StringIO)
    out.seek(0)
    out.truncate()
    mon.execute(line)
    return out.getvalue()


def test_export_commands_write_the_last_series(migrated: Monitor, tmp_path: Path) -> None:
    samples = migrated.machine.migration_timeseries()
    assert len(samples) >= 2
    assert run(migrated, f"x_migrate_export {tmp_path}/s.csv") == ""
    assert (tmp_path / "s.csv").read_text() == to_csv(samples)
    assert run(migrated, f"x_migrate_export {tmp_path}/s.json") == ""
    assert json.loads((tmp_path / "s.json").read_text())[-1]["remaining"] == samples[-1].remaining
    assert run(migrated, f"x_migrate_export {tmp_path}/no/such/dir.csv") == (
        f"Error: Could not open '{tmp_path}/no/such/dir.csv': No such file or directory\n"
    )
    chart = run(migrated, "x_migrate_chart")
    assert chart.startswith("remaining RAM (MiB, peak ")
    assert "  migrate █" in chart


def test_chart_without_a_migration() -> None:
    m = Machine(MachineOptions(ram_size=8 * MiB))
    try:
        assert run(Monitor(m, io.StringIO(), io.StringIO()), "x_migrate_chart") == (
            "no migration time series\n"
        )
    finally:
        m.close()
