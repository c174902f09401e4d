"""What a user polling `info migrate` sees never goes backwards, through the end too.

Another thread takes snapshots of the source in a tight loop (a bounded number) through a
whole migration: `total time` and `transferred ram` never decrease, and the status only
moves forward (setup, active, completed). The moment that used to break it is forced open:
the source is held after its last byte, before the destination's verdict, while the clock
the statistics read jumps 5 ms and the poller takes an `active` snapshot; the `completed`
total must not be below it (it was: downtime and total time ended at the last byte).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from engine import source, stats
from engine.machine import Machine, MachineOptions
from engine.snapshot import MigrationInfo
from engine.source import OutgoingMigration
from engine.state import MigrationStatus

TIMEOUT = 30.0
MAX_POLLS = 2_000_000
ORDER = {MigrationStatus.SETUP: 0, MigrationStatus.ACTIVE: 1, MigrationStatus.COMPLETED: 2}
JUMP_MS = 5.0


class Clock:
    """The statistics' clock: real time plus an offset the test moves forward."""

    def __init__(self, real: Callable[[], float]) -> None:
        self.real = real
        self.offset = 0.0

    def __call__(self) -> float:
        return self.real() + self.offset


class Verdict:
    """Holds the source after its last byte, before the completion handshake."""

    def __init__(self) -> None:
        self.due = threading.Event()
        self.go = threading.Event()


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> tuple[Clock, Verdict]:
    clock = Clock(stats.now_ms)
    for module in (stats, source):
        monkeypatch.setattr(module, "now_ms", clock)
    verdict = Verdict()
    switch_over = OutgoingMigration._switch_over

    def hold(self: OutgoingMigration) -> Any:
        verdict.due.set()
        assert verdict.go.wait(TIMEOUT)
        return switch_over(self)

    monkeypatch.setattr(OutgoingMigration, "_switch_over", hold)
    return clock, verdict


def poll(src: Machine, clock: Clock, verdict: Verdict) -> list[MigrationInfo]:
    """Snapshots until `completed`; at the held moment, jump the clock and take one."""
    seen: list[MigrationInfo] = []
    for _ in range(MAX_POLLS):
        if verdict.due.is_set() and not verdict.go.is_set():
            clock.offset += JUMP_MS
            seen.append(src.query_migrate())
            assert seen[-1].status is MigrationStatus.ACTIVE
            verdict.go.set()
        seen.append(src.query_migrate())
        if seen[-1].status is MigrationStatus.COMPLETED:
            return seen
    raise AssertionError(f"not completed after {MAX_POLLS} polls: {seen[-1]}")


def test_polled_figures_never_go_backwards(held: tuple[Clock, Verdict]) -> None:
    clock, verdict = held
    dst = Machine(MachineOptions(ram_size=32 << 20, incoming="tcp:127.0.0.1:0"))
    src = Machine(MachineOptions(ram_size=32 << 20, seed=3))
    try:
        address = dst.query_migrate().socket_address
        assert address is not None
        src.set_parameters({"max-bandwidth": 64 << 20})  # a few windows: active for a while
        src.migrate(address[0])
        seen = poll(src, clock, verdict)
        assert src.wait_migration(TIMEOUT).status is MigrationStatus.COMPLETED
    finally:
        verdict.go.set()
        src.close()
        dst.close()
    statuses = [ORDER[info.status] for info in seen if info.status is not None]
    assert len(statuses) == len(seen) and statuses == sorted(statuses)
    timed = [info for info in seen if info.status is not MigrationStatus.SETUP]  # QEMU: none
    totals = [info.total_time for info in timed if info.total_time is not None]
    assert len(totals) == len(timed) and totals == sorted(totals)  # completed's too
    moved = [info.ram.transferred for info in seen if info.ram is not None]
    assert moved == sorted(moved) and moved[-1] > 0
