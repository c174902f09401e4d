"""Re-record QEMU 7.2's zero-copy-send (run this file with python).

The format is ../peers/record_peers.py's (``(qemu) CMD``, its exact output, ``# stderr:``
lines; ``{port}`` is the destination's port). checks.txt: QEMU's refusals at
migrate_set_capability and migrate_set_parameter; source.txt and destination.txt: a multifd
migration with zero-copy-send over loopback, where the kernel copies, so `info migrate`
shows the fallbacks line. tests/test_zerocopy_oracle.py replays them.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "peers"))
from record_peers import Session, completed, random_pair  # noqa: E402

NO_PORT = 987654321  # Session masks its port in outputs: one that appears nowhere


def checks(cwd: Path) -> str:
    s = Session(["-m", "128"], NO_PORT, cwd)
    s.record("migrate_set_capability zero-copy-send on")
    s.record("migrate_set_capability multifd on")
    s.record("migrate_set_capability compress on")
    s.record("migrate_set_parameter multifd-compression zlib")
    s.record("migrate_set_capability zero-copy-send on")
    s.record("migrate_set_parameter multifd-compression none")
    s.record("migrate_set_capability zero-copy-send on")
    s.record("migrate_set_parameter multifd-compression zstd")
    s.record("migrate_set_capability xbzrle on")
    s.record("migrate_set_capability compress on")
    s.record("migrate_set_capability multifd off")
    s.record("info migrate_capabilities")
    return s.text()


def migration(cwd: Path) -> tuple[str, str]:
    src, dst, port = random_pair(cwd, 0x2C0, "multifd")
    src.record("migrate_set_capability zero-copy-send on")
    src.record(f"migrate -d tcp:127.0.0.1:{port}")
    return completed(src, dst)


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        (HERE / "checks.txt").write_text(checks(Path(scratch)))
        source, destination = migration(Path(scratch))
    (HERE / "source.txt").write_text(source)
    (HERE / "destination.txt").write_text(destination)


if __name__ == "__main__":
    main()
