"""A machine's threads may report before the monitor exists: `-incoming exec:` runs its command
while the machine is built, and a stream that fails at once is reported from the incoming
thread. The report was dropped then (`notify` had no monitor yet): transcripts/save-restore.hmpt
lost its `load of migration failed` line 1 run in 8 under load. Now it waits for the monitor.
"""

from __future__ import annotations

import io

from engine.machine import Machine, MachineOptions
from hmp.cli import Notices
from hmp.monitor import Monitor


def test_a_report_before_the_monitor_exists_is_printed_when_it_does(
    machines: list[Machine],
) -> None:
    notices = Notices()
    notices.report("load of migration failed: truncated stream")  # no monitor yet
    machine = Machine(MachineOptions(ram_size=16 << 20))
    machines.append(machine)
    err = io.StringIO()
    notices.attach(Monitor(machine, out=io.StringIO(), err=err))
    notices.report("a later one")
    assert err.getvalue() == (
        "qemu-hmp: load of migration failed: truncated stream\nqemu-hmp: a later one\n"
    )
