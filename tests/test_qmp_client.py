"""The harness's QMP client: against QEMU 7.2's recorded bytes, qemu-hmp's server, and peers
that misbehave; and Endpoint's QMP socket (a private one, and `quit` at close)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from engine.machine import MachineOptions
from hmp.harness import Endpoint, EndpointError
from hmp.harness.qmp_client import (
    QmpClient,
    QmpClientError,
    QmpCommandError,
    QmpConnectionError,
    QmpTimeout,
    listening_uri,
    socket_uri,
)
from tests.qmp_helpers import endpoint, load

GREETING = {"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}}, "capabilities": []}}
Script = Callable[[socket.socket, "Lines"], None]


class Lines:
    """The requests a fake peer reads, one JSON line at a time."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn, self.buf = conn, b""

    def next(self) -> dict[str, Any] | None:
        while b"\n" not in self.buf:
            chunk = self.conn.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return dict(json.loads(line))


def send(conn: socket.socket, msg: dict[str, Any]) -> None:
    conn.sendall(json.dumps(msg).encode() + b"\r\n")


@contextmanager
def peer(tmp_path: Path, script: Script) -> Iterator[str]:
    """A unix socket whose one connection runs ``script``; its path. Errors fail the test."""
    path = str(tmp_path / "peer.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    errors: list[BaseException] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            try:
                script(conn, Lines(conn))
            except BaseException as exc:  # shown by the test, not lost in the thread
                errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        thread.join(10)
        server.close()
    assert not thread.is_alive() and not errors, errors


def negotiated(conn: socket.socket, lines: Lines) -> None:
    send(conn, GREETING)
    request = lines.next()
    assert request is not None and request["execute"] == "qmp_capabilities"
    send(conn, {"return": {}, "id": request["id"]})


# -- QEMU 7.2, recorded (tests/data/qmp/record.py client) ----------------------------------------


def replay_qemu(conn: socket.socket, lines: Lines) -> None:
    """Serve the recorded session: each request must be the recorded one; QEMU's lines follow."""
    for record in load("client")[1:]:
        if "send" in record:
            assert lines.next() == json.loads(record["send"])
        elif "recv" in record:
            conn.sendall(record["raw"].encode() + b"\r\n")
    assert record == {"closed": True}


def test_client_drives_qemu_7_2(tmp_path: Path) -> None:
    with peer(tmp_path, replay_qemu) as path, QmpClient(path) as client:
        assert client.greeting["QMP"]["version"]["qemu"]["major"] == 7
        assert client.execute("query-status") == {
            "status": "inmigrate", "singlestep": False, "running": False,
        }  # fmt: skip
        assert client.execute("query-migrate") == {}
        # QEMU announces `setup` before its reply: kept as an event, not taken for the reply.
        assert client.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"}) == {}
        assert [e["event"] for e in client.events] == ["MIGRATION"]
        assert listening_uri(client.execute("query-migrate")) == "tcp:127.0.0.1:40459"
        with pytest.raises(QmpCommandError) as err:
            client.execute("no-such-command")
        assert (err.value.cls, err.value.desc) == (
            "CommandNotFound", "The command no-such-command has not been found",
        )  # fmt: skip
        with pytest.raises(QmpCommandError, match=r"Parameter 'x' is unexpected \(GenericError\)"):
            client.execute("migrate-set-parameters", {"x": 1})
        assert client.execute("quit") == {}  # after QEMU's SHUTDOWN event
        assert client.events[-1]["event"] == "SHUTDOWN"
        with pytest.raises(QmpConnectionError, match="the peer closed the connection"):
            client.execute("query-status")


# -- qemu-hmp's own server ---------------------------------------------------------------------


def test_client_drives_qemu_hmp(tmp_path: Path) -> None:
    with endpoint(tmp_path, MachineOptions(ram_size=4 << 20)) as _server:
        with QmpClient(str(tmp_path / "qmp.sock")) as client:
            assert client.execute("query-status")["status"] == "running"
            assert client.execute("stop") == {}
            assert [e["event"] for e in client.events] == ["STOP"]
            paused = client.poll("query-status", lambda s: s["status"] == "paused", 10)
            assert paused == {"running": False, "singlestep": False, "status": "paused"}
            with pytest.raises(QmpTimeout) as err:
                client.poll("query-status", lambda s: s["status"] == "running", 0.1, 0.01)
            assert err.value.last == paused


# -- peers that misbehave ----------------------------------------------------------------------


def test_nothing_listening_is_a_clear_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.sock")
    with pytest.raises(QmpConnectionError, match=f"QMP {missing}: cannot connect: No such file"):
        QmpClient(missing)
    bound = socket.socket(socket.AF_UNIX)
    bound.bind(str(tmp_path / "bound.sock"))  # bound, never listening: refused
    with bound, pytest.raises(QmpConnectionError, match="cannot connect: Connection refused"):
        QmpClient(str(tmp_path / "bound.sock"))


def test_a_peer_that_never_answers_times_out(tmp_path: Path) -> None:
    answered = threading.Event()

    def silent(conn: socket.socket, lines: Lines) -> None:
        negotiated(conn, lines)
        assert lines.next() is not None  # read, never answered
        answered.wait(10)  # until the client has given up

    with peer(tmp_path, silent) as path, QmpClient(path) as client:
        started = time.monotonic()
        with pytest.raises(QmpTimeout, match="no answer within the deadline"):
            client.execute("query-status", timeout=0.2)
        assert time.monotonic() - started < 5
        answered.set()


def test_a_peer_that_hangs_up_mid_request(tmp_path: Path) -> None:
    def hangs_up(conn: socket.socket, lines: Lines) -> None:
        negotiated(conn, lines)
        lines.next()

    with peer(tmp_path, hangs_up) as path, QmpClient(path) as client:
        with pytest.raises(QmpConnectionError, match="the peer closed the connection"):
            client.execute("query-status")


def test_a_stale_reply_is_dropped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def stale(conn: socket.socket, lines: Lines) -> None:
        negotiated(conn, lines)
        request = lines.next()
        assert request is not None
        send(conn, {"return": {"status": "stale"}, "id": 99})  # a request that timed out
        send(conn, {"return": {"status": "running"}, "id": request["id"]})

    with peer(tmp_path, stale) as path, QmpClient(path) as client:
        with caplog.at_level(logging.WARNING, "hmp.harness.qmp_client"):
            assert client.execute("query-status") == {"status": "running"}
    assert "dropped a reply to another request" in caplog.text


@pytest.mark.parametrize(
    ("first", "error"),
    [(b'{"return": {}}\r\n', "expected a greeting"), (b"Hello\r\n", "not JSON: b'Hello")],
)
def test_a_peer_that_is_not_qmp(tmp_path: Path, first: bytes, error: str) -> None:
    with peer(tmp_path, lambda conn, _lines: conn.sendall(first)) as path:
        with pytest.raises(QmpClientError, match=error):
            QmpClient(path)


# -- addresses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "uri"),
    [
        ({"port": "4444", "ipv4": True, "host": "127.0.0.1", "type": "inet"}, "tcp:127.0.0.1:4444"),
        ({"port": "4444", "ipv6": True, "host": "::1", "type": "inet"}, "tcp:[::1]:4444"),
        ({"path": "/tmp/m.sock", "type": "unix"}, "unix:/tmp/m.sock"),
    ],
)
def test_socket_address_as_uri(address: dict[str, Any], uri: str) -> None:
    assert socket_uri(address) == uri


