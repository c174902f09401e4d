"""A real QEMU 7.2 with its monitor on a unix socket, driven one HMP line at a time (for the
recorders beside this file that need two QEMUs at once, or to kill one mid-migration)."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import time
from typing import IO

QEMU = ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-display", "none", "-nodefaults"]
PROMPT = b"(qemu) "


class QemuOnSocket:
    def __init__(self, path: str, args: list[str], stderr: int | IO[bytes] = subprocess.DEVNULL):
        if os.path.exists(path):
            os.unlink(path)  # left by a QEMU killed in the case before
        self.proc = subprocess.Popen(
            [*QEMU, *args, "-monitor", f"unix:{path},server=on,wait=off"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        while not os.path.exists(path):
            time.sleep(0.05)  # a recorder's poll for QEMU's socket file, not a test
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self._until_prompt()

    def _until_prompt(self) -> bytes:
        data = b""
        while not data.endswith(PROMPT):
            assert select.select([self.sock], [], [], 30)[0], data
            data += self.sock.recv(65536)
        return data

    def hmp(self, line: str) -> str:
        """``line``'s output as QEMU printed it (the echoed line dropped, ``\\r\\n`` → ``\\n``)."""
        self.sock.sendall(line.encode() + b"\n")
        out = self._until_prompt().removesuffix(PROMPT).split(b"\r\n", 1)[1]
        return out.decode().replace("\r\n", "\n")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
