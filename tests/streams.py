"""Test helpers: record a real migration stream, and feed any bytes to a destination."""

from __future__ import annotations

import socket
import threading

from engine import wire
from engine.destination import StreamLoader
from engine.events import EventBus
from engine.guest import PAGE_SIZE, GuestRam
from engine.params import MigrationConfig
from engine.source import OutgoingMigration, OutgoingSettings
from engine.state import RunState
from engine.transport import Address, Listener
from engine.vm import Vm
from engine.workload import Workload

MiB = 1 << 20


def settings(
    compress: bool = False,
    method: str = "zlib",
    level: int = 1,
    threads: int = 2,
    wait: bool = True,
) -> OutgoingSettings:
    """The table's defaults (as `migrate` would read them) with these overrides."""
    config = MigrationConfig()
    config.set_capabilities({"compress": compress}, incoming=False)
    config.set_parameters(
        {
            "x-compress-method": method,
            "compress-level": level,
            "compress-threads": threads,
            "compress-wait-thread": wait,
        }
    )
    return OutgoingSettings.from_config(config)


def guest(size: int = 8 * MiB, workload: str = "idle", seed: int = 7) -> GuestRam:
    ram = GuestRam(size)
    Workload(workload, seed).fill(ram)
    return ram


def record_stream(
    ram: GuestRam,
    opts: OutgoingSettings | None = None,
    *,
    writer: str | None = None,
    max_bandwidth: int = 0,
) -> bytes:
    """Migrate ``ram`` for real into a capturing peer; returns every byte the source sent.

    With ``writer`` (a workload spec) the guest runs and dirties pages while it migrates.
    """
    listener = Listener(Address("tcp", "127.0.0.1", "0"))
    chunks: list[bytes] = []

    def capture() -> None:
        conn = listener.accept(threading.Event())
        assert conn is not None
        with conn:
            chunks.append(bytes(wire.read_exact(conn, wire.HEADER.size) or b""))
            while (head := wire.read_record_head(conn)) is not None:
                kind, length = head
                body = wire.read_body(conn, length, wire.MAX_RECORD)
                chunks.append(wire.RECORD.pack(kind, length) + bytes(body))
                if kind == wire.Rec.DONE:  # the completion handshake: READY, GO, ACK
                    conn.sendall(wire.json_record(wire.Rec.READY, {}))
                    assert wire.read_record(conn, wire.MAX_JSON) == (wire.Rec.GO, b"{}")
                    conn.sendall(wire.json_record(wire.Rec.ACK, {}))
                    break

    peer = threading.Thread(target=capture)
    peer.start()
    vm = Vm(RunState.RUNNING if writer else RunState.PRELAUNCH, EventBus())
    workload = Workload(writer, 1) if writer else None
    if workload:
        workload.start(ram, vm.gate)
    mig = OutgoingMigration(
        listener.addr,
        ram,
        vm,
        opts or settings(),
        {
            "max-bandwidth": max_bandwidth,
            "downtime-limit": 300,
            "x-link-bandwidth": 0,
            "avail-switchover-bandwidth": 0,
        }.__getitem__,
        lambda _m: None,
        lambda _n, _d: None,
    )
    mig.start()
    assert mig.wait(30)
    if workload:
        workload.stop()
    peer.join(30)
    assert str(mig.status) == "completed", mig.info()
    return b"".join(chunks)


def load_stream(
    data: bytes, ram_size: int, *, compress: bool = False, method: str = "zlib", threads: int = 2
) -> tuple[RunState | Exception, GuestRam]:
    """Feed ``data`` to a real StreamLoader over a socket; returns its outcome and RAM."""
    ram = GuestRam(ram_size)
    config = wire.StreamConfig(PAGE_SIZE, ram_size, compress, method)
    loader = StreamLoader(ram, lambda: (config, threads), pristine=True)
    ours, theirs = socket.socketpair()

    def send() -> None:
        try:
            theirs.sendall(data)
            theirs.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the loader stopped reading: what a dead or rejecting peer looks like

    sender = threading.Thread(target=send)
    sender.start()
    try:
        outcome: RunState | Exception = loader.load(ours)
    except (wire.StreamError, OSError) as exc:
        outcome = exc
    finally:
        loader.close()
        ours.close()
        sender.join(10)
        theirs.close()
    return outcome, ram
