"""Batch mode: commands from a pipe, each echoed after the prompt, so output reads as a session."""

from __future__ import annotations

from collections.abc import Iterable

from hmp.monitor import PROMPT, Monitor


def run_batch(mon: Monitor, lines: Iterable[str]) -> int:
    """Run each line as `(qemu) LINE` plus its output; stop at the end or at `quit`."""
    for raw in lines:
        line = raw.removesuffix("\n").removesuffix("\r")
        mon.printf(f"{PROMPT}{line}\n")
        mon.execute(line)
        if mon.quit_requested:
            break
    return 0
