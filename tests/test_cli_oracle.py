"""Replay the command lines recorded from QEMU 7.2 (tests/data/qemu-7.2/cli.argv.out) against ours.

Each case ran QEMU with the case's options and ``quit`` on stdin; ours runs the same options in
process, in a scratch directory, with ``quit`` on stdin too. What QEMU wrote to stderr must be
what we write, line for line, with ``qemu-system-x86_64: `` read as ``qemu-hmp: ``, and the
exit status must match. Re-record with ``python tests/data/qemu-7.2/record_cli.py``.
"""

from __future__ import annotations

import importlib.util
import io
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hmp.cli import main

DATA = Path(__file__).parent / "data" / "qemu-7.2"
_spec = importlib.util.spec_from_file_location("record_cli", DATA / "record_cli.py")
assert _spec is not None and _spec.loader is not None
RECORDER = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(RECORDER)  # its argv() is the rule for what a case runs with


@dataclass
class Case:
    options: list[str]
    stderr: list[str] = field(default_factory=list)
    status: int = 0


def load(path: Path = DATA / "cli.argv.out") -> list[Case]:
    cases: list[Case] = []
    for line in path.read_text().splitlines():
        if line.startswith("$ "):
            cases.append(Case(shlex.split(line[2:])))
        elif line.startswith("# stderr: "):
            cases[-1].stderr.append(line[10:].replace("qemu-system-x86_64: ", "qemu-hmp: ", 1))
        else:
            cases[-1].status = int(line.removeprefix("# exit "))
    return cases


CASES = load()


@pytest.mark.parametrize("case", CASES, ids=[shlex.join(c.options) for c in CASES])
def test_command_line_matches_qemu(
    case: Case,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # where the cases' relative socket paths land, as QEMU's did
    monkeypatch.setattr(sys, "stdin", io.StringIO("quit\n"))
    status = main(RECORDER.argv(case.options))
    assert (capsys.readouterr().err.splitlines(), status) == (case.stderr, case.status)


def test_every_case_was_recorded() -> None:
    assert [case.options for case in CASES] == RECORDER.load_cases()
