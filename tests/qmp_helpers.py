"""Shared pieces of the QMP tests: endpoints with a QMP server, the recorded QEMU sessions."""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.machine import Machine, MachineOptions
from hmp.qmp.server import QmpServer

ORACLE = Path(__file__).parent / "data" / "qmp"


def load(case: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (ORACLE / f"{case}.jsonl").read_text().splitlines()]


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
        self.sock.sendall(text.encode())

    def read(self, timeout: float = 10.0) -> Any | None:
        """The next message, or None if none came within ``timeout``."""
        while b"\n" not in self.buf:
            if not select.select([self.sock], [], [], timeout)[0]:
                return None
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        self.raw.append(line + b"\n")
        return json.loads(line)

    def close(self) -> None:
        self.sock.close()
