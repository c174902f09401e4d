"""Replay QEMU 7.2's pause-before-switchover (tests/data/qemu-7.2/pause, recorded by its
record_pause.py) on two of our machines: every output byte for byte, `info migrate` with its
figures masked (they are measurements); the MIGRATION events in QEMU's order; QMP's
migrate-continue errors as QEMU's; and a cancel while paused gives the guest back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hmp_replay
import pytest
from hmp_replay import steps
from info_layout import layout
from qmp_helpers import RawClient, endpoint
from test_machine import ram_hash

from engine.machine import MachineOptions
from engine.state import MigrationStatus
from hmp.qmp import qapi

DATA = Path(__file__).parent / "data" / "qemu-7.2" / "pause"
MiB = 1 << 20


class Side(hmp_replay.Side):
    def __init__(self, opts: MachineOptions) -> None:
        super().__init__(opts, events=True)

    def check(self, command: str, expected: str) -> None:
        if command == "info migrate":
            assert layout(self.run(command)) == layout(expected)
        else:
            assert self.run(command) == expected, command


@pytest.fixture
def sides() -> Iterator[tuple[Side, Side, str]]:
    dst = Side(MachineOptions(ram_size=32 * MiB, incoming="tcp:127.0.0.1:0"))
    src = Side(MachineOptions(ram_size=32 * MiB, workload="idle,rate=1000,wss=1M", seed=3))
    address = dst.machine.query_migrate().socket_address
    assert address is not None
    yield src, dst, address[0].rsplit(":", 1)[1]
    src.machine.close()
    dst.machine.close()


def replay_source(
    sides: tuple[Side, Side, str], recorded: str, end: str, dst_steps: list[tuple[str, str]]
) -> None:
    """The source's recorded steps until the migration's ``end`` status; ``dst_steps`` on the
    destination while the source is paused before the switchover."""
    src, dst, port = sides
    for command, expected in steps(recorded):
        command = command.replace("{port}", port)
        if f"Migration status: {end}" in expected:
            src.machine.wait_migration(60)
        src.check(command, expected)
        if command.startswith("migrate -d"):
            src.watch.wait_status("pre-switchover")
        if command == "info status" and "finish-migrate" in expected:
            for dcommand, dexpected in dst_steps:
                dst.check(dcommand, dexpected)


def test_pause_and_continue_match_qemu(sides: tuple[Side, Side, str]) -> None:
    src, dst, _ = sides
    dst_steps = steps((DATA / "destination.txt").read_text())
    # Paused, the destination has not got the guest: its continue is refused.
    replay_source(sides, (DATA / "source.txt").read_text(), "completed", dst_steps[:2])
    dst.watch.wait_status("completed")
    for command, expected in dst_steps[2:]:
        dst.check(command, expected)
    assert ram_hash(src.machine) == ram_hash(dst.machine)


def qemu_events(name: str) -> list[str]:
    """The source's MIGRATION statuses, STOP and MIGRATION_PASS, in QEMU's order."""
    out, side = [], ""
    for line in (DATA / name).read_text().splitlines():
        rec = json.loads(line)
        side = rec.get("endpoint", side)
        msg = rec.get("recv", {})
        if side == "src" and "event" in msg:
            out.append(msg["data"]["status"] if msg["event"] == "MIGRATION" else msg["event"])
    return out


def qemu_paused_reply() -> dict[str, Any]:
    """QEMU's query-migrate while paused in pre-switchover."""
    for line in (DATA / "qmp.jsonl").read_text().splitlines():
        reply = json.loads(line).get("recv", {}).get("return")
        if isinstance(reply, dict) and reply.get("status") == "pre-switchover":
            return reply
    raise AssertionError("no query-migrate in pre-switchover recorded")


def test_events_in_qemus_order(sides: tuple[Side, Side, str]) -> None:
    src, _dst, port = sides
    src.machine.set_capabilities({"pause-before-switchover": True})
    src.machine.migrate(f"tcp:127.0.0.1:{port}")
    src.watch.wait_status("pre-switchover")
    ours_paused = qapi.migration_info(src.machine.query_migrate())
    theirs_paused = qemu_paused_reply()
    assert ours_paused.keys() == theirs_paused.keys()  # QEMU's members while paused
    assert ours_paused["ram"].keys() == theirs_paused["ram"].keys()
    src.machine.migrate_continue(MigrationStatus.PRE_SWITCHOVER)
    src.machine.wait_migration(60)
    ours = [
        d["status"] if name == "MIGRATION" else name
        for name, d in src.watch.events
        if name in ("MIGRATION", "MIGRATION_PASS", "STOP")
    ]

    def without_precopy_passes(seq: list[str]) -> list[str]:
        # How many passes precopy takes is the guest's and the link's; from the stop on
        # there must be exactly QEMU's: none before device, one after.
        stop = seq.index("STOP")
        return [e for e in seq[:stop] if e != "MIGRATION_PASS"] + seq[stop:]

    assert without_precopy_passes(ours) == without_precopy_passes(qemu_events("qmp.jsonl"))
    tail = ours[ours.index("STOP") :]
    assert tail == ["STOP", "pre-switchover", "device", "MIGRATION_PASS", "completed"]


def test_cancel_while_paused_matches_qemu(sides: tuple[Side, Side, str]) -> None:
    src, dst, _ = sides
    recorded, _, dst_text = (DATA / "cancel.txt").read_text().partition("# endpoint: dst\n")
    replay_source(sides, recorded, "cancelled", steps(dst_text))
    assert src.watch.statuses()[-3:] == ["pre-switchover", "cancelling", "cancelled"]
    # QEMU's destination exits; ours fails the attempt and waits for the next (README).
    dst.watch.wait_status("failed")
    assert dst.run("info status") == "VM status: paused (inmigrate)\n"


def qmp_exchanges() -> list[tuple[str, dict[str, Any]]]:
    """The source's migrate-continue requests recorded before any migration, and replies."""
    out: list[tuple[str, dict[str, Any]]] = []
    side = ""
    for line in (DATA / "qmp.jsonl").read_text().splitlines():
        rec = json.loads(line)
        side = rec.get("endpoint", side)
        if side != "src":
            continue
        if "send" in rec:
            out.append((rec["send"], {}))
        elif "recv" in rec and "event" not in rec["recv"] and not out[-1][1]:
            out[-1] = (out[-1][0], rec["recv"])
    return [(s, r) for s, r in out if "migrate-continue" in s and "error" in r]


def test_qmp_migrate_continue_errors_match_qemu(tmp_path: Path) -> None:
    exchanges = qmp_exchanges()
    assert len(exchanges) == 4  # three before the migration, one after it completed
    with endpoint(tmp_path, MachineOptions(ram_size=8 * MiB)) as server:
        client = RawClient(str(tmp_path / "qmp.sock"))
        try:
            client.read()  # the greeting
            client.send('{"execute": "qmp_capabilities"}\n')
            assert client.read() == {"return": {}}
            for text, qemu in exchanges[:3]:
                client.send(text)
                assert client.read() == qemu, text
        finally:
            client.close()
        assert server.machine.query_migrate().status is None
