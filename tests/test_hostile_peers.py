"""A destination Machine against peers: one migration's connections only, hostile clients, and
a real stream corrupted on the way (rejected: destination failed and listening again, source
failed with the guest running, and a clean retry completes)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest
from test_machine import Watch, dest, make, migrate
from zlib_ng import zlib_ng

from engine.compression import CODECS, Codec, Compress
from engine.state import MigrationStatus, RunState

MiB = 1 << 20


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = 20) -> None:
    """Poll state another thread changes and that has no event of its own."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.005)


def refused(uri: str) -> bool:
    host, port = uri.removeprefix("tcp:").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("channels", [0, 3], ids=["main-only", "multifd-3"])
def test_listener_closes_once_the_migration_is_connected(machines, channels):
    dst, uri = dest(machines)
    src = make(machines, workload="random", seed=2)
    if channels:
        for m in (src, dst):
            m.set_capabilities({"multifd": True})
            m.set_parameters({"multifd-channels": channels})
    src.set_parameters({"max-bandwidth": 16 * MiB})
    assert uri.startswith("tcp:127.0.0.1:")
    src.migrate(uri)
    # The destination closes its listener once it has read the configuration (and, with
    # multifd, accepted every channel); a probe before that would be taken as a connection.
    incoming = dst._incoming
    assert incoming is not None
    wait_until("the destination's listener closed", lambda: incoming.listener.closed)
    # The source says active once its own setup is over, which may come after the
    # destination has every multifd channel (as in QEMU): wait for setup to end.
    wait_until(
        "the source's setup over", lambda: src.query_migrate().status is not MigrationStatus.SETUP
    )
    assert src.query_migrate().status is MigrationStatus.ACTIVE  # while it migrates
    assert refused(uri)
    src.set_parameters({"max-bandwidth": 0})
    assert src.wait_migration(30).status is MigrationStatus.COMPLETED
    assert refused(uri)


def test_garbage_client_fails_the_destination_which_listens_again(machines):
    dst, uri = dest(machines)
    watch = Watch(dst)
    host, port = uri.removeprefix("tcp:").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        watch.wait_status("failed")
    info = dst.query_migrate()
    assert info.status is MigrationStatus.FAILED and info.socket_address == (uri,)
    assert info.error_desc is not None and "not a qemu-hmp migration stream" in info.error_desc
    assert dst.query_status().status is RunState.INMIGRATE
    migrate(make(machines, seed=3), dst, uri)  # a real source after it is served


class CorruptingProxy(threading.Thread):
    """Relays one connection both ways, flipping one byte of the source's stream at ``at``."""

    def __init__(self, target: str, at: int) -> None:
        super().__init__(daemon=True)
        host, port = target.removeprefix("tcp:").rsplit(":", 1)
        self.target = (host, int(port))
        self.at = at
        self.server = socket.create_server(("127.0.0.1", 0))
        self.uri = f"tcp:127.0.0.1:{self.server.getsockname()[1]}"

    def run(self) -> None:
        with self.server:
            client, _ = self.server.accept()
        upstream = socket.create_connection(self.target)
        back = threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True)
        back.start()
        self._pipe(client, upstream, self.at)
        back.join(30)
        client.close()
        upstream.close()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, flip_at: int | None) -> None:
        seen = 0
        try:
            while data := src.recv(1 << 16):
                if flip_at is not None and seen <= flip_at < seen + len(data):
                    data = bytearray(data)
                    data[flip_at - seen] ^= 0x01
                seen += len(data)
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def test_corrupted_page_is_rejected_end_to_end(machines):
    dst, uri = dest(machines)
    dst_watch = Watch(dst)
    src = make(machines, workload="random", seed=4)  # every page raw: byte 64 Ki is page data
    proxy = CorruptingProxy(uri, at=64 * 1024)
    proxy.start()
    src.migrate(proxy.uri)
    info = src.wait_migration(30)
    assert info.status is MigrationStatus.FAILED
    assert info.error_desc == "RAM digest mismatch: destination memory differs from the source"
    assert src.query_status().status is RunState.RUNNING
    dst_watch.wait_status("failed")
    failed = dst.query_migrate()
    assert failed.status is MigrationStatus.FAILED and failed.socket_address == (uri,)
    assert dst.query_status().status is RunState.INMIGRATE
    proxy.join(30)
    # Retrying from scratch needs a source that has not migrated: this one never left running.
    migrate(src, dst, uri)


def deflated(data: bytes) -> bytes:
    """A raw-deflate segment framed as the engine frames a page."""
    stream = zlib_ng.compressobj(9, zlib_ng.DEFLATED, -15)
    return stream.compress(data) + stream.flush(zlib_ng.Z_FULL_FLUSH)


@pytest.mark.parametrize(
    "bad",
    [
        b"\xab" * 64,  # garbage
        deflated(bytes(1 << 20)),  # a bomb: 1 MiB of zeros in ~1 KiB
        deflated(b"x" * 100),  # inflates to the wrong size
    ],
    ids=["garbage", "bomb", "wrong-size"],
)
def test_bad_compressed_page_from_a_real_source(machines, monkeypatch, bad):
    """The source's compressor sends one bad page: the destination rejects the stream, the
    source fails with its guest running, and a clean migration then completes."""
    real = CODECS["zlib"]
    tampered = threading.Event()

    def compressor(level: int) -> Compress:
        compress = real.compressor(level)

        def corrupt_first(ram: memoryview, pages: list[int]) -> tuple[bytes, list[int], list[int]]:
            payload, sizes, crcs = compress(ram, pages)
            if not tampered.is_set():
                tampered.set()
                payload, sizes = bad + payload[sizes[0] :], [len(bad), *sizes[1:]]
            return payload, sizes, crcs

        return corrupt_first

    monkeypatch.setitem(CODECS, "zlib", Codec("zlib", compressor, real.decompressor))
    dst, uri = dest(machines)
    dst_watch = Watch(dst)
    src = make(machines, seed=5)
    for m in (src, dst):
        m.set_capabilities({"compress": True})
    src.migrate(uri)
    info = src.wait_migration(30)
    assert tampered.is_set()
    assert info.status is MigrationStatus.FAILED
    assert info.error_desc is not None and "decompress data failed" in info.error_desc  # the NACK
    assert src.query_status().status is RunState.RUNNING
    dst_watch.wait_status("failed")
    failed = dst.query_migrate()
    assert failed.status is MigrationStatus.FAILED
    assert failed.error_desc is not None and "decompress data failed" in failed.error_desc
    assert dst.query_status().status is RunState.INMIGRATE
    monkeypatch.undo()
    migrate(src, dst, uri)
