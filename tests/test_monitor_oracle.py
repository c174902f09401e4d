"""Replay every session recorded from QEMU 7.2 (tests/data/qemu-7.2/*.txt) against our monitor.

Each file starts ``# argv: QEMU OPTIONS``; then ``(qemu) CMD`` lines, each followed by QEMU's
exact output, ``# stderr: LINE`` lines for what QEMU wrote to stderr and ``# file: NAME SIZE``
lines for the files it wrote in its (scratch) working directory; ours runs in a scratch
directory too. Re-record with ``python tests/data/qemu-7.2/record.py``.

Two kinds of output are compared loosely, by design:
* listings (`help`, `help info`, bare `info`): we implement a subset of QEMU's commands, so our
  lines must appear in QEMU's, in QEMU's order; the lines of our extension commands (those the
  table marks ``extension``) are left out first;
* our one extension here, the hint after an underscore spelling (`Try "migrate_set_... x-y"`),
  is removed before comparing;
* commands the engine does not implement yet print "not implemented", and ENGINE_GAPS lists
  known engine differences; a case whose only differences are those (and what follows them) is
  skipped, naming them. A listed gap that matches QEMU fails the test, so the list stays honest.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.machine import Machine, MachineOptions
from hmp.cli import parse_size_mib
from hmp.monitor.commands import COMMANDS
from hmp.monitor.session import Monitor

DATA = Path(__file__).parent / "data" / "qemu-7.2"
CASES = sorted(DATA.glob("*.txt"))
# (case, command) → what the engine still does differently from QEMU.
ENGINE_GAPS: dict[tuple[str, str], str] = {}
UNDERSCORE_HINT = re.compile(r'^Try "migrate_set_(parameter|capability) [^"]*"\n', re.MULTILINE)


@dataclass
class Step:
    command: str
    output: str = ""
    stderr: list[str] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)  # name → size


def load(path: Path) -> tuple[MachineOptions, list[Step]]:
    first, *lines = path.read_text().split("\n")
    assert first.startswith("# argv: ")
    steps: list[Step] = []
    for line in lines[:-1] if lines and lines[-1] == "" else lines:
        if line.startswith("(qemu) "):
            steps.append(Step(line.removeprefix("(qemu) ")))
        elif line.startswith("# stderr: "):  # a hint line has no program name
            steps[-1].stderr.append(line[10:].removeprefix("qemu-system-x86_64: "))
        elif line.startswith("# file: "):
            name, size = line.removeprefix("# file: ").rsplit(" ", 1)
            steps[-1].files[name] = int(size)
        else:
            steps[-1].output += line + "\n"
    return options(first.removeprefix("# argv: ").split()), steps


def options(argv: list[str]) -> MachineOptions:
    """The QEMU options the oracle ran with, as MachineOptions."""
    opts: dict[str, object] = {}
    it = iter(argv)
    for arg in it:
        if arg == "-S":
            opts["start_paused"] = True
        elif arg == "-m":
            # No recorded case prints RAM figures; a small guest keeps the suite fast.
            opts["ram_size"] = min(parse_size_mib(next(it)), 16 << 20)
        elif arg == "-name":
            opts["name"] = next(it)
        elif arg == "-incoming":
            opts["incoming"] = next(it)
        else:
            raise AssertionError(f"unexpected oracle option {arg}")
    return MachineOptions(**opts)  # type: ignore[arg-type]


def is_listing(command: str) -> bool:
    return command.split() in (["help"], ["?"], ["info"], ["help", "info"], ["?", "info"])


def _extension_lines() -> frozenset[str]:
    """Every help line an extension command adds to a listing (QEMU has none of them)."""
    lines: set[str] = set()
    for cmd in COMMANDS:
        for prefix, entry in [("", cmd), *((f"{cmd.name} ", sub) for sub in cmd.sub_table)]:
            if entry.extension:
                lines.update(entry.help_line(prefix).splitlines())
    return frozenset(lines)


EXTENSION_LINES = _extension_lines()


def is_subsequence(ours: list[str], theirs: list[str]) -> bool:
    it = iter(theirs)
    return all(line in it for line in ours)


def written(folder: Path, before: dict[str, int]) -> dict[str, int]:
    """The files in ``folder`` created or resized since ``before`` (name → size)."""
    now = {path.name: path.stat().st_size for path in folder.iterdir()}
    return {name: size for name, size in sorted(now.items()) if before.get(name) != size}


def show(files: dict[str, int]) -> str:
    return "".join(f"# file: {name} {size}\n" for name, size in files.items())


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_matches_qemu(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opts, steps = load(path)
    monkeypatch.chdir(tmp_path)  # where the cases' relative file names land, as QEMU's did
    files: dict[str, int] = {}
    out, err = io.StringIO(), io.StringIO()
    # Engine reports reach the monitor's error stream, as the CLI wires them.
    machine = Machine(opts, notify=lambda message: mon.error_report(message))
    mon = Monitor(machine, out, err)
    failures: list[str] = []
    pending: list[str] = []  # differences from engine features still missing, and what follows
    try:
        for step in steps:
            out.seek(0), out.truncate(), err.seek(0), err.truncate()
            mon.execute(step.command)
            got, got_err = UNDERSCORE_HINT.sub("", out.getvalue()), err.getvalue()
            new = written(tmp_path, files)
            files.update(new)
            if is_listing(step.command) and got:
                ours = [line for line in got.splitlines() if line not in EXTENSION_LINES]
                ok = is_subsequence(ours, step.output.splitlines())
            else:
                ours_err = {line.removeprefix("qemu-hmp: ") for line in got_err.splitlines()}
                ok = got == step.output and ours_err == set(step.stderr) and new == step.files
            gap = ENGINE_GAPS.get((path.stem, step.command))
            if ok:
                if gap and not pending:
                    failures.append(
                        f"(qemu) {step.command}: matches QEMU now, drop its ENGINE_GAPS entry"
                    )
                continue
            theirs, ours_all = step.output + show(step.files), got + got_err + show(new)
            entry = f"(qemu) {step.command}\n--- qemu\n{theirs}--- ours\n{ours_all}"
            known = pending or gap or "not implemented" in got
            (pending if known else failures).append(entry)
    finally:
        machine.close()
    assert not failures, "\n".join(failures)
    assert not pending, "engine pending: " + "; ".join(p.splitlines()[0] for p in pending)
