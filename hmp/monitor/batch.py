"""Batch mode: commands from a pipe, each echoed after the prompt, so output reads as a session."""

from __future__ import annotations

import os
from collections.abc import Iterable

from hmp.markers import END_MARKER_ENV, PROMPT
from hmp.monitor.session import Monitor


def run_batch(mon: Monitor, lines: Iterable[str]) -> int:
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
