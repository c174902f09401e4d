"""Starting with 2 GiB: before its first prompt qemu-hmp shows what QEMU 7.2 prints, no more.

Filling a 2 GiB guest takes a moment (QEMU's RAM stays empty until its guest boots); QEMU
says nothing meanwhile, so neither does qemu-hmp: QEMU's lines, then only the shell's status
line (the toolbar, README) on the screen's last row. The oracle is QEMU's own start, recorded by
tests/data/qemu-7.2/start/record.py; the screen is read through a terminal emulator.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_repl_tty import Terminal

from hmp.monitor import QEMU_VERSION

pytestmark = pytest.mark.tty

START = Path(__file__).parent / "data" / "qemu-7.2" / "start"


def qemu_start(name: str) -> tuple[list[str], list[str]]:
    """QEMU's options and the lines it printed up to its first prompt. qemu-hmp's banner names
    the release whose monitor it reproduces (7.2.0), not the installed micro release."""
    first, text = (START / f"{name}.txt").read_text().split("\n", 1)
    lines = [line for line in text.splitlines() if not line.startswith("# ")]
    banner = re.sub(r"^QEMU 7\.2\.\d+ monitor", f"QEMU {QEMU_VERSION} monitor", lines[0])
    return first.removeprefix("# argv: ").split(), [banner, *lines[1:]]


def test_a_2g_guest_starts_as_qemu_does(term: Terminal) -> None:
    args, lines = qemu_start("m2G")
    assert lines[-1] == "(qemu) "
    term.start(*args)
    after_prompt = (len(lines) - 1, len(lines[-1]))  # typing goes where QEMU's would

    def settled(screen: str) -> bool:
        """The cursor after the prompt and our status line on the last row: prompt_toolkit
        first draws its toolbar under the prompt, then, once the terminal has answered where
        the cursor is, at the bottom of the screen; only that last layout is stable."""
        at_prompt = (term.screen_.cursor.y, term.screen_.cursor.x) == after_prompt
        return at_prompt and "no migration" in screen.splitlines()[-1]

    shown = term.wait_until(settled, "the cursor after the prompt, the toolbar at the bottom")
    rows = shown.splitlines()
    assert rows[: len(lines)] == [line.rstrip() for line in lines]
    assert not any(rows[len(lines) : -1])  # nothing between the prompt and our status line
    assert rows[-1] == "VM running · no migration"
    term.keys("quit", "Enter")
    term.wait_exit()
