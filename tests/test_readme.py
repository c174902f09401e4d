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


def test_ci_runs_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    assert quick_start_blocks()[1] in script


def test_reference_tables_are_current():
    text = (ROOT / "README.md").read_text()
    assert readme_tables.render(text) == text, "run: python -m tests.readme_tables"
    assert text.count("<!-- generated: ") == len(readme_tables.BLOCKS)
