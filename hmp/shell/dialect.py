"""What the shell completes and highlights: the commands, capabilities and parameters of one
monitor. qemu-hmp's own has its extensions; a QEMU reached with ``--connect`` has its release's
(the version its QMP greeting names), plus the shell's local commands (``x_migrate_chart``,
``x_migrate_export``, computed from polled ``query-migrate``).

``dialect_for`` is the one place a version becomes a dialect: a release is added by adding a
row to RELEASES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache

from engine.params import CAPABILITIES, PARAMETERS, CapabilitySpec, ParamSpec
from hmp.monitor import COMMANDS, Command

# Extension commands the shell runs itself in front of a real QEMU (hmp/shell/connect.py).
LOCAL_COMMANDS = frozenset({"x_migrate_chart", "x_migrate_export"})


@dataclass(frozen=True)
class Dialect:
    version: str  # "7.2", or "qemu-hmp" for our own monitor
    commands: tuple[Command, ...]
    capabilities: tuple[CapabilitySpec, ...]
    parameters: tuple[ParamSpec, ...]

    def parameter(self, name: str) -> ParamSpec | None:
        return next((spec for spec in self.parameters if spec.name == name), None)


def _qemu_commands(table: tuple[Command, ...]) -> tuple[Command, ...]:
    """QEMU's commands of ``table``: its extensions go, sub-tables too (`info x_...`)."""
    kept = []
    for cmd in table:
        if cmd.extension and cmd.name not in LOCAL_COMMANDS:
            continue
        subs = tuple(sub for sub in cmd.sub_table if not sub.extension)
        kept.append(replace(cmd, sub_table=subs) if cmd.sub_table else cmd)
    return tuple(kept)


@cache  # one Dialect per release, whatever version asked for it
def _qemu_7_2() -> Dialect:
    return Dialect(
        "7.2",
        _qemu_commands(COMMANDS),
        tuple(cap for cap in CAPABILITIES if not cap.extension),
        tuple(spec for spec in PARAMETERS if not spec.extension),
    )


# (major, minor) of a QEMU release → its dialect, oldest first.
RELEASES: dict[tuple[int, int], Callable[[], Dialect]] = {(7, 2): _qemu_7_2}
OURS = Dialect("qemu-hmp", COMMANDS, CAPABILITIES, PARAMETERS)


def dialect_for(version: tuple[int, int] | None = None) -> Dialect:
    """qemu-hmp's own dialect for None; for a QEMU version, that release's, or the newest
    release before it (a QEMU newer than every row speaks at least that one's monitor), or
    the oldest row for an older QEMU."""
    if version is None:
        return OURS
    known = [release for release in RELEASES if release <= version] or [min(RELEASES)]
    return RELEASES[max(known)]()
