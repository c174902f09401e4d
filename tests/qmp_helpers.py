"""Shared pieces of the QMP tests: endpoints with a QMP server, the recorded QEMU sessions."""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.machine import Machine, MachineOptions
from hmp.qmp.server import QmpServer
from tests.data.qmp.record import expand

ORACLE = Path(__file__).parent / "data" / "qmp"
TIMEOUT = 30.0


def load(case: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (ORACLE / f"{case}.jsonl").read_text().splitlines()]


def raw_steps(case: str) -> list[tuple[str, list[str]]]:
    """A case recorded with its exact lines: each text sent, and the lines QEMU wrote back."""
    steps: list[tuple[str, list[str]]] = []
    for rec in load(case):
        if "send" in rec:
            steps.append((expand(rec["send"]), []))
        elif "raw" in rec:
            steps[-1][1].append(rec["raw"])
    return steps


def replay_lines(path: str, case: str, mask: Callable[[str], str] = str) -> None:
    """Send each recorded text to the server at ``path``; our lines must be QEMU's, in order,
    as text (after ``mask``, applied to both). A last request proves nothing more came."""
    client = RawClient(path)
    try:
        client.line()  # the greeting
        for text, qemu in raw_steps(case):
            client.send(text)
            ours = [mask(client.line(TIMEOUT) or "(nothing)") for _ in qemu]
            theirs = [mask(line) for line in qemu]
            assert ours == theirs, f"{text[:300]}\nours: {ours}\nQEMU: {theirs}"
        client.send('{"execute": "query-name", "id": "end"}')
        assert client.line(TIMEOUT) == '{"return": {}, "id": "end"}'
    finally:
        client.close()


def options(argv: list[str]) -> MachineOptions:
    """The qemu-hmp endpoint a recorded QEMU command line describes."""
    opts: dict[str, Any] = {"ram_size": 64 << 20}
    args = iter(argv)
    for arg in args:
        if arg == "-S":
            opts["start_paused"] = True
        elif arg == "-incoming":
            opts["incoming"] = next(args)
    return MachineOptions(**opts)


@contextmanager
def endpoint(tmp_path: Path, opts: MachineOptions, name: str = "qmp") -> Iterator[QmpServer]:
    """A Machine with a QMP server on a unix socket under ``tmp_path``; both closed after."""
    machine = Machine(opts)
    server = QmpServer(machine, f"unix:{tmp_path / name}.sock,server=on,wait=off")
    server.start()
    try:
        yield server
    finally:
        server.close()
        machine.close()


class RawClient:
    """A bare QMP client over a socket: raw text out, parsed messages in."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.buf = b""
        self.raw: list[bytes] = []  # every line as received, for byte-level checks

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode("utf-8", "surrogateescape"))  # raw bytes pass too

    def line(self, timeout: float = 10.0) -> str | None:
        """The next line without its CRLF, or None if none came within ``timeout``."""
        while b"\n" not in self.buf:
            if not select.select([self.sock], [], [], timeout)[0]:
                return None
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        self.raw.append(line + b"\n")
        return line.rstrip(b"\r").decode()

    def read(self, timeout: float = 10.0) -> Any | None:
        """The next message, or None if none came within ``timeout``."""
        line = self.line(timeout)
        return None if line is None else json.loads(line)

    def close(self) -> None:
        self.sock.close()
