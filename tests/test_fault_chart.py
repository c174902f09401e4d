"""Postcopy's page-request latency over time: the destination's fault record (QMP
x-query-postcopy-faults), its terminal chart (`x_migrate_chart` there) and a PNG panel."""

from __future__ import annotations

import io
import threading

import numpy as np
from test_chart import PLAIN, run
from test_postcopy import held_postcopy

from engine.machine import Machine
from engine.state import MigrationStatus
from hmp.monitor.chart import Faults, fault_chart, figure
from hmp.monitor.session import Monitor

TIMEOUT = 30.0
# Ten faults over 2 s: short waits, then two long ones in the last quarter.
RECORDED = Faults(
    at_ms=[0, 200, 400, 600, 800, 1000, 1200, 1400, 1600, 2000],
    waits_ms=[0.5, 0.4, 0.6, 0.5, 0.5, 0.7, 0.4, 0.5, 8.0, 4.0],
)


def test_fault_chart_shows_the_longest_wait_and_the_faults_per_slice() -> None:
    lines = fault_chart(RECORDED, width=4).splitlines()
    assert lines == [
        "postcopy page-request wait (ms, peak 8.0, p50 0.50, p99 8.00, 10 faults):",
        # slices of 0.5 s: [0, 200, 400], [600, 800], [1000, 1200, 1400], [1600, 2000]
        "  longest ▂▁▂█ 2.0 s",  # 0.6 and 0.7 of 8 ms round up to the second step
        "  faults  █▆█▆ since the switch",
    ]
    assert fault_chart(Faults([], [])) == "no postcopy page faults\n"


def test_png_gets_a_panel_of_fault_waits_over_time() -> None:
    fig = figure({"postcopy": PLAIN}, "busy guest", RECORDED)
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "remaining RAM (MiB)", "throughput (mbps)", "page-request wait (ms)"
    ]  # fmt: skip
    points = fig.axes[-1].collections[0].get_offsets()
    expected = np.column_stack([np.array(RECORDED.at_ms) / 1000, RECORDED.waits_ms])
    assert np.allclose(points, expected)
    assert [ax.get_ylabel() for ax in figure({"postcopy": PLAIN}).axes][-1] == "throughput (mbps)"


def test_the_destination_records_when_each_fault_began_and_charts_it(
    machines: list[Machine],
) -> None:
    src, dst, dst_watch, mig, present = held_postcopy(machines)
    missing = np.flatnonzero(~present.present_bits())[:3]
    stop = threading.Event()
    timer = threading.Timer(TIMEOUT, stop.set)  # bounds a fault that would never resolve
    timer.start()
    try:
        for page in missing:  # three faults, one after the other
            assert dst.ram.fault(np.array([page]), stop)
    finally:
        timer.cancel()
    answer = dst.query_postcopy_faults()
    assert answer["faults"] == 3 and len(answer["waits-ms"]) == 3
    at = answer["at-ms"]
    assert len(at) == 3 and 0 <= at[0] <= at[1] <= at[2]
    # Each began after the one before had been served.
    assert at[1] >= at[0] + answer["waits-ms"][0] and at[2] >= at[1] + answer["waits-ms"][1]
    chart = run(Monitor(dst, io.StringIO(), io.StringIO()), "x_migrate_chart")
    assert chart.startswith("postcopy page-request wait (ms, peak ")
    assert ", 3 faults):\n" in chart and "no migration time series" not in chart
    mig.background.set()
    assert src.wait_migration(TIMEOUT).status is MigrationStatus.COMPLETED
    dst_watch.wait_status("completed")
