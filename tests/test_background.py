"""background-snapshot: a snapshot to an exec: command while the guest writes throughout
restores to exactly the RAM of its start (engine/background.py); QEMU 7.2's checks, layout
and events replayed from tests/data/qemu-7.2/background (recorded by record_background.py)."""

from __future__ import annotations

import json
import os
import shlex
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hmp_replay import Side, steps
from info_layout import layout
from test_machine import ram_hash

from engine.background import CopyBeforeWrite
from engine.errors import MigrationError
from engine.guest import GuestRam
from engine.machine import MachineOptions
from engine.state import MigrationStatus, RunState
from hmp.qmp import qapi

DATA = Path(__file__).parent / "data" / "qemu-7.2" / "background"
MiB = 1 << 20
WRITER = "random-writer,rate=20000,wss=8M"
HOLD_S = 0.5  # how long a cont typed as tracking starts is given to get ahead of it


@pytest.fixture
def made() -> Iterator[list[Side]]:
    sides: list[Side] = []
    yield sides
    for side in sides:
        side.machine.close()


def side(made: list[Side], **kw: object) -> Side:
    made.append(Side(MachineOptions(ram_size=16 * MiB, **kw), events=True))  # type: ignore[arg-type]
    return made[-1]


def test_compatibility_checks_match_qemu(made: list[Side]) -> None:
    s = side(made)
    for command, expected in steps((DATA / "checks.txt").read_text()):
        assert s.run(command) == expected, command


