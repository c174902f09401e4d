"""Re-record QEMU 7.2's rate limit at a tiny max-bandwidth (run this file with the project's venv
python): source.txt is ../peers/record_peers.py's format. A source of a 128 MiB guest at
max-bandwidth 64k (6553 bytes per 100 ms window) is asked `info migrate` as soon as it
migrates, then until its total time passes 300 ms and 1 s: what each window carried, the
first included. tests/test_rate_window_oracle.py replays it.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "peers"))
from record_peers import Session, destination, free_port  # noqa: E402


def until_past(src: Session, ms: int) -> None:
    """`info migrate` until its total time is past ``ms``; record that answer."""
    while int(re.search(r"total time: (\d+) ms", output := src.run("info migrate"))[1]) <= ms:
        time.sleep(0.02)
    src.record("info migrate", output)


def limited(cwd: Path) -> str:
    port = free_port()
    destination(cwd, port)
    src = Session(["-m", "128"], port, cwd)
    src.record("migrate_set_parameter max-bandwidth 64k")
    src.record(f"migrate -d tcp:127.0.0.1:{port}")
    src.record("info migrate")
    until_past(src, 300)
    until_past(src, 1000)
    src.record("migrate_cancel")
    return src.text()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (HERE / "source.txt").write_text(limited(Path(tmp)))


if __name__ == "__main__":
    main()
