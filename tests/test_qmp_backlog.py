"""A QMP client that does not read: what the server queues for it stays bounded.

QEMU stops reading a client's requests while its request queue is full; qemu-hmp's server
stops reading once `REPLY_BACKLOG` bytes of replies wait for the client, so a client that
only writes cannot grow it, and hangs up on one that leaves `EVENT_BACKLOG` bytes of events
unread (events cannot wait: the engine raises them). Others are served meanwhile, and what
was queued is released when the client goes.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from engine.machine import MachineOptions
from hmp.qmp import server as qmp
from hmp.qmp.server import REPLY_BACKLOG, QmpServer
from tests.qmp_helpers import TIMEOUT, RawClient, endpoint

PAUSED = MachineOptions(ram_size=16 << 20, start_paused=True)
NEG = '{"execute": "qmp_capabilities"}'
REQUEST = b'{"execute": "query-migrate-parameters"}'
REQUESTS = 100_000  # 4 MB of requests, ~125 MB of replies if they were all queued


def _negotiated(server: QmpServer) -> RawClient:
    client = RawClient(server.spec.address.path)
    assert client.read() is not None  # the greeting: the session exists from here on
    client.send(NEG)
    assert client.read() == {"return": {}}
    return client


def _flood(client: RawClient, data: bytes) -> threading.Thread:
    """Write ``data`` from a thread: it blocks once the server stops reading."""

    def write() -> None:
        try:
            client.sock.sendall(data)
        except OSError:
            pass  # the test hung up under it

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_a_client_that_never_reads_is_held_and_released(tmp_path: Path) -> None:
    with endpoint(tmp_path, PAUSED) as server:
        flood = _negotiated(server)
        (session,) = server.sessions()
        flood.send(REQUEST.decode())
        reply = flood.line()  # the size of one reply
        assert reply is not None and reply.startswith('{"return": {')
        bound = REPLY_BACKLOG + len(reply) + 2  # the limit, and the reply that crossed it
        writer = _flood(flood, REQUEST * REQUESTS)
        assert session.held.wait(TIMEOUT)  # the reader waits for the client to read
        assert session.backlog <= bound

        other = _negotiated(server)
        other.send('{"execute": "query-status", "id": 1}')
        assert other.read(TIMEOUT) == {
            "return": {"status": "prelaunch", "singlestep": False, "running": False},
            "id": 1,
        }
        assert session.backlog <= bound
        # Still blocked: answering all would queue ~125 MB, and the server reads no further
        # than 1 MiB of replies, one 64 KiB read and the kernel's buffers allow.
        assert writer.is_alive()

        flood.sock.shutdown(socket.SHUT_RDWR)  # the flooding client leaves
        writer.join(TIMEOUT)
        flood.close()
        assert session.ended.wait(TIMEOUT)
        assert session.backlog == 0  # what it left unread is released
        assert session not in server.sessions()
        other.close()


def test_a_client_that_leaves_events_unread_is_hung_up_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qmp, "EVENT_BACKLOG", 64 << 10)
    with endpoint(tmp_path, PAUSED) as server:
        deaf = _negotiated(server)
        (session,) = server.sessions()
        for _ in range(64 << 10):  # up to 64 MiB of events; the kernel's buffers hold far less
            server.machine.events.emit("X-TEST", {"pad": "x" * 1000})
            if session.ended.is_set():
                break
        assert session.ended.wait(TIMEOUT)
        assert session.backlog == 0
        deaf.close()
        other = _negotiated(server)  # the server goes on
        other.send('{"execute": "query-name"}')
        assert other.read(TIMEOUT) == {"return": {}}
        other.close()
