"""Batch mode: commands from a pipe, each echoed after the prompt, so output reads as a session."""

from __future__ import annotations

import os
from collections.abc import Iterable

from hmp.monitor import PROMPT, Monitor

# Opt-in for programs driving qemu-hmp over a pipe (hmp/endpoint.py): when this variable is set,
# its value is printed on a line of its own after each command's output. A monitor prints
# nothing at the end of a command, so without it a driver could not tell "done" from "slow".
END_MARKER_ENV = "QEMU_HMP_END_MARKER"


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
