"""The rate limiter's windows, first one included (QEMU 7.2: max-bandwidth/10 bytes per 100 ms
window, the budget checked before each page), on a clock the test holds still."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator

import pytest
from test_machine import make

from engine import source
from engine.guest import PAGE_SIZE
from engine.machine import Machine
from engine.source import OutgoingMigration
from engine.state import MigrationStatus
from engine.transport import RateLimiter

TIMEOUT = 30.0


class Clock:
    """Time that moves only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_left_is_the_window_s_budget_minus_what_was_charged() -> None:
    clock = Clock()
    limiter = RateLimiter(lambda: 64 * 1024, clock)  # 6553 bytes per window
    assert limiter.left() == 6553
    limiter.charge(6000)
    assert limiter.left() == 553 and not limiter.exhausted()
    limiter.charge(4096 + 600)  # a page past the budget
    assert limiter.left() == 0 and limiter.exhausted()
    clock.now += RateLimiter.WINDOW_S  # the next window: what went past is carried into it
    assert limiter.left() == 6553 - (6000 + 4696 - 6553)
    assert RateLimiter(lambda: 0, clock).left() is None  # unlimited


@pytest.fixture
def first_full_window(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Every source's limiter on a clock that never moves, so all it sends is the first
    window's; the event is set when the migration thread first waits on a spent window."""
    spent = threading.Event()
    monkeypatch.setattr(source, "RateLimiter", functools.partial(RateLimiter, clock=Clock()))
    wait_window = RateLimiter.wait_window

    def wait(limiter: RateLimiter, *args: object) -> None:
        if limiter.exhausted():
            spent.set()
        wait_window(limiter, *args)

    monkeypatch.setattr(RateLimiter, "wait_window", wait)
    yield spent


@pytest.mark.parametrize("workload", ["idle", "random"])
def test_the_first_window_carries_at_most_a_page_past_its_budget(
    machines: list[Machine], first_full_window: threading.Event, workload: str
) -> None:
    """At max-bandwidth 64k a window's budget is 6553 bytes: one step of the scan used to send
    256 pages at once (174 kB of an idle guest) before the limit was first checked."""
    budget = 64 * 1024 // 10
    server = make(machines, incoming="tcp:127.0.0.1:0")
    address = server.query_migrate().socket_address
    assert address is not None
    src = make(machines, workload=workload)
    src.set_parameters({"max-bandwidth": 64 * 1024})
    src.migrate(address[0])
    assert first_full_window.wait(TIMEOUT)
    mig = src._outgoing
    assert isinstance(mig, OutgoingMigration)
    sent = mig.stats.stream_bytes
    # The budget, then at most one page, its batch's framing and the iteration's EOS.
    assert budget <= sent <= budget + PAGE_SIZE + 64
    src.migrate_cancel()
    assert src.wait_migration(TIMEOUT).status is MigrationStatus.CANCELLED
