"""Record QEMU 7.2's query-migrate during and after a save to an exec: command, and on the
side that restores it (run this file with the project's venv python).

The save's command first reads a byte from a FIFO (the gate), so the migration is held
active, its stream stuck in a full pipe, until the recorder writes that byte: a query-migrate
"during" is certain, not a race (the recorder holds both ends, so the byte waits in the FIFO
whether or not the command has opened it yet). The restore's command is gated the same way.
Sessions are tests/data/qmp_recorder.py's Pair format, with ``{"note": "open GATE"}`` where
the recorder opened a gate. exec/qmp.jsonl: a plain save; background/qmp_query.jsonl: a
background-snapshot. tests/test_exec_qmp_oracle.py replays both.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from qmp_recorder import NEG, Pair, caps, write, x  # noqa: E402
from record import QEMU  # noqa: E402


class Gate:
    """A FIFO held open read-write (for the session's whole life): a reader of a byte
    blocks on it until ``open`` writes one."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.name = path.name
        self._fd = os.open(path, os.O_RDWR)

    def open(self, pair: Pair) -> None:
        os.write(self._fd, b"\n")
        pair.out.append({"note": f"open {self.name}"})


def completed(msg: dict[str, object]) -> bool:
    return msg.get("event") == "MIGRATION" and msg.get("data") == {"status": "completed"}


def session(cwd: Path, capabilities: dict[str, bool], target: str) -> list[dict[str, object]]:
    save_gate, restore_gate = Gate(cwd / "gate"), Gate(cwd / "gate2")
    with Pair(QEMU, str(cwd)) as pair:
        pair.start("src", ["-m", "128"])
        pair.step("src", NEG)
        pair.step("src", x("migrate-set-capabilities", caps(events=True, **capabilities)))
        pair.step("src", x("query-migrate"))
        pair.step("src", x("migrate", {"uri": f"exec:head -c 1 gate > /dev/null; cat > {target}"}))
        pair.step("src", x("query-migrate"))  # held by the gate: active
        save_gate.open(pair)
        pair.expect("src", completed)
        pair.step("src", x("query-migrate"))
        pair.step("src", x("query-status"))
        restore = f"exec:head -c 1 gate2 > /dev/null; cat {target}"
        pair.start("dst", ["-m", "128", "-S", "-incoming", restore])
        pair.step("dst", NEG)
        pair.step("dst", x("query-migrate"))  # held by its gate
        pair.step("dst", x("query-status"))
        restore_gate.open(pair)
        pair.poll_migrate("dst", ("completed", "failed"))
        pair.step("dst", x("query-status"))
    return pair.out


def main() -> None:
    for name, capabilities, target in (
        ("exec/qmp.jsonl", {}, "guest.bin"),
        ("background/qmp_query.jsonl", {"background_snapshot": True}, "snap.bin"),
    ):
        with tempfile.TemporaryDirectory() as scratch:
            os.chdir(scratch)  # QEMU inherits it: the commands' relative paths are there
            write(HERE / name, session(Path(scratch), capabilities, target))


if __name__ == "__main__":
    main()
