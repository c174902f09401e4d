"""Replay QEMU 7.2's monitor on a socket (tests/data/qemu-7.2/monitor_socket.json) against ours.

A plain socket client does what the recorded one did and must get QEMU's bytes exactly: it
reads as many bytes as QEMU sent (bounded by a timeout), so a missing byte fails by timeout
and an extra one fails the next comparison; a client QEMU sent nothing must have nothing
waiting, and one QEMU hung up on must see the end. Cases on a unix socket run the real
command line (``python -m hmp -monitor ...``: stdin, ``quit`` ending the process, the socket
file removed); tcp and telnet ones run in this process on a free port. Only the version in
the banner is normalised (QEMU 7.2.22 there, the 7.2.0 monitor we reproduce here).
Re-record with ``python tests/data/qemu-7.2/record_socket.py``.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import pytest

from engine.machine import Machine, MachineOptions
from hmp.monitor.commands import QEMU_VERSION
from hmp.monitor.socket import MonitorSocket, parse_monitor_spec
from tests.listening import wait_listening

DATA = json.loads((Path(__file__).parent / "data/qemu-7.2/monitor_socket.json").read_text())
CASES: dict[str, dict[str, Any]] = DATA["cases"]
TIMEOUT = 10.0
BANNER_VERSION = re.compile(r"QEMU 7\.2\.\d+ monitor")


def ours(recorded: str) -> bytes:
    """QEMU's recorded bytes as qemu-hmp must send them: the same, but our version."""
    return BANNER_VERSION.sub(f"QEMU {QEMU_VERSION} monitor", recorded).encode("latin-1")


def qemu_stderr(recorded: str, sock: str) -> str:
    return recorded.replace("qemu-system-x86_64: ", "qemu-hmp: ").replace("{sock}", sock)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    deadline = time.monotonic() + TIMEOUT
    while len(data) < size:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([sock], [], [], left)[0], f"only {data!r} came"
        chunk = sock.recv(size - len(data))
        assert chunk, f"the end came after {data!r}"
        data += chunk
    return data


def sees_the_end(sock: socket.socket) -> bool:
    if not select.select([sock], [], [], TIMEOUT)[0]:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:  # never accepted: the listener's close resets it, as QEMU's
        return True


def nothing_waiting(sock: socket.socket) -> bool:
    return not select.select([sock], [], [], 0)[0]


class Served(Protocol):
    def connect(self) -> socket.socket: ...


def replay(served: Served, case: dict[str, Any]) -> None:
    clients: dict[str, socket.socket] = {}
    try:
        for step in case["steps"]:
            name, action = step["client"], step["action"]
            if action == "connect":
                clients[name] = served.connect()
            elif action == "close":
                clients.pop(name).close()
            else:
                clients[name].sendall(action.encode("latin-1"))
            for client, sent in step["recv"].items():
                expected = ours(sent)
                assert read_exactly(clients[client], len(expected)) == expected, action
            for client in step.get("eof", []):
                assert sees_the_end(clients.pop(client)), (client, action)
            for client, sock in clients.items():
                assert client in step["recv"] or nothing_waiting(sock), (client, action)
    finally:
        for sock in clients.values():
            sock.close()


# -- the command line (unix sockets) --------------------------------------------------------
class Process:
    def __init__(self, case: dict[str, Any], tmp_path: Path) -> None:
        self.path = str(tmp_path / "mon.sock")
        spec = case["monitor"].format(sock=self.path)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hmp", "-m", "128", "-monitor", spec],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT dumps every thread
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(case.get("stdin", "").encode())
        self.proc.stdin.flush()  # and kept open: a monitor there would wait for more
        self.stderr = self._until_listening(spec)

    def _until_listening(self, spec: str) -> str:
        """With wait=on, the line saying so; else the socket listening."""
        assert self.proc.stderr is not None
        if "wait=off" not in spec:
            assert select.select([self.proc.stderr], [], [], TIMEOUT)[0]
            return self.proc.stderr.readline().decode()
        wait_listening([self.path], [self.proc], TIMEOUT)
        return ""

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(self.path)
        return sock

    def finish(self, expected_exit: int | None) -> tuple[int | None, bytes, bytes]:
        """The exit status (None when QEMU did not exit either: then we end it), stdout, the
        rest of stderr."""
        if expected_exit is None:
            self.proc.terminate()
        try:
            out, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # the threads' stacks, for the report
            raise AssertionError(self.proc.communicate()[1].decode(errors="replace")) from None
        return (self.proc.returncode if expected_exit is not None else None), out, err


UNIX_CASES = [name for name, case in CASES.items() if case["monitor"].startswith("unix:")]


@pytest.mark.parametrize("name", UNIX_CASES)
def test_unix_socket_like_qemu(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    process = Process(case, tmp_path)
    replayed = False
    try:
        assert process.stderr == qemu_stderr(case["stderr"], process.path)
        replay(process, case)
        replayed = True
    finally:
        # A replay that failed before its `quit` leaves a process with no reason to end:
        # end it (SIGTERM), rather than wait for it and report a hang that is not one.
        status, out, err = process.finish(case["exit"] if replayed else None)
    assert status == case["exit"]
    if case["exit"] is not None:
        assert (out, err) == (b"", b"")  # no stdio monitor, nothing else to say
        assert Path(process.path).exists() == case["sock_left"]


# -- in this process (tcp, telnet) ----------------------------------------------------------
class InProcess:
    def __init__(self, server: MonitorSocket) -> None:
        self.server = server

    def connect(self) -> socket.socket:
        addr = self.server.address
        return socket.create_connection((addr.host, int(addr.port)), timeout=TIMEOUT)


@contextmanager
def served(spec: str) -> Iterator[tuple[MonitorSocket, threading.Event]]:
    machine = Machine(MachineOptions(ram_size=16 << 20))
    quit = threading.Event()
    server = MonitorSocket(machine, parse_monitor_spec(spec.format(port=0)), quit.set)
    server.start()
    try:
        yield server, quit
    finally:
        server.close()
        machine.close()


INET_CASES = [name for name in CASES if name not in UNIX_CASES]


@pytest.mark.parametrize("name", INET_CASES)
def test_tcp_and_telnet_like_qemu(name: str) -> None:
    case = CASES[name]
    assert case["exit"] == 0  # each ends with `quit`
    with served(case["monitor"]) as (server, quit):
        replay(InProcess(server), case)
        assert quit.wait(TIMEOUT)


# -- what QEMU refuses ----------------------------------------------------------------------
@pytest.mark.parametrize("error", DATA["errors"], ids=lambda e: str(e["monitor"]))
def test_bad_monitor_options_like_qemu(error: dict[str, Any], tmp_path: Path) -> None:
    sock = str(tmp_path / "mon.sock")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        spec = error["monitor"].format(sock=sock, busy=port)
        result = subprocess.run(
            [sys.executable, "-m", "hmp", "-monitor", spec],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    expected = qemu_stderr(error["stderr"], sock).replace("{busy}", port)
    assert (result.returncode, result.stderr) == (error["exit"], expected)
