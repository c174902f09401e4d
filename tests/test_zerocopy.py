"""zero-copy-send: multifd packets go from guest RAM with MSG_ZEROCOPY (engine/zerocopy.py),
completions are reaped from the error queue, and loopback's copies are counted as QEMU 7.2
counts them; QEMU's checks and `info migrate` replayed from tests/data/qemu-7.2/zerocopy."""

from __future__ import annotations

import errno
import io
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hmp_replay import steps
from info_layout import layout
from test_machine import Watch, ram_hash

from engine.errors import MigrationError
from engine.guest import GuestRam
from engine.machine import Machine, MachineOptions
from engine.multifd import MultifdSender
from engine.wire import PageDigest
from engine.zerocopy import ZeroCopySocket
from hmp.monitor import Monitor

DATA = Path(__file__).parent / "data" / "qemu-7.2" / "zerocopy"
MiB = 1 << 20


def run(mon: Monitor, out: io.StringIO, command: str) -> str:
    out.seek(0), out.truncate()
    mon.execute(command)
    return out.getvalue()


def test_capability_checks_match_qemu() -> None:
    machine = Machine(MachineOptions(ram_size=4 * MiB))
    out = io.StringIO()
    mon = Monitor(machine, out, io.StringIO())
    try:
        for command, expected in steps((DATA / "checks.txt").read_text()):
            assert run(mon, out, command) == expected, command
    finally:
        machine.close()


@pytest.fixture
def pair() -> Iterator[tuple[Machine, Machine, Watch]]:
    dst = Machine(MachineOptions(ram_size=32 * MiB, incoming="tcp:127.0.0.1:0"))
    src = Machine(MachineOptions(ram_size=32 * MiB, workload="random", seed=12))
    dst.set_capabilities({"multifd": True, "events": True})
    watch = Watch(dst)
    yield src, dst, watch
    src.close()
    dst.close()


def test_zero_copy_migration_matches_qemu_and_counts_loopbacks_copies(
    pair: tuple[Machine, Machine, Watch],
) -> None:
    src, dst, watch = pair
    address = dst.query_migrate().socket_address
    assert address is not None
    port = address[0].rsplit(":", 1)[1]
    out = io.StringIO()
    mon = Monitor(src, out, io.StringIO())
    for command, expected in steps((DATA / "source.txt").read_text()):
        if command == "info migrate":
            src.wait_migration(60)
            ours = run(mon, out, command)
            assert layout(ours) == layout(expected)
            continue
        assert run(mon, out, command.replace("{port}", port)) == expected, command
    watch.wait_status("completed")
    assert ram_hash(src) == ram_hash(dst)
    ram = src.query_migrate().ram
    assert ram is not None
    # Loopback hands the pages to the receiving socket: the kernel copies every send, so each
    # channel's flush at a sync after packets saw a copy (QEMU 7.2 counted 7 here); a flush
    # with no packet since the last one has nothing to count (the test below).
    assert ram.dirty_sync_missed_zero_copy > 0


def test_buffers_are_held_until_completed_and_a_flush_counts_once() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname()[:2])
    peer, _ = server.accept()
    received = bytearray()
    reader = threading.Thread(
        target=lambda: [received.extend(c) for c in iter(lambda: peer.recv(1 << 20), b"")]
    )
    reader.start()
    try:
        zc = ZeroCopySocket(client)
        page = bytearray(b"A" * 4096)
        assert zc.send([b"head", memoryview(page)]) == 4100
        assert zc.pending == 0 or zc.pending == len(zc._held)  # held while in flight
        assert zc.flush() is True  # loopback: the kernel copied
        assert zc.pending == 0 and not zc._held  # every buffer released
        assert zc.flush() is False  # nothing since: no fallback to count
        page[:] = b"B" * 4096  # reusable now: what was sent stays sent
    finally:
        client.close()
        reader.join(10)
        peer.close()
        server.close()
    assert received == b"head" + b"A" * 4096


class _NoLockedMemorySocket(socket.socket):
    """A connected socket whose zero-copy sends meet ENOBUFS, as past RLIMIT_MEMLOCK."""

    def sendmsg(self, *args: object, **kwargs: object) -> int:
        raise OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))


def test_enobufs_fails_the_channels_with_qemus_text() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    sock = _NoLockedMemorySocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.connect(server.getsockname()[:2])
    peer, _ = server.accept()
    ram = GuestRam(4 * MiB)
    ram.page_array[:8] = 0x5A  # non-zero pages: they go in a packet
    sender = MultifdSender(
        ram, PageDigest(ram.pages), [sock], "none", 1, lambda _b, _p: None, zero_copy=True
    )
    try:
        sender.queue(np.arange(8, dtype=np.intp))
        with pytest.raises(MigrationError) as raised:
            sender.sync()
        # QEMU 7.2's io/channel-socket.c: error_setg_errno(errp, ENOBUFS, NO_MEMORY)
        assert raised.value.desc == (
            "Process can't lock enough memory for using MSG_ZEROCOPY: No buffer space available"
        )
    finally:
        sender.close()
        peer.close()
        server.close()
