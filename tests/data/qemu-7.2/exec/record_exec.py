"""Re-record QEMU 7.2 saving to and restoring from ``exec:`` commands (run with python).

The format is ../peers/record_peers.py's: ``(qemu) CMD`` and its exact output, ``# stderr:``
lines, ``# exit: STATUS`` when QEMU ended. save.txt saves a guest through gzip and restores
it in a second QEMU; failures.txt migrates to commands that fail; multifd.txt migrates to a
command with multifd on (QEMU refuses: multifd needs a socket), and qmp_multifd.jsonl
(tests/data/qmp_recorder.py's format) the same over QMP, with QEMU's stderr meanwhile in
qmp_multifd_stderr.txt; each restore_*.txt is a
QEMU started with ``-incoming exec:...`` fed a stream that is empty, garbage or truncated
(QEMU exits; its monitor may not have answered). tests/test_exec_oracle.py replays them.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "peers"))
sys.path.insert(0, str(HERE.parent.parent))
from qmp_recorder import NEG, caps, run, write, x  # noqa: E402
from record_peers import QEMU, Session  # noqa: E402

SAVE = 'migrate "exec:gzip -c > guest.gz"'
NO_PORT = 987654321  # Session masks its port in outputs: one that appears nowhere


def save(cwd: Path) -> str:
    src = Session(["-m", "128"], NO_PORT, cwd)
    src.record(SAVE)
    src.poll("info migrate", "Migration status: completed")
    src.record("info status")
    src.record('pmemsave 0 0x100000 "src.bin"')
    src.text()  # the saved guest lives on in guest.gz
    dst = Session(["-m", "128", "-S", "-incoming", "exec:gzip -dc guest.gz"], NO_PORT, cwd)
    dst.poll("info migrate", "Migration status: completed")
    dst.record("info status")
    dst.record('pmemsave 0 0x100000 "dst.bin"')
    equal = (cwd / "src.bin").read_bytes() == (cwd / "dst.bin").read_bytes()
    dst.note(f"first MiB equal: {equal}")
    dst.record("cont")
    dst.record("info status")
    return src.text() + "# endpoint: dst\n" + dst.text()


def failures(cwd: Path) -> str:
    src = Session(["-m", "128"], NO_PORT, cwd)
    src.record('migrate "exec:false"')
    src.record("info migrate")
    src.record("info status")
    src.record('migrate -d "exec:cat > /nonexistent/x"')
    src.poll("info migrate", "Migration status: failed")
    src.record("info status")
    src.record('migrate "exec:head -c 1000 > /dev/null"')
    src.record("info migrate")
    src.record('migrate "exec:cat > /dev/null; exit 3"')
    src.record("info migrate")
    src.record('migrate "exec:"')
    src.record("info migrate")
    return src.text()


def multifd(cwd: Path) -> str:
    src = Session(["-m", "128"], NO_PORT, cwd)
    src.record("migrate_set_capability multifd on")
    src.record('migrate "exec:cat > /dev/null"')
    src.record("info migrate")
    src.record("info status")
    src.record('migrate -d "exec:cat > /dev/null"')
    src.record("info migrate")
    return src.text()


def qmp_multifd() -> list[dict[str, object]]:
    sends = [NEG, x("migrate-set-capabilities", caps(events=True, multifd=True))]
    sends += [x("migrate", {"uri": "exec:cat > /dev/null"}), x("query-migrate")]
    return run(QEMU, ["-m", "128"], [*sends, x("query-status")])


def qmp_multifd_stderr() -> str:
    """What QEMU writes to stderr for the same QMP steps (the QMP recorder discards it)."""
    sends = NEG + x("migrate-set-capabilities", caps(multifd=True))
    sends += x("migrate", {"uri": "exec:cat > /dev/null"}) + x("quit")
    proc = subprocess.run(
        [*QEMU, "-m", "128", "-qmp", "stdio"], input=sends.encode(), capture_output=True, timeout=30
    )
    return proc.stderr.decode()


def restore(cwd: Path, command: str) -> str:
    """QEMU with ``-incoming exec:COMMAND``: what it says before and as it exits."""
    args = ["-m", "128", "-incoming", f"exec:{command}"]
    proc = subprocess.Popen(
        [*QEMU, *args, "-monitor", "stdio"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
    )
    time.sleep(3)  # recording only: let QEMU read the stream and exit
    out, err = proc.communicate(b"info status\ninfo migrate\nquit\n", timeout=30)
    lines = [f"# argv: {' '.join(args)}\n", f"# exit: {proc.returncode}\n"]
    lines += [f"# stderr: {line}\n" for line in err.decode().splitlines()]
    lines += [f"# stdout: {line}\n" for line in out.decode().replace("\r", "").splitlines()]
    return "".join(lines)


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        (HERE / "save.txt").write_text(save(cwd))
        (HERE / "failures.txt").write_text(failures(cwd))
        (HERE / "multifd.txt").write_text(multifd(cwd))
        write(HERE / "qmp_multifd.jsonl", qmp_multifd())
        (HERE / "qmp_multifd_stderr.txt").write_text(qmp_multifd_stderr())
        raw = subprocess.run(["gzip", "-dc", "guest.gz"], cwd=cwd, capture_output=True).stdout
        (cwd / "truncated.bin").write_bytes(raw[: len(raw) // 2])
        (cwd / "garbage.bin").write_bytes(b"this is not a migration stream\n" * 100)
        restores = {
            "empty": "true",
            "garbage": "cat garbage.bin",
            "truncated": "cat truncated.bin",
            "fails": "exit 3",
        }
        for name, command in restores.items():
            (HERE / f"restore_{name}.txt").write_text(restore(cwd, command))


if __name__ == "__main__":
    main()
