"""Re-record QEMU 7.2 with a silent or never-reading peer (run this file with python).

Like ../record.py (``(qemu) CMD`` and its exact output, ``# stderr: LINE``), plus the peer's
steps: ``# peer: connect`` (a client connects to QEMU's -incoming address and sends nothing),
``# peer: wait SECONDS`` (time passes), ``# peer: close``, ``# peer: listen`` (a server that
accepts and never reads; ``{port}`` in commands is its port), ``# exit: STATUS`` when QEMU
ended. Ports are written as ``{port}``. tests/test_peer_oracle.py replays these files.
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))
from hmp_recorder import _drain, _read_until_prompt  # noqa: E402
from record import QEMU  # noqa: E402

RANDOM_IMAGE = 32 * 1024 * 1024  # a guest that does not fit in socket buffers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def random_source(cwd: Path, seed: int, port: int) -> Session:
    """A source whose guest holds RANDOM_IMAGE seeded random bytes at 16 MiB: pages to send."""
    image = cwd / "random.bin"
    image.write_bytes(random.Random(seed).randbytes(RANDOM_IMAGE))
    loader = f"loader,file={image.name},addr=0x1000000,force-raw=on"
    return Session(["-m", "128", "-device", loader], port, cwd)


def destination(cwd: Path, port: int) -> Session:
    return Session(["-m", "128", "-incoming", f"tcp:127.0.0.1:{port}"], port, cwd)


def random_pair(cwd: Path, seed: int, capability: str) -> tuple[Session, Session, int]:
    """A destination, then a random_source, ``capability`` on at both; and the port."""
    port = free_port()
    dst = destination(cwd, port)
    dst.record(f"migrate_set_capability {capability} on")
    src = random_source(cwd, seed, port)
    src.record(f"migrate_set_capability {capability} on")
    return src, dst, port


def completed(src: Session, dst: Session) -> tuple[str, str]:
    """Both sides' recordings once the migration between them completed."""
    src.poll("info migrate", "Migration status: completed", timeout=60)
    dst.poll("info migrate", "Migration status: completed")
    return src.text(), dst.text()


class Session:
    def __init__(self, args: list[str], port: int, cwd: Path) -> None:
        self.port = port
        self.out = [f"# argv: {' '.join(args)}\n".replace(str(port), "{port}")]
        self.proc = subprocess.Popen(
            [*QEMU, *args, "-monitor", "stdio"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
        )
        _read_until_prompt(self.proc)

    def run(self, cmd: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        self.proc.stdin.flush()
        _echo, _, body = _read_until_prompt(self.proc).partition(b"\r\n")
        return body.decode().replace("\r\n", "\n")

    def record(self, cmd: str, output: str | None = None) -> str:
        output = self.run(cmd) if output is None else output
        self.out.append(f"(qemu) {cmd}\n{output}".replace(str(self.port), "{port}"))
        self.stderr()
        return output

    def poll(self, cmd: str, until: str, timeout: float = 30.0) -> None:
        """Run ``cmd`` until its output contains ``until``; record the last run."""
        deadline = time.monotonic() + timeout
        while until not in (output := self.run(cmd)):
            assert time.monotonic() < deadline, output
            time.sleep(0.1)
        self.record(cmd, output)

    def note(self, step: str) -> None:
        self.out.append(f"# peer: {step}\n")

    def stderr(self) -> None:
        self.out.extend(f"# stderr: {line}\n" for line in _drain(self.proc).splitlines())

    def exit(self, timeout: float = 10.0) -> None:
        status = self.proc.wait(timeout)
        self.stderr()
        self.out.append(f"# exit: {status}\n")

    def text(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return "".join(self.out)


def silent_peer(cwd: Path) -> str:
    """A destination whose peer connects, says nothing for a while, then hangs up."""
    port = free_port()
    s = Session(["-m", "128", "-incoming", f"tcp:127.0.0.1:{port}"], port, cwd)
    s.record("info migrate")
    s.note("connect")
    peer = socket.create_connection(("127.0.0.1", port))
    s.poll("info migrate", "Migration status: active")
    s.record("info status")
    s.note("wait 3")
    time.sleep(3)
    s.record("info migrate")  # still active: QEMU has no setup timeout
    s.note("close")
    peer.close()
    s.exit()
    return s.text()


def transferred(info: str) -> str:
    return next((line for line in info.splitlines() if line.startswith("transferred ram")), "")


def stalled_source(cwd: Path) -> str:
    """A source whose destination accepts and never reads: QEMU stays active, says nothing."""
    server = socket.create_server(("127.0.0.1", 0))
    port = int(server.getsockname()[1])
    s = random_source(cwd, 0x57A11, port)
    s.note("listen")
    s.record(f"migrate -d tcp:127.0.0.1:{port}")
    conn, _ = server.accept()
    previous, deadline = "", time.monotonic() + 60
    while (now := transferred(s.run("info migrate"))) != previous:  # until bytes stop moving
        assert time.monotonic() < deadline
        previous = now
        time.sleep(1)
    s.note("wait 3")
    time.sleep(3)
    s.poll("info migrate", "Migration status: active")
    s.record("migrate_cancel")
    s.poll("info migrate", "Migration status: cancelled")
    s.record("info status")
    conn.close()
    server.close()
    return s.text()


CASES = {"silent_peer": silent_peer, "stalled_source": stalled_source}


def main() -> None:
    for name in sys.argv[1:] or sorted(CASES):
        with tempfile.TemporaryDirectory() as scratch:
            (HERE / f"{name}.txt").write_text(CASES[name](Path(scratch)))
        print(name)


if __name__ == "__main__":
    main()
