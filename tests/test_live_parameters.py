"""Live parameter changes take effect at once: a rate wait is re-timed at the new value, never
left to run out at the old one (1 byte/s made one wait of ~10^6 s that nothing woke)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

import pytest
import test_machine
from streams import guest, settings
from test_machine import SIZE, Watch, dest, make
from test_stalls import Reports

from engine.events import EventBus
from engine.machine import Machine, MachineOptions
from engine.source import OutgoingMigration
from engine.state import MigrationStatus, RunState
from engine.transport import Link, RateLimiter, parse_uri
from engine.vm import Vm

MiB = 1 << 20


class Rate:
    """A parameter the test changes while a sender waits on it; ``read`` is set at each read."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.read = threading.Event()

    def __call__(self) -> int:
        self.read.set()
        return self.value


def waiting(rate: Rate, work: Callable[[], None]) -> threading.Thread:
    """Run ``work`` on a thread; return once it read the rate it is to wait by. It reads it
    holding the lock it gives up only in its wait, so any wake-up from now on finds it there."""
    rate.read.clear()
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    assert rate.read.wait(10)
    thread.join(0.05)
    assert thread.is_alive(), "the wait did not wait"
    return thread


@pytest.mark.parametrize(("new", "ends_by"), [(0, "unlimited"), (1 << 30, "fast")])
def test_link_wait_follows_a_rate_change(new: int, ends_by: str) -> None:
    """1 MiB at 1 byte/s waits ~12 days; at the new rate what is left of it takes ≤ 1 ms."""
    rate = Rate(1)
    link = Link(rate)
    sender = waiting(rate, lambda: link.pace(1 * MiB))
    rate.value = new
    link.wake()
    sender.join(10)
    assert not sender.is_alive(), f"the wait outlived the change to {ends_by}"


def test_link_end_releases_a_waiting_sender() -> None:
    rate = Rate(1)
    link = Link(rate)
    sender = waiting(rate, lambda: link.pace(1 * MiB))
    link.end()
    sender.join(10)
    assert not sender.is_alive()
    link.pace(1 * MiB)  # and after the end, nothing waits at all


class HourWindow(RateLimiter):
    """A window so long that only a wake-up, not the window's end, can release the sender."""

    WINDOW_S = 3600.0


@pytest.mark.parametrize("release", ["rate change", "end"])
def test_rate_limiter_wait_follows_a_rate_change(release: str) -> None:
    rate = Rate(100)
    limiter = HourWindow(rate)
    limiter.charge(1000)
    assert limiter.exhausted()
    sender = waiting(rate, limiter.wait_window)
    if release == "end":
        limiter.end()
    else:
        rate.value = 0  # unlimited
        limiter.wake()
    sender.join(10)
    assert not sender.is_alive()


class Params:
    """One migration's live parameters; ``read`` is set whenever ``watched`` is read."""

    def __init__(self, watched: str, value: int) -> None:
        self.values = {"max-bandwidth": 0, "downtime-limit": 300, "x-link-bandwidth": 0}
        self.values["avail-switchover-bandwidth"] = 0
        self.values[watched] = value
        self.watched = watched
        self.read = threading.Event()

    def __call__(self, name: str) -> int:
        if name == self.watched:
            self.read.set()
        return self.values[name]


