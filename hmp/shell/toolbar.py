"""The live migration status line: the REPL's bottom toolbar and `demo`'s progress line.

A pure function of a Progress value (from an endpoint's snapshot, or from another process's
`query-migrate`), so it is cheap to redraw a few times a second and easy to test. `info migrate`
stays QEMU's; this is the workshop view next to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from engine.machine import Machine
from engine.snapshot import MigrationInfo
from engine.state import RUNNING_STATES, MigrationStatus

if TYPE_CHECKING:  # the demo's progress line uses this module without prompt_toolkit
    from prompt_toolkit.formatted_text import StyleAndTextTuples

MiB = 1024 * 1024
BAR_CELLS = 20


def mib(nbytes: int) -> str:
    return f"{nbytes / MiB:.1f} MiB"


@dataclass(frozen=True)
class Progress:
    """What the status line shows of one migration: from an endpoint's snapshot (the REPL) or
    from another process's `query-migrate` over QMP (`demo`, which drives processes)."""

    status: str
    total: int | None = None  # bytes of guest RAM; None when there are no RAM figures
    remaining: int = 0
    transferred: int = 0
    mbps: float = 0.0
    elapsed_ms: int = 0
    expected_downtime_ms: int = 0
    downtime_ms: int | None = None

    @classmethod
    def from_info(cls, info: MigrationInfo) -> Progress:
        progress = cls(
            str(info.status or MigrationStatus.NONE),
            elapsed_ms=info.total_time or 0,
            expected_downtime_ms=info.expected_downtime or 0,
            downtime_ms=info.downtime,
        )
        ram = info.ram
        if ram is None:
            return progress
        return replace(
            progress,
            total=ram.total,
            remaining=ram.remaining,
            transferred=ram.transferred,
            mbps=ram.mbps,
        )

    @classmethod
    def from_query_migrate(cls, info: Mapping[str, Any]) -> Progress:
        """From a `query-migrate` answer (QEMU's JSON: bytes, ms, absent members absent)."""
        progress = cls(
            str(info.get("status", MigrationStatus.NONE)),
            elapsed_ms=info.get("total-time", 0),
            expected_downtime_ms=info.get("expected-downtime", 0),
            downtime_ms=info.get("downtime"),
        )
        ram = info.get("ram")
        if ram is None:
            return progress
        return replace(
            progress,
            total=ram["total"],
            remaining=ram["remaining"],
            transferred=ram["transferred"],
            mbps=ram["mbps"],
        )

    @property
    def percent(self) -> float:
        """How much of guest RAM is in sync at the destination now: it drops when a dirty
        sync finds pages written again, so the toolbar says "in sync", not "sent"."""
        if not self.total:
            return 0.0
        return 100.0 * (self.total - self.remaining) / self.total


def bar(percent: float, cells: int = BAR_CELLS) -> str:
    full = round(percent / 100 * cells)
    return "█" * full + "░" * (cells - full)


def progress_segments(p: Progress, vm: str | None = None) -> StyleAndTextTuples:
    """(style class, text) pieces; their texts joined are the plain progress line."""
    vm_text = f" · VM {vm}" if vm else ""
    if p.status == MigrationStatus.NONE:
        return [("class:toolbar", f"VM {vm} · no migration" if vm else "no migration")]
    head = ("class:toolbar.state", f"migration {p.status}")
    if p.total is None:  # a destination: QEMU reports no figures there
        return [head, ("class:toolbar", vm_text)]
    if p.status in RUNNING_STATES:
        return [
            head,
            ("class:toolbar", " "),
            ("class:toolbar.bar", bar(p.percent)),
            ("class:toolbar", f" {p.percent:3.0f}% in sync · {p.mbps:.1f} mbps"),
            ("class:toolbar", f" · {mib(p.remaining)} remaining"),
            ("class:toolbar", f" · expected downtime {p.expected_downtime_ms} ms"),
            ("class:toolbar", f" · {p.elapsed_ms / 1000:.1f} s"),
        ]
    down = f" · downtime {p.downtime_ms} ms" if p.downtime_ms is not None else ""
    text = f" in {p.elapsed_ms} ms{down} · {mib(p.transferred)} sent{vm_text}"
    return [head, ("class:toolbar", text)]


def progress_text(p: Progress, vm: str | None = None) -> str:
    return "".join(text for _style, text, *_ in progress_segments(p, vm))


def toolbar(machine: Machine) -> StyleAndTextTuples:
    """The bottom toolbar of an endpoint's REPL."""
    progress = Progress.from_info(machine.query_migrate())
    return progress_segments(progress, str(machine.query_status().status))