def test_snapshot_and_restore_match_qemu(
    made: list[Side], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the recording's commands name files relatively
    src_text, _, dst_text = (DATA / "snapshot.txt").read_text().partition("# endpoint: dst\n")
    src = side(made, workload=WRITER, seed=5)
    for command, expected in steps(src_text):
        ours = src.run(command)
        assert (layout(ours) if command == "info migrate" else ours) == (
            layout(expected) if command == "info migrate" else expected
        ), command
    dst = side(made, incoming="defer", start_paused=True)
    assert "-S -incoming exec:cat snap.bin" in dst_text
    dst.run('migrate_incoming "exec:cat snap.bin"')
    dst.watch.wait_status("completed")
    for command, expected in steps(dst_text):
        assert dst.run(command) == expected, command


def qemu_events() -> list[str]:
    out = []
    for line in (DATA / "qmp.jsonl").read_text().splitlines():
        msg = json.loads(line).get("recv", {})
        if "event" in msg:
            out.append(msg["data"]["status"] if msg["event"] == "MIGRATION" else msg["event"])
    return out


class Gate:
    """A FIFO an exec: command reads a byte from before it reads the stream: the snapshot,
    larger than the pipe's buffer, cannot finish until ``open`` writes that byte. Held open
    at both ends until ``close``, so the byte waits in the FIFO whether or not the command
    has opened it yet (closing a writer instead would race the command's open)."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "gate"
        os.mkfifo(self.path)
        self._fd = os.open(self.path, os.O_RDWR)

    def command(self, target: Path) -> str:
        path, target_ = shlex.quote(str(self.path)), shlex.quote(str(target))
        return f"head -c 1 {path} > /dev/null; cat > {target_}"

    def open(self) -> None:
        os.write(self._fd, b"\n")

    def close(self) -> None:
        os.close(self._fd)


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    made = Gate(tmp_path)
    yield made
    made.close()


def test_a_snapshot_holds_the_ram_of_its_start_while_the_guest_writes(
    made: list[Side], tmp_path: Path, gate: Gate
) -> None:
    src = side(made, workload=WRITER, seed=6)
    m = src.machine
    m.stop()  # the instant to snapshot: RAM now
    at_start = ram_hash(m)
    m.set_capabilities({"background-snapshot": True})
    saved = tmp_path / "snap.bin"
    m.migrate(f"exec:{gate.command(saved)}")
    src.watch.wait_status("active")
    m.cont()
    writer = m.workload.writer
    assert writer is not None
    assert writer.wait_written(writer.pages_written + 5000, 30)  # thousands of stores
    assert m.query_migrate().status is MigrationStatus.ACTIVE  # held by the gate
    gate.open()
    assert m.wait_migration(60).status is MigrationStatus.COMPLETED
    assert m.vm.state is RunState.RUNNING  # the guest runs on: a snapshot hands nothing over
    assert m.ram.write_hook is None  # tracking ended with the snapshot
    assert ram_hash(m) != at_start  # the guest did write meanwhile
    dst = side(made, incoming="defer")
    dst.machine.migrate_incoming(f"exec:cat {shlex.quote(str(saved))}")
    dst.watch.wait_status("completed")
    assert ram_hash(dst.machine) == at_start
    assert dst.machine.vm.state is RunState.PAUSED  # as the source was at the start


def test_a_cont_typed_as_tracking_starts_waits_for_it(
    made: list[Side], tmp_path: Path, gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cont that comes once the snapshot is active but before copy-before-write is in
    place waits for it (QEMU's thread holds its big lock there): had it run the guest at
    once, the stores it let through would be in the snapshot."""
    src = side(made, workload=WRITER, seed=9)
    m = src.machine
    writer = m.workload.writer
    assert writer is not None
    m.stop()
    at_start = ram_hash(m)
    typed = threading.Event()
    conts: list[threading.Thread] = []

    class Racing(CopyBeforeWrite):
        def __init__(self, ram: GuestRam) -> None:
            conts.append(threading.Thread(target=m.cont, name="typed-cont"))
            conts[0].start()
            typed.set()
            conts[0].join(HOLD_S)  # a bounded hold: a cont that does not wait is done at once
            if not conts[0].is_alive():  # it ran the guest: let its stores show that
                assert writer.wait_written(writer.pages_written + 100, 30)
            super().__init__(ram)

    monkeypatch.setattr("engine.source.CopyBeforeWrite", Racing)
    m.set_capabilities({"background-snapshot": True})
    saved = tmp_path / "snap.bin"
    m.migrate(f"exec:{gate.command(saved)}")
    assert typed.wait(30)
    conts[0].join(30)
    assert not conts[0].is_alive() and m.vm.state is RunState.RUNNING
    assert writer.wait_written(writer.pages_written + 2000, 30)  # the guest writes on
    gate.open()
    assert m.wait_migration(60).status is MigrationStatus.COMPLETED
    dst = side(made, incoming="defer")
    dst.machine.migrate_incoming(f"exec:cat {shlex.quote(str(saved))}")
    dst.watch.wait_status("completed")
    assert ram_hash(dst.machine) == at_start


def test_events_match_qemu_for_a_running_guest(made: list[Side], tmp_path: Path) -> None:
    src = side(made, workload=WRITER, seed=7)
    src.machine.set_capabilities({"background-snapshot": True})
    src.machine.migrate(f"exec:cat > {shlex.quote(str(tmp_path / 's.bin'))}")
    assert src.machine.wait_migration(60).status is MigrationStatus.COMPLETED
    ours = [d.get("status", name) for name, d in src.watch.events if name != "MIGRATION_PASS"]
    assert ours == qemu_events()
    done = qapi.migration_info(src.machine.query_migrate())
    theirs = next(
        r["recv"]["return"]
        for r in map(json.loads, (DATA / "qmp.jsonl").read_text().splitlines())
        if isinstance(r.get("recv", {}).get("return"), dict)
        and r["recv"]["return"].get("status") == "completed"
    )
    assert done.keys() == theirs.keys() and done["ram"].keys() == theirs["ram"].keys()
    assert done["ram"]["dirty-sync-count"] == theirs["ram"]["dirty-sync-count"] == 0
    assert all(name != "MIGRATION_PASS" for name, _ in src.watch.events)


def test_cancel_ends_tracking_and_the_guest_runs_on(
    made: list[Side], tmp_path: Path, gate: Gate
) -> None:
    src = side(made, workload=WRITER, seed=8)
    m = src.machine
    m.set_capabilities({"background-snapshot": True})
    m.migrate(f"exec:{gate.command(tmp_path / 's.bin')}")
    src.watch.wait_status("active")
    m.migrate_cancel()  # the command never read: it is killed with the stream
    assert m.wait_migration(30).status is MigrationStatus.CANCELLED
    assert m.ram.write_hook is None
    assert m.vm.state is RunState.RUNNING


def test_only_to_an_exec_command(made: list[Side]) -> None:
    src = side(made)
    src.machine.set_capabilities({"background-snapshot": True})
    with pytest.raises(MigrationError, match="exec: command only"):
        src.machine.migrate("tcp:127.0.0.1:1")
    assert src.machine.vm.state is RunState.RUNNING


def test_a_store_wider_than_a_batch_goes_out_in_batches_of_the_limit() -> None:
    """One guest store may touch more pages than a stream record holds (1106 once, with a
    fast writer): the pages it made us copy go out at most ``limit`` at a time."""
    ram = GuestRam(8 * MiB)
    ram.page_array[:] = 7
    tracker = CopyBeforeWrite(ram)
    try:
        assert ram.write_hook is not None
        ram.write_hook(np.arange(1500, dtype=np.intp))  # as before a store to 1500 pages
        ram.page_array[:1500] = 9  # the store: the copies keep what was there
        sizes, old = [], True
        while (batch := tracker.next_batch(1024)) is not None:
            sizes.append(len(batch[0]))
            old &= bool((batch[1] == 7).all())
        assert sizes[:2] == [1024, 476] and max(sizes) <= 1024 and old
        assert sum(sizes) == ram.pages and tracker.left == 0
    finally:
        tracker.close()
