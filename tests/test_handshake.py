"""The completion handshake (DONE → READY → GO → ACK) under every message loss and freeze.

A record proxy (tests/proxy.py) between two in-process Machines cuts the connection at, drops
or holds each handshake record in turn; the side whose switchover timeout matters gets a
short one, the other a long one that only bounds the test. For every point: the guest never
runs on both sides at once (checked at each RESUME), each side ends in the state the design
table in docs/ARCHITECTURE.md gives it, its message says which side holds the guest, and
the operator's next step (`cont` on the source, a retry into the destination) works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from proxy import DOWN, UP, Action, RecordProxy, Rule
from test_machine import Watch, dest, make, migrate

from engine import wire
from engine.errors import MigrationError
from engine.machine import Machine
from engine.state import MigrationStatus, RunState

SIZE = 4 << 20
SHORT = 0.3  # the switchover timeout a case runs into
LONG = 30.0  # the other side's: never reached, it only bounds a broken run

CLOSED = "the connection closed"
NO_ANSWER = f"no answer within {SHORT:g} s"
ENDED = "migration stream ended before completion"


def source_keeps(cause: str) -> str:
    return (
        f"lost contact with the destination before it confirmed the migration ({cause}); "
        "the guest stays on the source"
    )


def source_unsure(cause: str) -> str:
    return (
        f"lost contact with the destination after the switchover ({cause}): "
        "the destination may be running the guest; check it before 'cont' here"
    )


def destination_gives_up(cause: str) -> str:
    return f"the source did not confirm the switchover ({cause}); the guest stays on the source"


Outcome = tuple[MigrationStatus, RunState, str | None]
DONE = (MigrationStatus.COMPLETED, RunState.RUNNING, None)


@dataclass(frozen=True)
class Case:
    rule: Rule | None
    short: str  # the side with the short switchover timeout: "source", "destination", ""
    source: Outcome
    destination: Outcome

    @property
    def id(self) -> str:
        return f"{self.rule or 'no-loss'}{f'-{self.short}-times-out' if self.short else ''}"


def _failed(runstate: RunState, why: str) -> Outcome:
    return (MigrationStatus.FAILED, runstate, why)


SRC_RUNS, SRC_PAUSED, DST_WAITS = RunState.RUNNING, RunState.POSTMIGRATE, RunState.INMIGRATE
CASES = [
    Case(None, "", (MigrationStatus.COMPLETED, SRC_PAUSED, None), DONE),
    # Before GO leaves the source the destination cannot run: the source takes the guest back.
    Case(
        Rule(UP, wire.Rec.DONE, Action.CUT),
        "",
        _failed(SRC_RUNS, source_keeps(CLOSED)),
        _failed(DST_WAITS, ENDED),
    ),
    Case(
        Rule(UP, wire.Rec.DONE, Action.DROP),
        "source",
        _failed(SRC_RUNS, source_keeps(NO_ANSWER)),
        _failed(DST_WAITS, ENDED),
    ),
    # The destination frozen in stop-and-copy past the source's timeout, then thawed.
    Case(
        Rule(UP, wire.Rec.DONE, Action.HOLD),
        "source",
        _failed(SRC_RUNS, source_keeps(NO_ANSWER)),
        _failed(DST_WAITS, destination_gives_up(CLOSED)),
    ),
    Case(
        Rule(DOWN, wire.Rec.READY, Action.CUT),
        "",
        _failed(SRC_RUNS, source_keeps(CLOSED)),
        _failed(DST_WAITS, destination_gives_up(CLOSED)),
    ),
    Case(
        Rule(DOWN, wire.Rec.READY, Action.DROP),
        "source",
        _failed(SRC_RUNS, source_keeps(NO_ANSWER)),
        _failed(DST_WAITS, destination_gives_up(CLOSED)),
    ),
    # The destination's READY delayed past the source's timeout (a frozen destination).
    Case(
        Rule(DOWN, wire.Rec.READY, Action.HOLD),
        "source",
        _failed(SRC_RUNS, source_keeps(NO_ANSWER)),
        _failed(DST_WAITS, destination_gives_up(CLOSED)),
    ),
    # GO sent: the source never restarts by itself; the destination never runs without GO.
    Case(
        Rule(UP, wire.Rec.GO, Action.CUT),
        "",
        _failed(SRC_PAUSED, source_unsure(CLOSED)),
        _failed(DST_WAITS, destination_gives_up(CLOSED)),
    ),
    Case(
        Rule(UP, wire.Rec.GO, Action.DROP),
        "source",
        _failed(SRC_PAUSED, source_unsure(NO_ANSWER)),
        _failed(DST_WAITS, destination_gives_up(CLOSED)),
    ),
    # The destination gives up first and says so (NACK): the guest is the source's again.
    Case(
        Rule(UP, wire.Rec.GO, Action.DROP),
        "destination",
        _failed(SRC_RUNS, destination_gives_up(NO_ANSWER)),
        _failed(DST_WAITS, destination_gives_up(NO_ANSWER)),
    ),
    # A source frozen at the switchover past the destination's timeout: its GO comes late.
    Case(
        Rule(UP, wire.Rec.GO, Action.HOLD),
        "destination",
        _failed(SRC_RUNS, destination_gives_up(NO_ANSWER)),
        _failed(DST_WAITS, destination_gives_up(NO_ANSWER)),
    ),
    # The destination runs the guest; only its confirmation is lost (the split-brain of old).
    Case(
        Rule(DOWN, wire.Rec.ACK, Action.CUT),
        "",
        _failed(SRC_PAUSED, source_unsure(CLOSED)),
        DONE,
    ),
    # The ACK lost, then the destination's close arrives (it closes once it holds the guest).
    Case(
        Rule(DOWN, wire.Rec.ACK, Action.DROP),
        "",
        _failed(SRC_PAUSED, source_unsure(CLOSED)),
        DONE,
    ),
    Case(
        Rule(DOWN, wire.Rec.ACK, Action.HOLD),
        "source",
        _failed(SRC_PAUSED, source_unsure(NO_ANSWER)),
        DONE,
    ),
]


class Witness:
    """Records every moment a guest resumed while the other side's was running."""

    def __init__(self, src: Machine, dst: Machine) -> None:
        self.overlaps: list[str] = []
        self._subscribe(src, dst, "source")
        self._subscribe(dst, src, "destination")

    def _subscribe(self, me: Machine, other: Machine, name: str) -> None:
        def on(event: str, _data: dict[str, Any]) -> None:
            if event == "RESUME" and other.vm.running:  # Vm.start emits after it runs
                self.overlaps.append(f"the {name} resumed while the other guest ran")

        me.events.subscribe(on)


