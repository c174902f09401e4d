"""The README's quick start is what CI runs; its reference tables are generated."""

from __future__ import annotations

import re
from pathlib import Path

import readme_tables

ROOT = Path(__file__).resolve().parent.parent


def quick_start_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, re.S)


def test_quick_start_is_two_commands_then_examples():
    blocks = quick_start_blocks()
    assert len(blocks) >= 2
    assert "qemu-hmp demo" in blocks[0]
    assert "pytest" in blocks[1]


def ci_commands() -> list[str]:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_the_readme_test_command_first_then_the_qemu_tests():
    commands = ci_commands()
    setup = ["set -euo pipefail", 'cd "$(dirname "$0")/.."']
    assert commands[: len(setup) + 1] == [*setup, quick_start_blocks()[1]]
    rest = commands[len(setup) + 1 :]
    # The steps after it: QEMU 7.2, then 11.1, installed when missing, then the tests it
    # deselects for each.
    assert "apt-get install -y qemu-system-x86" in "\n".join(rest)
    assert "chroot_tool=../shared/tools/qemu-11.1-chroot" in rest
    assert rest.index(".venv/bin/python -m pytest -m qemu") < rest.index(
        "    .venv/bin/python -m pytest -m qemu11"
    )


def test_reference_tables_are_current():
    text = (ROOT / "README.md").read_text()
    assert readme_tables.render(text) == text, "run: python -m tests.readme_tables"
    assert text.count("<!-- generated: ") == len(readme_tables.BLOCKS)
