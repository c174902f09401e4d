"""QEMU 11.1's switchover-ack (engine/switchover_ack.py): the source switches over only once
the destination's SWITCHOVER_ACK came over the return path.

A destination acks at once after setup unless something holds it (QEMU: a device such as VFIO;
here `IncomingMigration.switchover.hold()`), so the tests hold it to keep the window open: the
source then keeps iterating (dirty syncs go on), a cancel still ends it at once, a stopped
source does not wait, and the release completes it. tests/data/qemu-11.1/migrate_switchover_ack*
are QEMU 11.1's recordings (replayed by test_migration_oracle11.py).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

import pytest

from engine import wire
from engine.destination import IncomingMigration
from engine.machine import Machine
from engine.params11 import TABLE_11_1
from engine.state import RunState
from tests.test_machine import Watch, dest, make, ram_hash

WRITER = "random-writer,rate=2000,wss=1M"


def pair(machines: list[Machine]) -> tuple[Machine, Machine, str, Callable[[], None]]:
    """A source with return-path and switchover-ack on, its destination, and a hold on the
    destination's ACK (call it to release)."""
    dst, uri = dest(machines, config_table=TABLE_11_1)
    src = make(machines, config_table=TABLE_11_1, workload=WRITER)
    src.set_capabilities({"return-path": True})
    src.set_capabilities({"switchover-ack": True})
    incoming = dst._incoming
    assert isinstance(incoming, IncomingMigration)
    return src, dst, uri, incoming.switchover.hold()


def test_the_source_iterates_until_the_ack_then_completes(machines: list[Machine]) -> None:
    src, dst, uri, release = pair(machines)
    watch = Watch(src)
    src.migrate(uri)
    # What is dirty fits the downtime long before 8 passes (1 MiB written of 32 MiB): only the
    # missing ACK keeps it going.
    watch.wait_event("MIGRATION_PASS", count=8)
    assert src.query_migrate().status.value == "active"
    assert src.query_status().status is RunState.RUNNING
    release()
    assert src.wait_migration(30).status.value == "completed"
    # The destination says completed before it sends the handshake's ACK.
    assert dst.query_migrate().status.value == "completed"
    assert ram_hash(dst) == ram_hash(src)


def test_a_cancel_ends_the_wait_for_the_ack(machines: list[Machine]) -> None:
    src, _dst, uri, _release = pair(machines)
    watch = Watch(src)
    src.migrate(uri)
    watch.wait_event("MIGRATION_PASS", count=3)
    src.migrate_cancel()
    assert src.wait_migration(10).status.value == "cancelled"
    assert src.query_status().status is RunState.RUNNING
    assert not [t for t in threading.enumerate() if t.name == "return_path"]  # the ACK's reader


def test_a_stopped_source_does_not_wait_for_the_ack(machines: list[Machine]) -> None:
    """QEMU's migration_can_switchover: nothing to wait for when the guest is not running."""
    src, dst, uri, _release = pair(machines)
    src.stop()
    src.migrate(uri)
    assert src.wait_migration(30).status.value == "completed"
    assert dst.query_migrate().status.value == "completed"
    assert dst.query_status().status is RunState.PAUSED  # it takes over the stopped state


def test_without_a_hold_the_destination_acks_at_once(machines: list[Machine]) -> None:
    """What QEMU 11.1 does with no device that needs the ACK, whether or not the destination
    has switchover-ack on itself (recorded: migrate_switchover_ack_src)."""
    dst, uri = dest(machines, config_table=TABLE_11_1)
    src = make(machines, config_table=TABLE_11_1, workload=WRITER)
    src.set_capabilities({"return-path": True})
    src.set_capabilities({"switchover-ack": True})
    src.migrate(uri)
    assert src.wait_migration(30).status.value == "completed"
    assert dst.query_migrate().status.value == "completed"


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (wire.json_record(wire.Rec.NACK, {"error": "no room here"}), "no room here"),
        (wire.json_record(wire.Rec.READY, {}), "the destination answered READY before its ACK"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "something that is not a qemu-hmp migration stream"),
    ],
    ids=["nack", "out-of-turn", "foreign"],
)
def test_a_destination_that_answers_something_else_fails_the_migration(
    machines: list[Machine], reply: bytes, error: str
) -> None:
    """A peer that answers the ACK's place with a refusal or anything else: failed with what
    it said (or that it is not a qemu-hmp destination), and the guest runs on here."""
    server = socket.create_server(("127.0.0.1", 0))
    drained = threading.Event()

    def destination() -> None:
        conn, _ = server.accept()
        # The source resets the connection when it closes with the rest of a foreign reply unread.
        with conn, contextlib.suppress(ConnectionResetError):
            conn.sendall(reply)
            while conn.recv(1 << 20):  # reads the stream, so the source never blocks on it
                pass
        drained.set()

    thread = threading.Thread(target=destination, daemon=True)
    thread.start()
    src = make(machines, config_table=TABLE_11_1, workload=WRITER)
    src.set_capabilities({"return-path": True})
    src.set_capabilities({"switchover-ack": True})
    src.migrate(f"tcp:127.0.0.1:{server.getsockname()[1]}")
    info = src.wait_migration(30)
    assert info.status.value == "failed"
    assert info.error_desc is not None and error in info.error_desc
    assert src.query_status().status is RunState.RUNNING
    assert drained.wait(10)
    thread.join(10)
    server.close()


def test_postcopy_waits_for_the_ack_too(machines: list[Machine]) -> None:
    """QEMU's postcopy_start needs can_switchover as the completion does: asked for at once
    (all of RAM still to send), postcopy starts only after the ACK, then it completes."""
    dst, uri = dest(machines, config_table=TABLE_11_1)
    dst.set_capabilities({"postcopy-ram": True})
    src = make(machines, config_table=TABLE_11_1, workload="random-writer,rate=50000,wss=16M")
    src.set_capabilities({"return-path": True, "postcopy-ram": True})
    src.set_capabilities({"switchover-ack": True})
    src.set_parameters({"max-bandwidth": 16 << 20})  # 32 MiB: a pass takes 2 s
    incoming = dst._incoming
    assert isinstance(incoming, IncomingMigration)
    release = incoming.switchover.hold()
    watch = Watch(src)
    src.migrate(uri)
    src.migrate_start_postcopy()
    watch.wait_event("MIGRATION_PASS", count=2)  # the first pass is over: it went on in precopy
    assert "postcopy-active" not in watch.statuses()
    release()
    assert src.wait_migration(60).status.value == "completed"
