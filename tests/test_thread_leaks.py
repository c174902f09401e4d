"""Every thread and descriptor the engine takes for a migration is given back when it ends,
on both sides and however it ends: completed, refused, killed, cancelled."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from test_machine import Watch

from engine.destination import IncomingMigration
from engine.machine import Machine, MachineOptions
from engine.source import StallWatch
from engine.state import MigrationStatus

MiB = 1 << 20
SIZE = 32 * MiB
HOLD_S = 0.5  # how long the last step of a migration thread is held (a quit must wait)
LINK = 2 * MiB  # bytes/s: the random guest takes ~16 s, so "mid-stream" lasts that long
# Threads that exist only while a migration runs; each must end with it.
PER_MIGRATION = (
    "live_migration",
    "migration_watch",
    "multifdsend_",
    "multifdrecv",
    "compress-",
    "decompress-",
    "incoming_deadline",
)


def fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def join_migration_threads(timeout: float = 10.0) -> list[str]:
    """Join every per-migration thread (bounded); the names of those still alive."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name.startswith(PER_MIGRATION):
            thread.join(max(0.0, deadline - time.monotonic()))
    return sorted(t.name for t in threading.enumerate() if t.name.startswith(PER_MIGRATION))


def transferred(m: Machine) -> int:
    info = m.query_migrate()
    return info.ram.transferred if info.ram else 0


def wait_transferred(m: Machine, nbytes: int, timeout: float = 30) -> None:
    """Poll the source's counter (it has no event of its own) until ``nbytes`` went out."""
    deadline = time.monotonic() + timeout
    while transferred(m) < nbytes:
        assert time.monotonic() < deadline, "the migration did not get going"
        threading.Event().wait(0.005)


def pair(capabilities: dict[str, bool], dst_too: bool = True) -> tuple[Machine, Machine, str]:
    dst = Machine(MachineOptions(ram_size=SIZE, incoming="tcp:127.0.0.1:0"))
    src = Machine(MachineOptions(ram_size=SIZE, workload="random", seed=21))
    for m in (src, dst) if dst_too else (src,):
        m.set_capabilities({"events": True, **capabilities})
        m.set_parameters({"multifd-channels": 4, "multifd-compression": "zlib"})
    dst.set_capabilities({"events": True})
    src.set_parameters({"max-bandwidth": 0, "x-link-bandwidth": LINK})
    address = dst.query_migrate().socket_address
    assert address is not None
    return src, dst, address[0]


def completed(src: Machine, dst: Machine, watch: Watch) -> tuple[str, str]:
    src.set_parameters({"x-link-bandwidth": 0})
    return "completed", "completed"


def killed(src: Machine, dst: Machine, watch: Watch) -> tuple[str, str]:
    wait_transferred(src, 1 * MiB)
    dst.close()  # the destination goes away mid-stream
    return "failed", "failed"


def cancelled(src: Machine, dst: Machine, watch: Watch) -> tuple[str, str]:
    wait_transferred(src, 1 * MiB)
    src.migrate_cancel()
    return "cancelled", "failed"


Scenario = Callable[[Machine, Machine, Watch], tuple[str, str]]
SCENARIOS: list[tuple[str, dict[str, bool], bool, Scenario]] = [
    ("multifd-completed", {"multifd": True}, True, completed),
    ("multifd-refused", {"multifd": True}, False, completed),  # the destination lacks multifd
    ("multifd-killed", {"multifd": True}, True, killed),
    ("multifd-cancelled", {"multifd": True}, True, cancelled),
    ("compress-completed", {"compress": True}, True, completed),
    ("compress-cancelled", {"compress": True}, True, cancelled),
]


@pytest.mark.slow
def test_migrations_give_back_every_thread_and_descriptor() -> None:
    join_migration_threads()  # an earlier test's: not what this one counts
    threads_before, fds_before = Counter(t.name for t in threading.enumerate()), fds()
    for name, caps, dst_too, scenario in SCENARIOS:
        src, dst, uri = pair(caps, dst_too)
        try:
            watch = Watch(dst)
            src.migrate(uri)
            expect_src, expect_dst = scenario(src, dst, watch)
            if not dst_too:
                expect_src, expect_dst = "failed", "failed"
            assert str(src.wait_migration(30).status) == expect_src, name
            watch.wait_status(expect_dst)
            # Both machines are still up: only the migration's own threads are gone.
            assert join_migration_threads() == [], name
        finally:
            src.close()
            dst.close()
    assert join_migration_threads() == []
    assert Counter(t.name for t in threading.enumerate()) == threads_before
    assert fds() == fds_before


def test_multifd_sender_threads_end_with_each_migration() -> None:
    """The reported leak: 2 → 10 → 18 → 26 threads over three 8-channel migrations."""
    src = Machine(MachineOptions(ram_size=8 * MiB, workload="random", seed=22))
    src.set_capabilities({"multifd": True})
    src.set_parameters({"multifd-channels": 8})
    try:
        join_migration_threads()  # an earlier test's: not what this one counts
        before = Counter(t.name for t in threading.enumerate())
        for _ in range(3):
            dst = Machine(MachineOptions(ram_size=8 * MiB, incoming="tcp:127.0.0.1:0"))
            dst.set_capabilities({"multifd": True})
            address = dst.query_migrate().socket_address
            assert address is not None
            src.migrate(address[0])
            assert src.wait_migration(30).status is MigrationStatus.COMPLETED
            dst.close()
            assert join_migration_threads() == []
            src.cont()  # a completed source is postmigrate; run it to migrate again
        assert Counter(t.name for t in threading.enumerate()) == before
    finally:
        src.close()


def held(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> None:
    """Hold ``cls.name`` a moment after it ran: a window that a close must not miss."""
    step = getattr(cls, name)

    def then_hold(self: object, *args: Any, **kwargs: Any) -> Any:
        result = step(self, *args, **kwargs)
        threading.Event().wait(HOLD_S)  # a bounded hold, not a wait for a thread
        return result

    monkeypatch.setattr(cls, name, then_hold)


def test_a_quit_returns_once_the_migration_threads_have_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """close() waits for the threads, not only for the status: a migration thread's last steps
    follow its status change, and a quit must leave nothing of the endpoint running. The
    source's last step (ending its stall watch) is held a moment here, so a close that
    returned at the status change would find the thread still alive."""
    held(monkeypatch, StallWatch, "end")
    src, dst, uri = pair({"multifd": True}, True)
    watch = Watch(dst)
    src.migrate(uri)
    wait_transferred(src, 1 * MiB)
    src.close()
    watch.wait_status("failed")
    dst.close()
    assert alive() == []  # no join here: close() did it


def test_a_quit_ends_a_failed_incoming_attempt_that_a_retry_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refused incoming migration listens again at once (a new thread), then its own thread
    still ends its steps (held here): the quit must wait for that one too, not only for the
    retry that took its place."""
    held(monkeypatch, IncomingMigration, "_fail")
    src, dst, uri = pair({"multifd": True}, False)  # the destination lacks multifd
    watch = Watch(dst)
    src.migrate(uri)
    assert src.wait_migration(30).status is MigrationStatus.FAILED
    watch.wait_status("failed")
    src.close()
    dst.close()
    assert alive("incoming_migration") == []


def alive(*names: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(PER_MIGRATION + names)]