def test_not_listening_and_unknown_addresses_are_errors() -> None:
    with pytest.raises(ValueError, match="not listening for an incoming migration"):
        listening_uri({"status": "active"})
    with pytest.raises(ValueError, match="no migration URI for the socket address"):
        socket_uri({"type": "vsock", "cid": "3", "port": "1"})


# -- Endpoint with QMP -------------------------------------------------------------------------


def test_endpoint_reads_over_qmp_and_quits_there_at_close() -> None:
    with Endpoint(["qemu-hmp", "-m", "4M", "-incoming", "tcp:127.0.0.1:0"], qmp=True) as dst:
        dst.wait_ready(30)
        uri = dst.listening_uri()
        # The same address `info migrate` prints, read as QEMU's tools read it.
        assert f"socket address: [\n\t{uri}\n]\n" in dst.execute("info migrate", 10)
        socket_dir = Path(dst.qmp.path).parent
        assert dst.close() == 0  # QMP `quit`: with -qmp the end of input does not end it
        assert not socket_dir.exists()  # its private directory went with it


def test_endpoint_without_qmp_says_so() -> None:
    with Endpoint(["qemu-hmp", "-m", "4M"], name="plain") as ep:
        ep.wait_ready(30)
        with pytest.raises(EndpointError, match="plain: no QMP session"):
            ep.qmp.execute("query-status")
        assert "-qmp" not in ep.proc.args