def pair(machines: list[Machine], short: str) -> tuple[Machine, Machine, str]:
    timeout = {side: SHORT if short == side else LONG for side in ("source", "destination")}
    dst, uri = dest(machines, ram_size=SIZE, switchover_timeout=timeout["destination"])
    src = make(machines, ram_size=SIZE, seed=1, switchover_timeout=timeout["source"])
    return src, dst, uri


def outcome(m: Machine) -> Outcome:
    info = m.query_migrate()
    assert info.status is not None
    return info.status, m.query_status().status, info.error_desc


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_no_loss_leaves_two_guests_running(machines, case: Case):
    src, dst, uri = pair(machines, case.short)
    witness = Witness(src, dst)
    dst_watch = Watch(dst)
    proxy = RecordProxy(uri, case.rule)
    proxy.start()
    src.migrate(proxy.uri)
    if case.rule and case.rule.action is Action.HOLD:
        assert proxy.reached.wait(LONG)
        # The held side is frozen until the other side's verdict is in, then it thaws.
        if case.short == "source":
            assert src.wait_migration(LONG).status is case.source[0]
        else:
            dst_watch.wait_status(str(case.destination[0]))
        proxy.release()
    assert src.wait_migration(LONG).status is case.source[0]
    dst_watch.wait_status(str(case.destination[0]))
    proxy.join(LONG)
    assert not proxy.is_alive()
    assert outcome(src) == case.source
    assert outcome(dst) == case.destination  # a late GO did not start it
    assert not witness.overlaps
    recover(src, dst, uri)
    assert not witness.overlaps


