"""The QEMU 11.1 recordings (tests/data/qemu-11.1/) are whole and are of their cases.

The oracle tests come with the 11.1 dialect; until then this holds the data to its format:
each case has a recording whose argv and commands are the case's, in order; no recording
carries a recorder error; each QMP session parses and comes from QEMU 11.1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "data"))  # the recorder is not a package
from hmp_recorder import EXIT, UNTIL, Case, Recording

ORACLE = Path(__file__).parent / "data" / "qemu-11.1"
CASES = sorted((ORACLE / "cases").glob("*.cmds"))
SESSIONS = sorted((ORACLE / "qmp").glob("*.jsonl"))


def test_every_case_is_recorded_and_every_recording_has_a_case() -> None:
    assert len(CASES) >= 20
    assert {p.stem for p in CASES} == {p.stem for p in ORACLE.glob("*.txt")}


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_recording_is_of_its_case(case: Path) -> None:
    expected = Case.parse(case.read_text())
    recording = Recording.parse((ORACLE / f"{case.stem}.txt").read_text())
    assert not recording.error, recording.error
    assert recording.argv == {name: " ".join(args) for name, args in expected.argv.items()}
    commands = [(step.endpoint, step.typed) for step in recording.steps]
    assert commands, "no command recorded"
    # What was typed: an `@until` poll is stored once, as the command it repeated; `@exit`
    # types nothing.
    typed = [(name, cmd.split(UNTIL)[0]) for name, cmd in expected.steps if cmd != EXIT]
    assert commands == typed


def test_banners_are_qemu_11_1() -> None:
    banners = {
        line
        for path in ORACLE.glob("*.txt")
        for line in path.read_text().splitlines()
        if line.startswith("# banner: ")
    }
    assert banners == {"# banner: QEMU 11.1.3 monitor - type 'help' for more information"}


@pytest.mark.parametrize("session", SESSIONS, ids=lambda p: p.stem)
def test_qmp_session_parses(session: Path) -> None:
    records = [json.loads(line) for line in session.read_text().splitlines()]
    assert "argv" in records[0]
    greetings = [r["greeting"] for r in records if "greeting" in r]
    assert greetings, "no greeting"
    assert {g["QMP"]["version"]["qemu"]["major"] for g in greetings} == {11}
    assert any("send" in r for r in records)
    assert all(r.keys() <= {"argv", "greeting", "send", "recv", "raw", "endpoint"} for r in records)


@pytest.mark.parametrize("name", ["schema.json", "schema-7.2.json"])
def test_schema_extracts_hold_the_migration_commands(name: str) -> None:
    picked = json.loads((ORACLE / "qmp" / name).read_text())
    assert {"migrate", "query-migrate", "migrate-set-parameters"} <= picked["commands"].keys()
    assert "MIGRATION" in picked["events"]
