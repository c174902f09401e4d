"""Re-record QEMU 7.2 migrating with xbzrle between two processes (run this file with python).

The format is ../peers/record_peers.py's (``(qemu) CMD`` and its exact output, ``# stderr:``
lines), one file per side; ``{port}`` stands for the destination's port. The source's guest
has a random image loaded at 16 MiB and runs its firmware; max-bandwidth stretches the first
pass over seconds so `info migrate` is seen while active, and xbzrle-cache-size is changed
then. tests/test_xbzrle_oracle.py compares our layout with these, numbers by pattern.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "peers"))
from record_peers import Session, free_port  # noqa: E402

IMAGE = 32 * 1024 * 1024


def record(cwd: Path) -> tuple[str, str]:
    image = cwd / "random.bin"
    image.write_bytes(random.Random(0x2B21E).randbytes(IMAGE))
    port = free_port()
    dst = Session(["-m", "128", "-incoming", f"tcp:127.0.0.1:{port}"], port, cwd)
    dst.record("migrate_set_capability xbzrle on")
    loader = f"loader,file={image.name},addr=0x1000000,force-raw=on"
    src = Session(["-m", "128", "-device", loader], port, cwd)
    src.record("migrate_set_capability xbzrle on")
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
    src.poll("info migrate", "Migration status: completed", timeout=60)
    dst.poll("info migrate", "Migration status: completed")
    return src.text(), dst.text()


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        source, destination = record(Path(scratch))
    (HERE / "source.txt").write_text(source)
    (HERE / "destination.txt").write_text(destination)


if __name__ == "__main__":
    main()