def recover(src: Machine, dst: Machine, uri: str) -> None:
    """The operator's step: where neither side runs the guest, the destination said it gave
    it up, so `cont` on the source; a destination that gave it up takes a retry."""
    if dst.query_status().status is RunState.INMIGRATE:
        if src.query_status().status is RunState.POSTMIGRATE:
            src.cont()
        assert src.query_status().status is RunState.RUNNING
        migrate(src, dst, uri)


def test_cont_is_refused_until_the_switchover_is_decided(machines):
    """While the source waits for READY its guest is in finish-migrate; QEMU's `cont` error
    keeps an operator from resuming it while the destination may be about to."""
    src, dst, uri = pair(machines, "")
    witness = Witness(src, dst)
    dst_watch = Watch(dst)
    proxy = RecordProxy(uri, Rule(DOWN, wire.Rec.READY, Action.HOLD))
    proxy.start()
    src.migrate(proxy.uri)
    assert proxy.reached.wait(LONG)
    assert src.query_status().status is RunState.FINISH_MIGRATE
    with pytest.raises(MigrationError, match=r"^Migration is not finalized yet$"):
        src.cont()
    src.stop()  # as in QEMU: no effect in finish-migrate
    assert src.query_status().status is RunState.FINISH_MIGRATE
    proxy.release()
    assert src.wait_migration(LONG).status is MigrationStatus.COMPLETED
    dst_watch.wait_status("completed")
    assert outcome(dst) == DONE
    assert not witness.overlaps


def test_cancel_before_the_commit_restarts_the_source(machines):
    """migrate_cancel while READY is on its way: the source runs again (as QEMU's does) and
    the destination, which never got GO, gives the guest up."""
    src, dst, uri = pair(machines, "")
    witness = Witness(src, dst)
    dst_watch = Watch(dst)
    proxy = RecordProxy(uri, Rule(DOWN, wire.Rec.READY, Action.HOLD))
    proxy.start()
    src.migrate(proxy.uri)
    assert proxy.reached.wait(LONG)
    src.migrate_cancel()
    assert src.wait_migration(LONG).status is MigrationStatus.CANCELLED
    assert outcome(src) == (MigrationStatus.CANCELLED, RunState.RUNNING, None)
    dst_watch.wait_status("failed")
    proxy.release()
    proxy.join(LONG)
    assert outcome(dst) == _failed(DST_WAITS, destination_gives_up(CLOSED))
    assert not witness.overlaps


def test_cancel_after_the_commit_changes_nothing(machines):
    """Once GO is sent the guest may be running on the destination: migrate_cancel must not
    restart it here; the migration completes when the held ACK arrives."""
    src, dst, uri = pair(machines, "")
    witness = Witness(src, dst)
    proxy = RecordProxy(uri, Rule(DOWN, wire.Rec.ACK, Action.HOLD))
    proxy.start()
    src.migrate(proxy.uri)
    assert proxy.reached.wait(LONG)
    src.migrate_cancel()
    assert src.query_migrate().status is MigrationStatus.ACTIVE
    assert src.query_status().status is RunState.FINISH_MIGRATE
    proxy.release()
    assert src.wait_migration(LONG).status is MigrationStatus.COMPLETED
    assert outcome(src) == (MigrationStatus.COMPLETED, SRC_PAUSED, None)
    assert outcome(dst) == DONE
    assert not witness.overlaps
