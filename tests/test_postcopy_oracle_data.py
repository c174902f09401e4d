"""The QEMU 7.2 postcopy recordings (tests/data/qemu-7.2/postcopy/) are whole and are of
their cases: the suite holds the folder to its format until oracle tests replay it.

Each case has a recording and each recording a case; the recorded options, commands and
recorder actions (@kill, @stop, @cont, @cut) are the case's, in order; no recording carries a
recorder error; each polled output matches the pattern it was polled for; every migration
status is one QEMU 7.2 prints; each QMP session parses and comes from QEMU 7.2; the README
describes every case and session.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "data"))  # the recorder is not a package
from hmp_recorder import ACTIONS, EXIT, UNTIL, Case, Recording

ORACLE = Path(__file__).parent / "data" / "qemu-7.2" / "postcopy"
CASES = sorted((ORACLE / "cases").glob("*.cmds"))
SESSIONS = sorted(ORACLE.glob("*.jsonl"))
# QEMU 7.2's MigrationStatus values, as `info migrate` prints them.
STATUSES = {
    "none", "setup", "cancelling", "cancelled", "active", "postcopy-active", "postcopy-paused",
    "postcopy-recover", "completed", "failed", "colo", "pre-switchover", "device", "wait-unplug",
}  # fmt: skip


def test_every_case_is_recorded_and_every_recording_has_a_case() -> None:
    assert len(CASES) >= 10
    assert {p.stem for p in CASES} == {p.stem for p in ORACLE.glob("*.txt")}


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_recording_is_of_its_case(case: Path) -> None:
    expected = Case.parse(case.read_text())
    recording = Recording.parse((ORACLE / f"{case.stem}.txt").read_text())
    assert not recording.error
    assert recording.argv == {name: " ".join(args) for name, args in expected.argv.items()}
    # What was typed, and the actions between: an `@until` poll is stored once, as the
    # command it repeated; `@exit` types nothing and leaves no step of its own.
    steps = [(name, cmd.split(UNTIL)[0]) for name, cmd in expected.steps if cmd != EXIT]
    assert [(s.endpoint, s.typed) for s in recording.steps] == steps
    polled = [cmd.split(UNTIL)[1] for _, cmd in expected.steps if UNTIL in cmd]
    assert [s.until for s in recording.steps if s.until] == polled


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_each_poll_ended_on_a_matching_output(case: Path) -> None:
    for step in Recording.parse((ORACLE / f"{case.stem}.txt").read_text()).steps:
        if step.until:
            assert re.search(step.until, step.output, re.MULTILINE), (step.typed, step.until)
        assert step.typed in ACTIONS or not step.typed.startswith("@")


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_statuses_are_qemu_7_2s(case: Path) -> None:
    text = (ORACLE / f"{case.stem}.txt").read_text()
    found = set(re.findall(r"^Migration status: (\S+)", text, re.MULTILINE))
    assert found <= STATUSES


@pytest.mark.parametrize("session", SESSIONS, ids=lambda p: p.stem)
def test_qmp_session_parses(session: Path) -> None:
    records = [json.loads(line) for line in session.read_text().splitlines()]
    greetings = [r["greeting"] for r in records if "greeting" in r]
    assert greetings, "no greeting"
    assert {g["QMP"]["version"]["qemu"]["major"] for g in greetings} == {7}
    assert any("send" in r for r in records)
    assert all(
        r.keys() <= {"argv", "greeting", "send", "recv", "endpoint", "note"} for r in records
    )
    statuses = {r["recv"]["data"]["status"] for r in records if _event(r) == "MIGRATION"}
    assert statuses <= STATUSES
    pair = any("endpoint" in r for r in records)  # two QEMUs migrating, with events on
    assert bool(statuses) == pair


def _event(record: dict[str, object]) -> object:
    recv = record.get("recv")
    return recv.get("event") if isinstance(recv, dict) else None


def test_readme_describes_every_case_and_session() -> None:
    readme = (ORACLE / "README.md").read_text()
    for name in [p.stem for p in (*CASES, *SESSIONS)]:
        assert f"`{name}`" in readme, name
