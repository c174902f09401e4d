"""A destination that dies during the active phase: what the source says, as QEMU 7.2's.

The kernel decides the text (tests/data/qemu-7.2/record_kill.py explains and records both):
a destination that dies with nothing unread closes with FIN, and the source's later write
fails with EPIPE ("Broken pipe"), after savevm's "failed to save SaveStateEntry" line; one
that dies with bytes unread resets the connection ("Connection reset by peer"). Each test
forces its case by construction: the source is parked in its rate-limit wait (between two
iterations, nothing in flight) while a plain socket playing the destination reads everything
or nothing, closes, and lets the source go on.
"""

from __future__ import annotations

import json
import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.machine import Machine, MachineOptions
from engine.source import OutgoingMigration
from engine.state import MigrationStatus
from engine.transport import RateLimiter

QEMU = json.loads((Path(__file__).parent / "data/qemu-7.2/kill_destination.json").read_text())
TIMEOUT = 10.0


@dataclass
class Parked:
    """The source's first rate-limit wait, held until ``resume`` is set."""

    parked: threading.Event
    resume: threading.Event


@pytest.fixture
def parked(monkeypatch: pytest.MonkeyPatch) -> Iterator[Parked]:
    hold = Parked(threading.Event(), threading.Event())
    wait_window = RateLimiter.wait_window

    def held(limiter: RateLimiter) -> None:
        if not hold.parked.is_set():
            hold.parked.set()
            assert hold.resume.wait(TIMEOUT)
        wait_window(limiter)

    monkeypatch.setattr(RateLimiter, "wait_window", held)
    yield hold
    hold.resume.set()


def die_and_report(parked: Parked, drain: bool) -> tuple[Machine, list[str]]:
    """Migrate a random 16 MiB guest at 4 MiB/s to a socket that, once the source is parked,
    reads all it sent (``drain``) or nothing, and closes; the source's reports."""
    reports: list[str] = []
    machine = Machine(MachineOptions(ram_size=16 << 20, workload="random"), notify=reports.append)
    with socket.create_server(("127.0.0.1", 0)) as server:
        machine.set_parameters({"max-bandwidth": 4 << 20})
        machine.migrate(f"tcp:127.0.0.1:{server.getsockname()[1]}")
        conn, _ = server.accept()
    outgoing = machine._outgoing
    assert isinstance(outgoing, OutgoingMigration)
    assert parked.parked.wait(TIMEOUT)
    if drain:
        left = outgoing.stats.stream_bytes  # all the parked source has written
        while left:
            assert select.select([conn], [], [], TIMEOUT)[0]
            left -= len(conn.recv(min(left, 1 << 20)))
    assert select.select([conn], [], [], 0)[0] != drain  # bytes unread, or none
    conn.close()  # the destination's death: FIN when drained, RST when not
    parked.resume.set()
    assert outgoing.wait(TIMEOUT)
    return machine, reports


@pytest.mark.parametrize("drain", [True, False], ids=["drained", "unread"])
def test_destination_death_is_reported_as_qemu_does(parked: Parked, drain: bool) -> None:
    qemu = QEMU["drained" if drain else "unread"]
    machine, reports = die_and_report(parked, drain)
    try:
        info = machine.query_migrate()
        assert info.status is MigrationStatus.FAILED
        assert f"Migration status: failed ({info.error_desc})" == qemu["status"]
        expected = [line.removeprefix("qemu-system-x86_64: ") for line in qemu["stderr"]]
        if drain:
            assert reports == expected
        else:
            # QEMU names the RAM section only when the reset meets a write in progress (its
            # recording here reset a source waiting for its rate limit); ours always does.
            assert reports[-1:] == expected
        assert f"VM status: {machine.query_status().status}" == qemu["runstate"]
    finally:
        machine.close()
