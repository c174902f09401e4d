"""Record QEMU 11.1's events of a `file:` save and restore and of a switchover-ack migration:
``python tests/data/qemu-11.1/qmp/record_events.py``.

Written in the format tests/data/qmp_recorder.py describes, with QEMU 11.1 in its chroot as
record.py runs it (files under /tmp/qemu11, the path it shares with this machine):

- ``file_events.jsonl``: a source (``-m 128``, events on) saves with `migrate file:PATH`
  (polled until completed), then a destination (``-m 128 -incoming defer``, events on)
  restores it with `migrate-incoming` (polled until completed); PATH is stored as
  ``SCRATCH/x.img``; ``mapped_ram_events.jsonl``: the same with mapped-ram on at both ends.
- ``switchover_ack.jsonl``: src -> dst as ``migration.jsonl``, with return-path and
  switchover-ack on at both ends.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from qmp_recorder import NEG, Pair, Record, caps, pair_migration, write, x

HERE = Path(__file__).parent
SHARED = "/tmp/qemu11"  # bind-mounted at the same path inside the chroot
QEMU = ["qemu11-system-x86_64", "-machine", "pc,accel=tcg", "-display", "none", "-nodefaults"]
EVENTS = caps(events=True)


def file_events(capabilities: dict[str, object]) -> list[Record]:
    with tempfile.TemporaryDirectory(dir=SHARED) as tmp, Pair(QEMU, tmp) as pair:
        uri = f"file:{tmp}/x.img"
        pair.start("src", ["-m", "128"])
        for text in (NEG, x("migrate-set-capabilities", capabilities), x("migrate", {"uri": uri})):
            pair.step("src", text)
        pair.poll_migrate("src", ("completed", "failed"))
        pair.step("src", x("query-status"))
        pair.start("dst", ["-m", "128", "-incoming", "defer"])
        for text in (NEG, x("migrate-set-capabilities", capabilities)):
            pair.step("dst", text)
        pair.step("dst", x("migrate-incoming", {"uri": uri}))
        pair.poll_migrate("dst", ("completed", "failed"))
        pair.step("dst", x("query-status"))
    return [_scratch(rec, tmp) for rec in pair.out]


def _scratch(rec: Record, tmp: str) -> Record:
    """A record with the run's folder as SCRATCH."""
    return {k: v.replace(tmp, "SCRATCH") if isinstance(v, str) else v for k, v in rec.items()}


def main() -> None:
    Path(SHARED).mkdir(exist_ok=True)
    write(HERE / "file_events.jsonl", file_events(EVENTS))
    write(HERE / "mapped_ram_events.jsonl", file_events(caps(events=True, mapped_ram=True)))
    ack = caps(events=True, return_path=True, switchover_ack=True)
    write(HERE / "switchover_ack.jsonl", pair_migration(QEMU, ack, parent=SHARED))


if __name__ == "__main__":
    main()
