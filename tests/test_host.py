"""hmp/lab/host.py: the host's CPU steal between two readings of /proc/stat, around a run,
and the stalls a busy thread sees."""

from __future__ import annotations

import pytest

from hmp.lab import host

# /proc/stat's head on a 2-CPU guest: user nice system idle iowait irq softirq steal guest ...
STAT = """cpu  6334395 459277 1133449 4115764 18765 0 24648 115242 0 0
cpu0 3167197 229638 566724 2057882 9382 0 12324 57621 0 0
intr 1 2 3
"""


def test_the_aggregate_line_is_read() -> None:
    times = host.parse_cpu_times(STAT)
    assert times == host.CpuTimes(6334395 + 459277 + 1133449 + 4115764 + 18765 + 24648 + 115242,
                                  115242)  # fmt: skip


@pytest.mark.parametrize("text", ["", "cpu0 1 2 3 4 5 6 7 8\n", "cpu 1 2 3 4 5 6 7\n"])
def test_a_stat_without_it_reads_as_none(text: str) -> None:
    assert host.parse_cpu_times(text) is None


def test_steal_is_the_share_of_the_time_between_readings() -> None:
    before, after = host.CpuTimes(1000, 10), host.CpuTimes(1400, 110)
    assert host.steal_percent(before, after) == 25.0
    assert host.steal_percent(None, after) is None
    assert host.steal_percent(after, after) is None  # no time passed: no share


def test_a_meter_gives_the_steal_over_its_block(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([host.CpuTimes(1000, 10), host.CpuTimes(1400, 110)])
    monkeypatch.setattr(host, "cpu_times", lambda: next(readings))
    with host.StealMeter() as meter:
        assert meter.percent is None  # not before the block ends
    assert meter.percent == 25.0


def test_this_machine_reads() -> None:
    now = host.cpu_times()
    assert now is not None and 0 <= now.steal <= now.total


def test_stalls_are_the_gaps_between_clock_reads_over_the_bound() -> None:
    # Reads 0.1 ms apart but for gaps of 3, 1.5 and (the last) 6.2 ms; 0.9 ms is no stall.
    times = [0.0, 0.0001, 0.0031, 0.0032, 0.0041, 0.0056, 0.0058, 0.0120]
    reads = iter(times)
    found = host.stalls(0.01, clock=lambda: next(reads))
    assert (found.count, found.seconds) == (3, 0.0120)
    assert found.longest_ms == pytest.approx(6.2)
    assert found.lost_ms == pytest.approx(3.0 + 1.5 + 6.2)


def test_a_real_probe_watches_as_long_as_asked() -> None:
    found = host.stalls(0.02)
    assert found.seconds >= 0.02 and found.count >= 0 and found.per_s == found.count / found.seconds
