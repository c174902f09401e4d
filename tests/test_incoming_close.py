"""IncomingMigration.close() against the run thread: once close() returned, the migration
cannot complete, whichever window the close fell in (the windows are forced open here)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from streams import guest, record_stream
from test_machine import make

from engine import wire
from engine.destination import IncomingMigration
from engine.events import EventBus
from engine.guest import PAGE_SIZE, GuestRam
from engine.machine import Machine
from engine.state import MigrationStatus, RunState
from engine.transport import Address, Listener
from engine.vm import Vm

MiB = 1 << 20
SIZE = 4 * MiB


class GatedListener(Listener):
    """Holds the first accepted connection until released: the window between accepting a
    connection and the migration owning it, open for as long as the test needs."""

    def __init__(self) -> None:
        super().__init__(Address("tcp", "127.0.0.1", 0))
        self.accepted = threading.Event()
        self.release = threading.Event()

    def accept(self, stop: threading.Event, timeout: float | None = None) -> Any:
        conn = super().accept(stop, timeout)
        if conn is not None and not self.accepted.is_set():
            self.accepted.set()
            assert self.release.wait(30)
        return conn


class Destination:
    """An IncomingMigration on its own, with hooks where a Machine would have its own."""

    def __init__(self, listener: Listener, on_config: Callable[[], None] = lambda: None) -> None:
        self.vm = Vm(RunState.INMIGRATE, EventBus())
        self.statuses: list[str] = []
        self.failed: list[str] = []
        local = wire.StreamConfig(PAGE_SIZE, SIZE, compress=False, compress_method="zlib")

        def config() -> tuple[wire.StreamConfig, int]:
            on_config()
            return local, 1

        self.mig = IncomingMigration(
            listener,
            GuestRam(SIZE, huge=False),
            self.vm,
            config,
            lambda: True,
            lambda _mig, reason: self.failed.append(reason),
            lambda _name, data: self.statuses.append(data["status"]),
        )
        self.mig.start()


@pytest.fixture
def source(machines: list[Machine]) -> Iterator[Machine]:
    yield make(machines, ram_size=SIZE, workload="random", seed=11)


def test_close_between_accept_and_adoption_is_not_lost(source: Machine) -> None:
    listener = GatedListener()
    dst = Destination(listener)
    source.migrate(listener.addr.uri())
    assert listener.accepted.wait(30)
    dst.mig.close()  # while the run thread holds a connection it does not own yet
    listener.release.set()
    assert dst.mig.wait(30)
    assert dst.mig.status is MigrationStatus.NONE and dst.statuses == []
    assert dst.vm.state is RunState.INMIGRATE and dst.failed == []
    info = source.wait_migration(30)
    assert info.status is MigrationStatus.FAILED
    assert source.query_status().status is RunState.RUNNING


def test_close_after_the_stream_arrived_is_not_lost() -> None:
    """The close comes once the whole stream sits in the socket (a read after shutdown still
    returns it): the loader reads it to the end and the digest matches, yet the migration
    must not complete, for close() returned before the verdict."""
    stream = record_stream(guest(SIZE))
    listener = Listener(Address("tcp", "127.0.0.1", 0))
    sent = threading.Event()

    def close_once_sent() -> None:
        assert sent.wait(30)
        dst.mig.close()

    dst = Destination(listener, on_config=close_once_sent)
    with socket.create_connection((listener.addr.host, int(listener.addr.port))) as peer:
        peer.sendall(stream)
        sent.set()
        assert dst.mig.wait(30)
    info = dst.mig.info()
    assert info.status is MigrationStatus.FAILED and dst.statuses == ["active", "failed"]
    assert info.error_desc == "incoming migration closed before it completed"
    assert dst.vm.state is RunState.INMIGRATE
    assert dst.failed == []  # a closed destination does not listen again
