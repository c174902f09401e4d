"""Re-record QEMU 7.2 migrating with xbzrle between two processes (run this file with python).

The format is ../peers/record_peers.py's (``(qemu) CMD`` and its exact output, ``# stderr:``
lines), one file per side; ``{port}`` stands for the destination's port. The source's guest
has a random image loaded at 16 MiB and runs its firmware; max-bandwidth stretches the first
pass over seconds so `info migrate` is seen while active, and xbzrle-cache-size is changed
then. tests/test_xbzrle_oracle.py compares our layout with these, numbers by pattern.
query_migrate.json is QMP's ``query-migrate`` on a source once such a migration completed
(run with the project's venv: it uses hmp/harness/qmp_client.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "peers"))
from record_peers import QEMU, completed, destination, free_port, random_pair  # noqa: E402

from hmp.harness.qmp_client import QmpClient  # noqa: E402


def record(cwd: Path) -> tuple[str, str]:
    src, dst, port = random_pair(cwd, 0x2B21E, "xbzrle")
    src.record("info migrate_capabilities")
    for size in ("3M", "1000", "0", "16M"):
        src.record(f"migrate_set_parameter xbzrle-cache-size {size}")
    src.record("info migrate_parameters")
    src.record("migrate_set_parameter max-bandwidth 16M")
    src.record(f"migrate -d tcp:127.0.0.1:{port}")
    src.poll("info migrate", "Migration status: active")
    src.record("migrate_set_parameter xbzrle-cache-size 8M")
    src.record("info migrate")
    src.record("migrate_set_parameter max-bandwidth 1G")
    return completed(src, dst)


def query_migrate(cwd: Path) -> dict[str, object]:
    """``query-migrate`` of a completed xbzrle migration, the source driven over QMP."""
    port, sock = free_port(), cwd / "src.qmp"
    dst = destination(cwd, port)
    dst.run("migrate_set_capability xbzrle on")
    qmp = ["-qmp", f"unix:{sock},server=on,wait=off", "-monitor", "none"]
    src = subprocess.Popen([*QEMU, "-m", "128", *qmp], cwd=cwd)
    try:
        while not sock.exists():
            src.wait(0.05) if src.poll() is not None else None
        with QmpClient(str(sock)) as client:
            caps = [{"capability": "xbzrle", "state": True}]
            client.execute("migrate-set-capabilities", {"capabilities": caps})
            client.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
            return dict(client.poll("query-migrate", lambda r: r["status"] == "completed", 60))
    finally:
        src.kill()
        src.wait()
        dst.text()


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        source, destination = record(Path(scratch))
        reply = query_migrate(Path(scratch))
    (HERE / "source.txt").write_text(source)
    (HERE / "destination.txt").write_text(destination)
    (HERE / "query_migrate.json").write_text(json.dumps(reply, indent=1) + "\n")


if __name__ == "__main__":
    main()
