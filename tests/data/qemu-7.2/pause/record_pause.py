"""Re-record QEMU 7.2's pause-before-switchover (run this file with the project's venv python).

HMP files are ../peers/record_peers.py's format (``(qemu) CMD``, its exact output, ``# stderr:``
lines; ``{port}`` is the destination's port): source.txt and destination.txt pause in
pre-switchover and continue, cancel.txt cancels while paused. qmp.jsonl is
tests/data/qmp_recorder.py's ``Pair`` format: the same over QMP with the events capability on,
so the MIGRATION events show in order. tests/test_pause_oracle.py replays them.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "peers"))
sys.path.insert(0, str(HERE.parent.parent))
from qmp_recorder import NEG, Pair, caps, write, x  # noqa: E402
from record_peers import QEMU, Session, free_port  # noqa: E402

PAUSED = "Migration status: pre-switchover"


def paused(cwd: Path, cancel: bool) -> tuple[str, str]:
    port = free_port()
    dst = Session(["-m", "128", "-incoming", f"tcp:127.0.0.1:{port}"], port, cwd)
    src = Session(["-m", "128"], port, cwd)
    if not cancel:
        src.record("migrate_continue pre-switchover")
        src.record("migrate_continue foo")
        src.record("migrate_continue active")
    src.record("migrate_set_capability pause-before-switchover on")
    src.record(f"migrate -d tcp:127.0.0.1:{port}")
    src.poll("info migrate", PAUSED)
    src.record("info status")
    dst.record("info status")
    if cancel:
        src.record("migrate_cancel")
        src.poll("info migrate", "Migration status: cancelled")
        src.record("info status")
        dst.exit()  # a QEMU destination whose stream broke exits
        return src.text(), dst.text()
    src.record("migrate_continue active")
    src.record("migrate_continue device")
    src.record("info migrate")
    dst.record("migrate_continue pre-switchover")
    src.record("migrate_continue pre-switchover")
    src.poll("info migrate", "Migration status: completed")
    src.record("migrate_continue pre-switchover")
    src.record("info status")
    dst.poll("info migrate", "Migration status: completed")
    dst.record("info status")
    return src.text(), dst.text()


def qmp(cwd: Path) -> list[dict[str, object]]:
    port = free_port()
    with Pair(QEMU, str(cwd)) as pair:
        pair.start("dst", ["-m", "128", "-incoming", f"tcp:127.0.0.1:{port}"])
        pair.step("dst", NEG)
        pair.start("src", ["-m", "128"])
        pair.step("src", NEG)
        pair.step("src", x("migrate-continue", {"state": "pre-switchover"}))
        pair.step("src", x("migrate-continue", {"state": "foo"}))
        pair.step("src", x("migrate-continue", {}))
        pair.step(
            "src", x("migrate-set-capabilities", caps(events=True, pause_before_switchover=True))
        )
        pair.step("src", x("migrate", {"uri": f"tcp:127.0.0.1:{port}"}))
        pair.poll_migrate("src", ("pre-switchover", "failed"))
        pair.step("src", x("query-status"))
        pair.step("src", x("migrate-continue", {"state": "pre-switchover"}))
        pair.poll_migrate("src", ("completed", "failed"))
        pair.step("src", x("migrate-continue", {"state": "pre-switchover"}))
        pair.step("src", x("query-status"))
    return pair.out


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        source, destination = paused(Path(scratch), cancel=False)
        cancel_src, cancel_dst = paused(Path(scratch), cancel=True)
        records = qmp(Path(scratch))
    (HERE / "source.txt").write_text(source)
    (HERE / "destination.txt").write_text(destination)
    (HERE / "cancel.txt").write_text(cancel_src + "# endpoint: dst\n" + cancel_dst)
    write(HERE / "qmp.jsonl", records)


if __name__ == "__main__":
    main()
