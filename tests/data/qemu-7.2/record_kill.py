"""Re-record what QEMU 7.2's source says when its destination dies mid-migration:
``python tests/data/qemu-7.2/record_kill.py`` writes kill_destination.json.

Which error the source's kernel reports depends on the destination's socket when the
destination dies: with nothing left unread there its kernel sends FIN, the source's next
write meets a reset in CLOSE_WAIT and fails with EPIPE; with bytes unread it sends RST at
once and the write fails with ECONNRESET. QEMU reports that errno as it comes. Each case
forces one of the two: ``drained`` stops the source (SIGSTOP) until the destination has read
everything, kills the destination, then lets the source go on; ``unread`` stops the
destination until bytes wait in its socket, then kills it. Both kill during the active
(iterate) phase of a 64 MiB image at max-bandwidth 32M. Recorded per case: the source's
``info migrate`` status line, its stderr lines, and its run state.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from qemu_on_socket import QemuOnSocket

HERE = Path(__file__).parent
RAM = ["-m", "512"]
IMAGE = 64 << 20


def recv_queue(port: int) -> int:
    """Bytes unread in the destination's socket (its local port is the migration port)."""
    out = subprocess.run(
        ["ss", "-tnH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(int(line.split()[0]) for line in out.splitlines())


def record(case: str, scratch: str, image: str, port: int) -> dict[str, Any]:
    dst = QemuOnSocket(
        os.path.join(scratch, "dst.sock"),
        [*RAM, "-incoming", f"tcp:127.0.0.1:{port}"],
        subprocess.PIPE,
    )
    src = QemuOnSocket(
        os.path.join(scratch, "src.sock"),
        [*RAM, "-device", f"loader,file={image},addr=0x1000000,force-raw=on"],
        subprocess.PIPE,
    )
    try:
        src.hmp("migrate_set_parameter max-bandwidth 32M")
        src.hmp(f"migrate -d tcp:127.0.0.1:{port}")
        while "Migration status: active" not in src.hmp("info migrate"):
            time.sleep(0.05)
        time.sleep(0.5)  # well into the iterate phase
        if case == "drained":
            os.kill(src.proc.pid, signal.SIGSTOP)
            while recv_queue(port):
                time.sleep(0.02)
            dst.proc.kill()
            dst.proc.wait()
            os.kill(src.proc.pid, signal.SIGCONT)
        else:
            os.kill(dst.proc.pid, signal.SIGSTOP)
            while not recv_queue(port):
                time.sleep(0.02)
            dst.proc.kill()
            dst.proc.wait()
        while "failed" not in (info := src.hmp("info migrate")):
            time.sleep(0.05)
        status = next(line for line in info.splitlines() if line.startswith("Migration status"))
        state = src.hmp("info status").strip()
    finally:
        src.proc.kill()
        dst.proc.kill()
        _, err = src.proc.communicate()
        dst.proc.wait()
    return {"status": status, "stderr": err.decode().splitlines(), "runstate": state}


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        image = os.path.join(scratch, "image.bin")
        Path(image).write_bytes(random.Random(7).randbytes(IMAGE))
        cases = {}
        for case in ("drained", "unread"):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            cases[case] = record(case, scratch, image, port)
            print(case, cases[case])
    (HERE / "kill_destination.json").write_text(json.dumps(cases, indent=1) + "\n")


if __name__ == "__main__":
    main()
