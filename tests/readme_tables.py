"""The README's tables, generated from the tables the code runs on, so they cannot drift.

``python -m tests.readme_tables`` rewrites every block of README.md between
``<!-- generated: NAME ... -->`` and ``<!-- end: NAME -->``; tests/test_readme.py fails when a
block differs from what this module generates.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

from engine.params import CAPABILITIES, PARAMETERS, Kind
from hmp.monitor import valid_text
from hmp.monitor.commands import COMMANDS, Command
from hmp.qmp import server as qmp
from hmp.shell.completion import show_value

README = Path(__file__).resolve().parent.parent / "README.md"
EXTENSION = " *(extension)*"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a table cell, code spans included, needs `\|`


def _table(header: str, rows: Iterator[tuple[str, ...]]) -> str:
    columns = header.count("|") - 1
    lines = [header, "|" + "---|" * columns]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _listed(cmd: Command, prefix: str = "") -> tuple[str, str]:
    usage = f"`{prefix}{cmd.name} {cmd.params}".rstrip() + "`"
    meaning = cmd.help.split("\n", 1)[0] + (EXTENSION if cmd.extension else "")
    return usage, meaning


def _commands() -> Iterator[tuple[str, ...]]:
    for cmd in COMMANDS:
        yield _listed(cmd)
        yield from (_listed(sub, f"{cmd.name} ") for sub in cmd.sub_table)


def _parameters() -> Iterator[tuple[str, ...]]:
    for spec in PARAMETERS:
        default = "(unset)" if spec.kind is Kind.QMP_ONLY else show_value(spec, spec.default)
        note = EXTENSION if spec.extension else ""
        if not spec.printed and not spec.extension:
            note = " *(not printed by QEMU 7.2)*"
        yield f"`{spec.name}`", default, valid_text(spec), spec.doc + note


def _capabilities() -> Iterator[tuple[str, ...]]:
    for cap in CAPABILITIES:
        done = "yes" if cap.supported else "stored, refused at `migrate`"
        if cap.refused_because:
            done += f": {cap.refused_because}"
        yield f"`{cap.name}`", done, cap.doc + (EXTENSION if cap.extension else "")


BLOCKS: dict[str, Callable[[], str]] = {
    "commands": lambda: _table("| command | help |", _commands()),
    "parameters": lambda: _table("| parameter | default | valid | meaning |", _parameters()),
    "capabilities": lambda: _table("| capability | implemented | meaning |", _capabilities()),
    "qmp-commands": lambda: ", ".join(f"`{name}`" for name in qmp.COMMANDS),
}
_BLOCK = re.compile(r"(<!-- generated: (\S+) [^\n]*-->\n)(.*?)(<!-- end: \2 -->)", re.S)


def render(text: str) -> str:
    """``text`` with every generated block made anew (an unknown block name is an error)."""
    return _BLOCK.sub(lambda m: f"{m.group(1)}{BLOCKS[m.group(2)]()}\n{m.group(4)}", text)


def main() -> None:
    README.write_text(render(README.read_text()))


if __name__ == "__main__":
    main()
