"""Batch mode: commands from a pipe, each echoed after the prompt, so output reads as a session."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Protocol, TextIO

from hmp.markers import END_MARKER_ENV, PROMPT


class LineMonitor(Protocol):
    """What batch mode needs of a monitor: ours (Monitor), or the shell's in front of a QEMU."""

    quit_requested: bool

    @property
    def out(self) -> TextIO: ...

    def printf(self, text: str) -> None: ...

    def execute(self, line: str) -> None: ...


def run_batch(mon: LineMonitor, lines: Iterable[str]) -> int:
    """Run each line as `(qemu) LINE` plus its output; stop at the end or at `quit`."""
    marker = os.environ.get(END_MARKER_ENV)
    for raw in lines:
        line = raw.removesuffix("\n").removesuffix("\r")
        mon.printf(f"{PROMPT}{line}\n")
        mon.execute(line)
        if marker:
            mon.printf(f"{marker}\n")
            mon.out.flush()
        if mon.quit_requested:
            break
    return 0
