"""Re-record the QEMU 7.2 switchover cases: ``python tests/data/qemu-7.2/switchover.py [CASE...]``.

Each case records one source QEMU's monitor as record.py does (``(qemu) CMD``, the output,
``# stderr:`` lines) in switchover/CASE.txt, while the recorder acts on its peer (a
destination QEMU, or a fake peer that is not QEMU) between commands; each such action is a
``# step: TEXT`` line. The first line, ``# argv:``, is the source's options.

- finish_migrate: the destination is SIGSTOPped before `migrate -d`, so the source (with
  return-path, whose wait for the destination comes after the stop-and-copy) stays in
  finish-migrate; `cont`, `stop` and `migrate_cancel` are tried there.
- postmigrate: after a completed migration, what the operator can do with the source.
- foreign_peer[_rp]: the peer answers with an SSH banner and reads (and discards) the stream.
- tls_creds: `tls-creds` names an object that does not exist (qemu-hmp has none at all).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from record import QEMU, _drain, _read_until_prompt

HERE = Path(__file__).parent / "switchover"
SOURCE_ARGS = ["-m", "128"]
BANNER = b"SSH-2.0-OpenSSH_9.2\r\n"


class Source:
    """The recorded QEMU: a monitor on pipes, every command and its output kept in ``lines``."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [*QEMU, *SOURCE_ARGS, "-monitor", "stdio"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _read_until_prompt(self.proc)
        self.lines = [f"# argv: {' '.join(SOURCE_ARGS)}\n"]

    def run(self, cmd: str, *, keep: bool = True) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        self.proc.stdin.flush()
        _echo, _, body = _read_until_prompt(self.proc, 120).partition(b"\r\n")
        out = body.decode().replace("\r\n", "\n")
        err = [f"# stderr: {line}\n" for line in _drain(self.proc).splitlines()]
        if keep:
            self.lines += [f"(qemu) {cmd}\n", out, *err]
        return out

    def step(self, text: str) -> None:
        self.lines.append(f"# step: {text}\n")

    def wait_status(self, status: str, timeout: float = 60) -> None:
        """Poll `info status` (unrecorded) until it says ``status``."""
        deadline = time.monotonic() + timeout
        while status not in self.run("info status", keep=False):
            if time.monotonic() > deadline:
                raise TimeoutError(status)
            time.sleep(0.1)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _destination(port: int, *caps: str) -> subprocess.Popen[bytes]:
    """A destination QEMU; its monitor takes the capabilities, then it is left alone."""
    cmds = "".join(f"migrate_set_capability {cap} on\n" for cap in caps).encode()
    proc = subprocess.Popen(
        [*QEMU, "-m", "128", "-incoming", f"tcp:127.0.0.1:{port}", "-monitor", "stdio"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    _read_until_prompt(proc)
    proc.stdin.write(cmds)
    proc.stdin.flush()
    for _ in caps:
        _read_until_prompt(proc)
    _wait_listening(port)
    return proc


def _wait_listening(port: int, timeout: float = 30) -> None:
    """Until the kernel lists ``port`` as listening (a probe connection would be taken for
    the migration)."""
    deadline = time.monotonic() + timeout
    while f":{port:04X} 00000000:0000 0A" not in Path("/proc/net/tcp").read_text():
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {port}")
        time.sleep(0.05)


def finish_migrate(src: Source) -> None:
    port = _port()
    dst = _destination(port, "return-path")
    try:
        src.run("migrate_set_capability return-path on")
        src.run("migrate_set_parameter max-bandwidth 0")
        os.kill(dst.pid, signal.SIGSTOP)
        src.step("the destination is stopped (SIGSTOP)")
        src.run(f"migrate -d tcp:127.0.0.1:{port}")
        src.wait_status("finish-migrate")
        src.step("waited until info status said finish-migrate")
        for cmd in ("info status", "cont", "stop", "info status", "migrate_cancel"):
            src.run(cmd)
        src.wait_status("running")
        src.step("waited until info status said running")
        src.run("info status")
        src.run("info migrate")
    finally:
        dst.kill()
        dst.wait()


def postmigrate(src: Source) -> None:
    port = _port()
    dst = _destination(port)
    try:
        src.run(f"migrate tcp:127.0.0.1:{port}")
        for cmd in ("info status", "migrate -d tcp:127.0.0.1:1", "cont", "info status"):
            src.run(cmd)
    finally:
        dst.kill()
        dst.wait()


def tls_creds(src: Source) -> None:
    port = _port()
    dst = _destination(port)
    try:
        src.run("migrate_set_parameter tls-creds foo")
        for cmd in (f"migrate -d tcp:127.0.0.1:{port}", "info migrate", "info status"):
            src.run(cmd)
    finally:
        dst.kill()
        dst.wait()


def _foreign(src: Source, *caps: str) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def peer() -> None:
        conn, _ = server.accept()
        with conn, contextlib.suppress(ConnectionResetError):  # the source hangs up
            conn.sendall(BANNER)
            while conn.recv(1 << 16):
                pass

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    for cap in caps:
        src.run(f"migrate_set_capability {cap} on")
    src.step(f"the peer sends {BANNER!r} and reads the stream")
    src.run(f"migrate tcp:127.0.0.1:{port}")
    src.run("info migrate")
    src.run("info status")
    server.close()


CASES: dict[str, Callable[[Source], None]] = {
    "finish_migrate": finish_migrate,
    "postmigrate": postmigrate,
    "foreign_peer": _foreign,
    "foreign_peer_rp": lambda src: _foreign(src, "return-path"),
    "tls_creds": tls_creds,
}


def main() -> None:
    HERE.mkdir(exist_ok=True)
    for name in sys.argv[1:] or sorted(CASES):
        src = Source()
        try:
            CASES[name](src)
        finally:
            src.kill()
        (HERE / f"{name}.txt").write_text("".join(src.lines))
        print(name)


if __name__ == "__main__":
    main()
