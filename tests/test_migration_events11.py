"""QEMU 11.1's event sequence for a precopy migration, in order, against its recordings
(tests/data/qemu-11.1/qmp/: migration.jsonl, events on at both ends, a 128 MiB guest; the same
with switchover-ack, switchover_ack.jsonl; a `file:` save and its restore, file_events.jsonl,
and with mapped-ram, mapped_ram_events.jsonl; recorded by record_events.py).

11.1 differs from 7.2 (tests/data/qmp/): the setup's dirty-log sync and the final one are not
announced (no `MIGRATION_PASS 1` before `active`, none after `STOP`), and the source goes
`active` → `device` when it stops the guest for the switchover. test_qmp_oracle11.py compares
the events of its sessions as a set; this holds their order, on the machines' event bus that
QMP sends from. How many syncs an iteration needs is the guest's and the timing's, so the
MIGRATION_PASS events are held to their place and numbering, not their count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.machine import Machine
from engine.params import TABLE_7_2
from engine.params11 import TABLE_11_1
from tests.test_machine import Watch, dest, make

ORACLE = Path(__file__).parent / "data" / "qemu-11.1" / "qmp"
Event = tuple[str, dict[str, Any]]


def recorded(case: str = "migration") -> dict[str, list[Event]]:
    """Each endpoint's events, in the order QEMU sent them."""
    events: dict[str, list[Event]] = {"src": [], "dst": []}
    endpoint = ""
    for line in (ORACLE / f"{case}.jsonl").read_text().splitlines():
        rec = json.loads(line)
        endpoint = rec.get("endpoint", endpoint)
        msg = rec.get("recv")
        if isinstance(msg, dict) and "event" in msg:
            events[endpoint].append((msg["event"], msg.get("data", {})))
    return events


def without_passes(events: list[Event]) -> list[Event]:
    return [e for e in events if e[0] != "MIGRATION_PASS"]


def passes_in_place(events: list[Event]) -> bool:
    """Every MIGRATION_PASS lies between `active` and STOP, numbered upwards from 2."""
    names = [name if name != "MIGRATION" else data["status"] for name, data in events]
    numbers = [data["pass"] for name, data in events if name == "MIGRATION_PASS"]
    where = [i for i, (name, _) in enumerate(events) if name == "MIGRATION_PASS"]
    return all(names.index("active") < i < names.index("STOP") for i in where) and all(
        n == m + 1 for m, n in zip([1, *numbers], numbers, strict=False)
    )


def migrate(
    machines: list[Machine], table: Any, caps: dict[str, bool] | None = None
) -> dict[str, list[Event]]:
    dst, uri = dest(machines, config_table=table)
    src = make(machines, config_table=table, workload="random-writer,rate=2000,wss=1M")
    for m in (src, dst):
        for name, state in (caps or {}).items():  # one by one: switchover-ack after return-path
            m.set_capabilities({name: state})
    watches = {"src": Watch(src), "dst": Watch(dst)}
    src.migrate(uri)
    assert src.wait_migration(30).status.value == "completed"
    watches["dst"].wait_status("completed")
    return {name: list(watch.events) for name, watch in watches.items()}


def test_the_recording_is_11_1s_sequence() -> None:
    """What the test below holds ours to (and what 7.2's would fail)."""
    events = recorded()
    assert without_passes(events["src"]) == [
        ("MIGRATION", {"status": "setup"}),
        ("MIGRATION", {"status": "active"}),
        ("STOP", {}),
        ("MIGRATION", {"status": "device"}),
        ("MIGRATION", {"status": "completed"}),
    ]
    assert events["src"][2] == ("MIGRATION_PASS", {"pass": 2})
    assert events["dst"] == [
        ("MIGRATION", {"status": "active"}),
        ("RESUME", {}),
        ("MIGRATION", {"status": "completed"}),
    ]


def test_a_migration_sends_11_1s_events_in_11_1s_order(machines: list[Machine]) -> None:
    ours, qemu = migrate(machines, TABLE_11_1), recorded()
    for endpoint in ("src", "dst"):
        assert without_passes(ours[endpoint]) == without_passes(qemu[endpoint]), endpoint
        assert passes_in_place(ours[endpoint]), ours[endpoint]


def test_with_switchover_ack_the_sequence_is_the_same(machines: list[Machine]) -> None:
    qemu = recorded("switchover_ack")
    assert without_passes(qemu["src"]) == without_passes(recorded()["src"])
    ours = migrate(machines, TABLE_11_1, {"return-path": True, "switchover-ack": True})
    for endpoint in ("src", "dst"):
        assert without_passes(ours[endpoint]) == without_passes(qemu[endpoint]), endpoint
        assert passes_in_place(ours[endpoint]), ours[endpoint]


@pytest.mark.parametrize("case", ["file_events", "mapped_ram_events"])
def test_a_file_save_and_its_restore_send_11_1s_events(
    machines: list[Machine], tmp_path: Path, case: str
) -> None:
    qemu = recorded(case)
    assert qemu["dst"][0] == ("MIGRATION", {"status": "setup"})  # migrate-incoming, events on
    mapped_ram = {"mapped-ram": case == "mapped_ram_events"}
    src = make(machines, config_table=TABLE_11_1, workload="random-writer,rate=2000,wss=1M")
    src.set_capabilities(mapped_ram)
    watch = Watch(src)
    src.migrate(f"file:{tmp_path / 'x.img'}")
    assert src.wait_migration(30).status.value == "completed"
    dst = make(machines, config_table=TABLE_11_1, incoming="defer")
    dst.set_capabilities(mapped_ram)
    restored = Watch(dst)
    dst.migrate_incoming(f"file:{tmp_path / 'x.img'}")
    restored.wait_status("completed")
    ours = {"src": list(watch.events), "dst": list(restored.events)}
    for endpoint in ("src", "dst"):
        assert without_passes(ours[endpoint]) == without_passes(qemu[endpoint]), endpoint
        assert passes_in_place(ours[endpoint]), ours[endpoint]


def test_7_2_keeps_its_sequence(machines: list[Machine]) -> None:
    """7.2 announces every sync (setup's first) and has no device state without a pause."""
    src = migrate(machines, TABLE_7_2)["src"]
    assert src[:3] == [
        ("MIGRATION", {"status": "setup"}),
        ("MIGRATION_PASS", {"pass": 1}),
        ("MIGRATION", {"status": "active"}),
    ]
    assert ("MIGRATION", {"status": "device"}) not in src
    assert src[-2][0] == "MIGRATION_PASS" and src[-1] == ("MIGRATION", {"status": "completed"})
