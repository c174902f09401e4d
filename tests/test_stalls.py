"""Stalls: a peer that never delivers its setup is dropped after a bound, and a source that
stops making progress says so once (QEMU has no stall status; `info migrate` is unchanged)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from reports import Reports
from test_machine import Watch, make, migrate

from engine import wire
from engine.machine import Machine, MachineOptions
from engine.multifd import Hello
from engine.source import StallWatch
from engine.state import MigrationStatus, RunState

MiB = 1 << 20
SETUP_S = 0.3  # the destination's setup bound, shortened
TIMED_OUT = f"the migration stream's header and configuration did not arrive within {SETUP_S:g} s"


@pytest.fixture
def destination(machines: list[Machine]) -> Iterator[tuple[Machine, Reports, tuple[str, int]]]:
    reports = Reports()
    opts = MachineOptions(ram_size=8 * MiB, incoming="tcp:127.0.0.1:0", setup_timeout_s=SETUP_S)
    dst = Machine(opts, notify=reports)
    dst.set_capabilities({"events": True})
    machines.append(dst)
    address = dst.query_migrate().socket_address
    assert address is not None
    host, port = address[0].removeprefix("tcp:").rsplit(":", 1)
    yield dst, reports, (host, int(port))


def assert_dropped_and_listening(dst: Machine, reports: Reports, machines: list[Machine]) -> None:
    """Failed with the timeout, said so once, still waiting for its guest, and a real source
    then migrates into it on the same address."""
    reports.wait()
    assert reports.lines == [f"load of migration failed: {TIMED_OUT}"]
    info = dst.query_migrate()
    assert info.status is MigrationStatus.FAILED and info.error_desc == TIMED_OUT
    assert dst.query_status().status is RunState.INMIGRATE
    assert info.socket_address is not None
    migrate(make(machines, ram_size=8 * MiB, seed=41), dst, info.socket_address[0])


def test_a_silent_peer_is_dropped_and_the_destination_listens_again(destination, machines):
    dst, reports, address = destination
    watch = Watch(dst)
    with socket.create_connection(address):
        watch.wait_status("active")  # as QEMU says while it waits (tests/data/qemu-7.2/peers)
        watch.wait_status("failed")
    assert_dropped_and_listening(dst, reports, machines)


def test_a_trickling_peer_is_dropped_though_bytes_keep_coming(destination, machines):
    """A slowloris: a valid header, a configuration announced at 1000 bytes, then one byte
    every 50 ms. Each byte would renew a per-read timeout; the bound is on the whole setup."""
    dst, reports, address = destination
    watch = Watch(dst)
    failed = threading.Event()
    dst.events.subscribe(lambda _n, data: data.get("status") == "failed" and failed.set())
    with socket.create_connection(address) as peer:
        peer.sendall(wire.header() + wire.RECORD.pack(wire.Rec.CONFIG, 1000) + b"{")
        try:
            while not failed.wait(0.05):  # the peer's pace, not a wait for a thread
                peer.sendall(b" ")
        except OSError:
            pass  # dropped: the destination broke the connection
        watch.wait_status("failed")
    assert_dropped_and_listening(dst, reports, machines)


def test_a_multifd_channel_that_never_says_hello_is_within_the_bound(destination, machines):
    """The bound covers the channels too: the main stream is fine, one channel stays silent."""
    dst, reports, address = destination
    dst.set_capabilities({"multifd": True})
    config = wire.StreamConfig(
        4096, 8 * MiB, False, "zlib", multifd_channels=2, session="ab" * 16
    ).to_json()
    # All three connect before any byte is sent, so all three are this migration's.
    main, one, _silent = peers = [socket.create_connection(address) for _ in range(3)]
    try:
        main.sendall(wire.header() + wire.json_record(wire.Rec.CONFIG, config))
        one.sendall(Hello(0, bytes.fromhex("ab" * 16)).encode())
        reports.wait()
    finally:
        for peer in peers:
            peer.close()
    dst.set_capabilities({"multifd": False})
    assert_dropped_and_listening(dst, reports, machines)


def test_a_source_whose_peer_never_reads_warns_once(machines):
    """Socket buffers fill, the source blocks in its send: one warning, `info migrate` still
    QEMU's `active`, and a cancel still ends it."""
    reports = Reports()
    server = socket.create_server(("127.0.0.1", 0))
    opts = MachineOptions(ram_size=32 * MiB, workload="random", seed=42, stall_warning_s=0.2)
    src = Machine(opts, notify=reports)
    machines.append(src)
    with server:
        src.migrate(f"tcp:127.0.0.1:{server.getsockname()[1]}")
        conn, _ = server.accept()  # accepted, never read
        with conn:
            reports.wait()
            assert reports.lines == ["warning: migration: no progress for 0.2 s"]
            assert src.query_migrate().status is MigrationStatus.ACTIVE
            src.migrate_cancel()
            assert src.wait_migration(10).status is MigrationStatus.CANCELLED
    # As QEMU 7.2 (tests/data/qemu-7.2/peers/stalled_source.txt): the broken send is reported.
    assert reports.lines[1:] == ["Unable to write to socket: Broken pipe"]
    assert src.query_status().status is RunState.RUNNING


class Progress:
    """A byte counter the watch reads: constant, then moving, then constant again. Each read
    is one of the watch's checks, so ``checks`` says how often it looked."""

    def __init__(self, moving: range, end: int) -> None:
        self._moving, self._end = moving, end
        self._sent, self.checks = 0, 0
        self.done = threading.Event()

    def __call__(self) -> int:
        self.checks += 1
        if self.checks in self._moving:
            self._sent += 1
        if self.checks >= self._end:
            self.done.set()
        return self._sent


def test_the_watch_warns_once_per_stall_and_only_while_active() -> None:
    """Reads 1-20 unchanged (a stall of ≥ 19 checks, 4 make the bound), 21-25 moving, 26-45
    unchanged again: two warnings, one per stall, however long each lasts."""
    progress, reports = Progress(range(21, 26), end=45), Reports()
    watch = StallWatch(progress, lambda: True, 0.04, reports)
    watch.start()
    assert progress.done.wait(30)
    watch.end()
    assert reports.lines == ["warning: migration: no progress for 0.04 s"] * 2


def test_the_watch_is_silent_while_not_active() -> None:
    progress, reports = Progress(range(0), end=20), Reports()
    watch = StallWatch(progress, lambda: False, 0.04, reports)
    watch.start()
    assert progress.done.wait(30)
    watch.end()
    assert reports.lines == []