@pytest.mark.parametrize(
    ("param", "throttled"),
    [("x-link-bandwidth", 1), ("max-bandwidth", 10)],  # 10: 1 byte per 100 ms window
)
def test_a_migration_throttled_to_a_byte_per_second_completes_once_unlimited(
    machines, param: str, throttled: int
) -> None:
    """From the start at ~1 byte/s (its header and configuration alone would take minutes),
    then 0: the wait in progress is re-timed at the new rate and the migration completes."""
    dst, uri = dest(machines)
    watch = Watch(dst)
    ram = guest(SIZE, "random", seed=31)
    vm = Vm(RunState.PRELAUNCH, EventBus())
    params, reports = Params(param, throttled), Reports()
    mig = OutgoingMigration(
        parse_uri(uri, incoming=False), ram, vm, settings(), params, reports, lambda _n, _d: None
    )
    params.read.clear()  # the constructor read it; the next read is the sender's, in its wait
    mig.start()
    try:
        assert params.read.wait(30)
        params.values[param] = 0
        mig.parameters_changed()  # takes the limiter's or link's lock: the sender is waiting
        assert mig.wait(30) and mig.status is MigrationStatus.COMPLETED, reports.lines
        watch.wait_status("completed")
        assert hashlib.sha256(ram.buf).digest() == hashlib.sha256(dst.ram.buf).digest()
    finally:
        mig.cancel()
        mig.join(10)


def wait_sent(src: Machine, timeout: float = 30) -> None:
    """Poll the source's counter (it has no event of its own) until its first batch went."""
    deadline = time.monotonic() + timeout
    while not ((info := src.query_migrate()).ram and info.ram.transferred):
        assert time.monotonic() < deadline, "the migration sent nothing"
        threading.Event().wait(0.005)


def wedged_source(machines: list[Machine], multifd: bool) -> Machine:
    """A migration under way over a 2 MiB/s link, which then drops to 1 byte/s: the source,
    once its stall warning says it sent nothing for 2 s (a batch takes 0.5 s at 2 MiB/s)."""
    dst, uri = dest(machines)
    reports = Reports()
    opts = MachineOptions(ram_size=SIZE, workload="random", seed=32, stall_warning_s=2.0)
    src = Machine(opts, notify=reports)
    machines.append(src)
    if multifd:
        for m in (src, dst):
            m.set_capabilities({"multifd": True})
    src.set_parameters({"max-bandwidth": 0, "x-link-bandwidth": 2 * MiB})  # 16 s for all
    src.migrate(uri)
    wait_sent(src)
    src.set_parameters({"x-link-bandwidth": 1})
    reports.wait()
    assert reports.lines == ["warning: migration: no progress for 2 s"]
    assert src.query_migrate().status is MigrationStatus.ACTIVE
    return src


@pytest.mark.parametrize("multifd", [False, True], ids=["main-stream", "multifd"])
def test_link_dropped_to_a_byte_per_second_then_lifted_completes(machines, multifd) -> None:
    """The reported wedge, through the monitor's path: `migrate_set_parameter` on a machine."""
    src = wedged_source(machines, multifd)
    src.set_parameters({"x-link-bandwidth": 0})
    assert src.wait_migration(30).status is MigrationStatus.COMPLETED
    assert test_machine.ram_hash(src) == test_machine.ram_hash(machines[0])


def test_back_and_forth_still_completes_with_equal_ram(machines) -> None:
    src = wedged_source(machines, multifd=False)
    for value in (0, 1, 1 << 30, 1, 0):
        src.set_parameters({"x-link-bandwidth": value})
    assert src.wait_migration(30).status is MigrationStatus.COMPLETED
    assert test_machine.ram_hash(src) == test_machine.ram_hash(machines[0])


def test_raising_downtime_limit_lets_a_non_converging_migration_complete(machines) -> None:
    """The guest dirties faster than 32 MiB/s carries (test_machine shows it never converges);
    with a 2000 s downtime limit, what is left fits at the next window."""
    _dst, uri = dest(machines, ram_size=64 * MiB)
    src = make(machines, ram_size=64 * MiB, workload="random-writer,rate=25000,wss=32M")
    src.set_parameters({"max-bandwidth": 32 * MiB})
    watch = Watch(src)
    src.migrate(uri)
    watch.wait_event("MIGRATION_PASS", count=3, timeout=60)
    src.set_parameters({"downtime-limit": 2_000_000})
    assert src.wait_migration(30).status is MigrationStatus.COMPLETED
