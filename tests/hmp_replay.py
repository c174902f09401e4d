"""Replaying a recorded QEMU 7.2 HMP session (tests/data/hmp_recorder.py's text) on our
machines: the recorded steps, and a machine behind a monitor to run them on."""

from __future__ import annotations

import io
from collections.abc import Callable

from test_machine import Watch

from engine.machine import Machine, MachineOptions
from hmp.monitor import Monitor


def steps(text: str) -> list[tuple[str, str]]:
    """(command, output) of each recorded step; comments and stderr lines dropped."""
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        if line.startswith("(qemu) "):
            out.append((line.removeprefix("(qemu) "), ""))
        elif out and not line.startswith("# "):
            out[-1] = (out[-1][0], out[-1][1] + line + "\n")
    return out


class Side:
    """One of our machines behind a monitor; ``run`` gives one command's output alone."""

    def __init__(
        self,
        opts: MachineOptions,
        *,
        events: bool = False,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.machine = Machine(opts, notify=notify)
        if events:
            self.machine.set_capabilities({"events": True})  # to wait on; `info` never shows it
        self.out = io.StringIO()
        self.mon = Monitor(self.machine, self.out, io.StringIO())
        self.watch = Watch(self.machine)

    def run(self, command: str) -> str:
        self.out.seek(0), self.out.truncate()
        self.mon.execute(command)
        return self.out.getvalue()
