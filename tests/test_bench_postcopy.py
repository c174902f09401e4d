"""`bench postcopy --link`: where the runs go (a shaped namespace link, or the emulated link when
it cannot be made), the link's round trip, and the preempt target derived from it."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

from hmp.lab import bench, experiment, host, qemu_compare
from hmp.lab.experiment import Result, Setup

WAITS = [0.2, 0.3, 0.4, 0.5]


def test_the_round_trip_probe_measures_loopback() -> None:
    assert 0 < qemu_compare.round_trip_s(()) < 1.0


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Setup, Sequence[str]]]:
    """experiment.run answers from a record; what each run was asked (setup, prefix) is kept."""
    asked: list[tuple[Setup, Sequence[str]]] = []

    def run(setup: Setup, progress: object = None, prefix: Sequence[str] = ()) -> Result:
        asked.append((setup, prefix))
        info = {"status": "completed", "total-time": 9000, "downtime": 4}
        faults = {"faults": len(WAITS), "waits-ms": WAITS} if setup.postcopy else {}
        return Result(setup, "completed", info, {"src": 1024, "dst": 1024}, [], {}, {}, faults)

    monkeypatch.setattr(experiment, "run", run)
    monkeypatch.setattr(qemu_compare, "round_trip_s", lambda prefix: 0.0001)
    monkeypatch.setattr(host, "stalls", lambda seconds: host.Stalls(seconds, 1.0, 10, 8.25, 30.0))
    return asked


def test_an_unavailable_link_falls_back_to_the_emulated_one_and_says_so(
    monkeypatch: pytest.MonkeyPatch, recorded: list[tuple[Setup, Sequence[str]]]
) -> None:
    @contextmanager
    def unavailable(link: qemu_compare.Link) -> Iterator[list[str]]:
        raise qemu_compare.LinkUnavailable("a network namespace needs root")
        yield []

    monkeypatch.setattr(qemu_compare, "shaped_link", unavailable)
    report = bench.Report(out=io.StringIO())
    bench.postcopy_runs(report, "64M", qemu_compare.LINKS["1gbit"])
    assert len(recorded) == 6
    assert all(setup.link == 125_000_000 and not prefix for setup, prefix in recorded)
    assert report.tables[0].title == (
        "Postcopy: 64M guest writing 25000 pages/s, max-bandwidth 32M, on 1gbit, emulated by"
        " x-link-bandwidth (a network namespace needs root) (round trip 100 us; before the"
        " runs, a busy thread stalled 2.0 times/s over 1 ms, longest 8.2 ms)"
    )
    bound = 3 * (0.0001 + 4096 / 125_000_000) * 1000
    (check,) = [
        c
        for c in report.checks
        if c[0].startswith("postcopy-preempt, background unlimited: faulting")
    ]
    assert check == (
        "postcopy-preempt, background unlimited: faulting vCPU's wait p99 (ms, 1gbit)",
        pytest.approx(0.497),
        f"<= {bound:.2f}",
        False,  # 0.50 ms is over 3 x (100 us + 33 us)
    )


def test_a_shaped_link_runs_both_endpoints_in_its_namespace(
    monkeypatch: pytest.MonkeyPatch, recorded: list[tuple[Setup, Sequence[str]]]
) -> None:
    inside = ["ip", "netns", "exec", "qemu-hmp-bench-test"]

    @contextmanager
    def shaped(link: qemu_compare.Link) -> Iterator[list[str]]:
        yield inside

    monkeypatch.setattr(qemu_compare, "shaped_link", shaped)
    report = bench.Report(out=io.StringIO())
    bench.postcopy_runs(report, "64M", qemu_compare.LINKS["1gbit"])
    assert all(setup.link == 0 and prefix == inside for setup, prefix in recorded)
    assert ", on 1gbit (1 Gbit/s) (round trip 100 us; " in report.tables[0].title
    loopback = bench.Report(out=io.StringIO())
    bench.postcopy_runs(loopback, "64M")
    (check,) = [
        c
        for c in loopback.checks
        if c[0].startswith("postcopy-preempt, background unlimited: faulting")
    ]
    assert check[2] == "<= 5.00" and check[3]


def test_each_run_says_what_the_host_stole_meanwhile(
    monkeypatch: pytest.MonkeyPatch, recorded: list[tuple[Setup, Sequence[str]]]
) -> None:
    # A reading before and after each of the six runs: run k has k of its 100 ticks stolen.
    readings = iter(
        [
            t
            for k in range(6)
            for t in (host.CpuTimes(1000 * k, 0), host.CpuTimes(1000 * k + 100, k))
        ]
    )
    monkeypatch.setattr(host, "cpu_times", lambda: next(readings))
    report = bench.Report(out=io.StringIO())
    bench.postcopy_runs(report, "64M")
    table = report.tables[0]
    assert table.headers[-1] == "host steal"
    assert [row[-1] for row in table.rows] == ["0%", "1%", "2%", "3%", "4%", "5%"]
    checks = {name: value for name, value, _t, _ok in report.checks}
    assert checks["postcopy-preempt, background unlimited: host CPU steal (%)"] == 5.0
    assert checks["host: a busy thread's stalls over 1 ms, before the runs (per s)"] == 2.0
    assert checks["host: its longest stall (ms)"] == 8.25
