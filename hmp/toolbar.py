"""The live migration status line: the REPL's bottom toolbar and `demo`'s progress line.

A pure function of one endpoint's snapshots (``query_migrate`` + ``query_status``), so it is
cheap to redraw a few times a second and easy to test. `info migrate` stays QEMU's; this is
the workshop view next to it.
"""

from __future__ import annotations

from prompt_toolkit.formatted_text import StyleAndTextTuples

from engine.machine import Machine
from engine.snapshot import MigrationInfo, StatusInfo
from engine.state import MigrationStatus, is_running

MiB = 1024 * 1024
BAR_CELLS = 20


def mib(nbytes: int) -> str:
    return f"{nbytes / MiB:.1f} MiB"


def percent_sent(info: MigrationInfo) -> float:
    """How much of guest RAM is clean at the destination now (resent pages count once)."""
    ram = info.ram
    if ram is None or ram.total == 0:
        return 0.0
    return 100.0 * (ram.total - ram.remaining) / ram.total


def bar(percent: float, cells: int = BAR_CELLS) -> str:
    full = round(percent / 100 * cells)
    return "█" * full + "░" * (cells - full)


def progress_segments(info: MigrationInfo, status: StatusInfo) -> StyleAndTextTuples:
    """(style class, text) pieces; their texts joined are the plain progress line."""
    state = info.status or MigrationStatus.NONE
    vm = f"VM {status.status}"
    if state is MigrationStatus.NONE:
        return [("class:toolbar", f"{vm} · no migration")]
    ram = info.ram
    head = ("class:toolbar.state", f"migration {state}")
    if ram is None:  # a destination: QEMU reports no figures there
        return [head, ("class:toolbar", f" · {vm}")]
    if is_running(state):
        pct = percent_sent(info)
        return [
            head,
            ("class:toolbar", " "),
            ("class:toolbar.bar", bar(pct)),
            ("class:toolbar", f" {pct:3.0f}% sent · {ram.mbps:.1f} mbps"),
            ("class:toolbar", f" · {mib(ram.remaining)} remaining"),
            ("class:toolbar", f" · expected downtime {info.expected_downtime or 0} ms"),
            ("class:toolbar", f" · {(info.total_time or 0) / 1000:.1f} s"),
        ]
    times = f" in {info.total_time} ms" if info.total_time is not None else ""
    down = f" · downtime {info.downtime} ms" if info.downtime is not None else ""
    return [head, ("class:toolbar", f"{times}{down} · {mib(ram.transferred)} sent · {vm}")]


def progress_text(info: MigrationInfo, status: StatusInfo) -> str:
    return "".join(text for _style, text, *_ in progress_segments(info, status))


def toolbar(machine: Machine) -> StyleAndTextTuples:
    """The bottom toolbar of an endpoint's REPL."""
    return progress_segments(machine.query_migrate(), machine.query_status())
