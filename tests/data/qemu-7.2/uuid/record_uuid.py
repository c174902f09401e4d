"""Re-record QEMU 7.2's -uuid and validate-uuid (run this file with python).

The format is ../peers/record_peers.py's (``(qemu) CMD`` and its exact output, ``# stderr:``
lines, ``# exit: STATUS``; ``{port}`` is the destination's port), one file per case, the
source first, then ``# endpoint: dst`` and the destination. cli.txt holds the -uuid values
QEMU refuses or takes, each with its exit status and stderr. qmp.jsonl
(tests/data/qmp_recorder.py's format, with raw lines): query-uuid with and without -uuid.
tests/test_uuid_oracle.py replays them.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "peers"))
from record_peers import QEMU, Session, free_port  # noqa: E402

sys.path.insert(0, str(HERE.parent.parent))
from qmp_recorder import NEG, run, write, x  # noqa: E402

A = "12345678-1234-5678-9abc-def012345678"
B = "87654321-4321-8765-cba9-876543210fed"
VALUES = [
    A,
    A.upper(),
    "foo",
    A[:-1],
    A + "0",
    A.replace("-", ""),
    A.replace("-", ":"),
    "{" + A + "}",
    "g" + A[1:],
    "",
]


def poll_end(session: Session) -> None:
    """`info migrate` until the migration ended; the last one recorded."""
    deadline = time.monotonic() + 30
    while not re.search(
        r"Migration status: (completed|failed)", out := session.run("info migrate")
    ):
        assert time.monotonic() < deadline, out
        time.sleep(0.1)
    session.record("info migrate", out)


def migration(cwd: Path, src_uuid: str | None, dst_uuid: str | None) -> str:
    port = free_port()
    dargs = ["-m", "128", "-incoming", f"tcp:127.0.0.1:{port}"]
    dst = Session(dargs + (["-uuid", dst_uuid] if dst_uuid else []), port, cwd)
    dst.record("info uuid")
    src = Session(["-m", "128"] + (["-uuid", src_uuid] if src_uuid else []), port, cwd)
    src.record("info uuid")
    src.record("migrate_set_capability validate-uuid on")
    src.record(f"migrate -d tcp:127.0.0.1:{port}")
    poll_end(src)
    src.record("info status")
    try:
        dst.proc.wait(3)  # recording only: a destination that refused the stream exits
    except subprocess.TimeoutExpired:
        poll_end(dst)
        dst.record("info status")
    else:
        dst.exit()
    return src.text() + "# endpoint: dst\n" + dst.text()


def cli(cwd: Path) -> str:
    out = []
    for value in VALUES:
        proc = subprocess.run(
            [*QEMU, "-m", "128", "-uuid", value, "-monitor", "stdio"],
            input=b"info uuid\nquit\n",
            capture_output=True,
            cwd=cwd,
            timeout=30,
        )
        out.append(f"# uuid: {value!r} exit: {proc.returncode}\n")
        out += [f"# stderr: {line}\n" for line in proc.stderr.decode().splitlines()]
        body = proc.stdout.decode().replace("\r", "")
        lines = [x for x in body.splitlines() if x and not x.startswith(("QEMU ", "(qemu)"))]
        out += [f"# stdout: {line}\n" for line in lines]
    return "".join(out)


CASES = {
    "differ": (A, B),
    "equal": (A, A),
    "dst_unset": (A, None),
    "src_unset": (None, B),
}


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        for name, (s, d) in CASES.items():
            (HERE / f"{name}.txt").write_text(migration(Path(scratch), s, d))
        (HERE / "cli.txt").write_text(cli(Path(scratch)))
        sends = [NEG, x("query-uuid"), x("query-uuid", {"foo": 1})]
        records = run(QEMU, ["-m", "128", "-uuid", A.upper()], sends, raw=True, parent=scratch)
        records += run(QEMU, ["-m", "128"], sends[:2], raw=True, parent=scratch)
        write(HERE / "qmp.jsonl", records)


if __name__ == "__main__":
    main()
