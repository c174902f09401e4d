"""Wait until another process listens on a unix socket, without connecting to it.

The socket file appears at bind(), before listen(): a client that connects in between is
refused. A probe connection would be taken as the first client (a monitor socket serves one
at a time), so readiness is read from the kernel's table instead: /proc/net/unix lists each
listening socket with the __SO_ACCEPTCON flag.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

_ACCEPTCON = 0x10000


def _listening_paths() -> set[bytes]:
    paths = set()  # bytes: other tests bind names that are not UTF-8
    for line in Path("/proc/net/unix").read_bytes().splitlines()[1:]:
        fields = line.split(maxsplit=7)
        if len(fields) == 8 and int(fields[3], 16) & _ACCEPTCON:
            paths.add(fields[7])
    return paths


def wait_listening(
    paths: Iterable[str | Path], procs: Iterable[subprocess.Popen[bytes]], timeout: float
) -> None:
    """Return once every path is listened on; fail when a process ends or time runs out."""
    wanted, procs = {os.fsencode(p) for p in paths}, list(procs)
    deadline = time.monotonic() + timeout
    while not wanted <= _listening_paths():
        assert time.monotonic() < deadline, f"not listening after {timeout} s: {wanted}"
        assert all(p.poll() is None for p in procs), "a process ended before it listened"
        time.sleep(0.01)  # another process's state: nothing to wait on but the table
