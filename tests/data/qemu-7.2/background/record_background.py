"""Re-record QEMU 7.2's background-snapshot (run this file with the project's venv python).

checks.txt (../peers/record_peers.py's format): QEMU's refusals of background-snapshot next
to each capability check_caps_background_snapshot lists, both ways round. snapshot.txt: a
snapshot to an exec: command while the guest runs, then its restore in a second QEMU.
qmp.jsonl (tests/data/qmp_recorder.py's Pair format): the same snapshot over QMP with the
events capability on. tests/test_background_oracle.py replays them.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "peers"))
sys.path.insert(0, str(HERE.parent.parent))
from qmp_recorder import NEG, Pair, caps, write, x  # noqa: E402
from record_peers import QEMU, Session  # noqa: E402

from engine.params import BACKGROUND_SNAPSHOT_INCOMPATIBLE  # noqa: E402 (the list, in QEMU's order)

NO_PORT = 987654321  # Session masks its port in outputs: one that appears nowhere


def checks(cwd: Path) -> str:
    s = Session(["-m", "128"], NO_PORT, cwd)
    for other in BACKGROUND_SNAPSHOT_INCOMPATIBLE:
        s.record(f"migrate_set_capability {other} on")
        s.record("migrate_set_capability background-snapshot on")
        s.record(f"migrate_set_capability {other} off")
    s.record("migrate_set_capability background-snapshot on")
    for other in BACKGROUND_SNAPSHOT_INCOMPATIBLE:
        s.record(f"migrate_set_capability {other} on")
    return s.text()


def snapshot(cwd: Path) -> str:
    src = Session(["-m", "128"], NO_PORT, cwd)
    src.record("migrate_set_capability background-snapshot on")
    src.record('migrate "exec:cat > snap.bin"')
    src.poll("info migrate", "Migration status: completed")
    src.record("info status")
    dst = Session(["-m", "128", "-S", "-incoming", "exec:cat snap.bin"], NO_PORT, cwd)
    dst.poll("info migrate", "Migration status: completed")
    dst.record("info status")
    return src.text() + "# endpoint: dst\n" + dst.text()


def qmp(cwd: Path) -> list[dict[str, object]]:
    with Pair(QEMU, str(cwd)) as pair:
        pair.start("src", ["-m", "128"])
        pair.step("src", NEG)
        pair.step("src", x("migrate-set-capabilities", caps(events=True, background_snapshot=True)))
        pair.step("src", x("migrate", {"uri": "exec:cat > snap2.bin"}))
        pair.poll_migrate("src", ("completed", "failed"))
        pair.step("src", x("query-status"))
    return pair.out


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        (HERE / "checks.txt").write_text(checks(Path(scratch)))
        (HERE / "snapshot.txt").write_text(snapshot(Path(scratch)))
        write(HERE / "qmp.jsonl", qmp(Path(scratch)))


if __name__ == "__main__":
    main()
