"""What the shell completes and highlights in front of a real QEMU reached with ``--connect``:
the monitor dialect of the release its QMP greeting names (hmp/monitor/dialect.py), with
qemu-hmp's extensions taken out but for the shell's local commands (``x_migrate_chart``,
``x_migrate_export``, computed from polled ``query-migrate``). qemu-hmp's own monitor uses
its dialect whole.

``dialect_for`` is the one place a QEMU version becomes a dialect: a release is added by
adding it to the monitor's DIALECTS.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache

from hmp.monitor import DIALECTS, Command, Dialect

# Extension commands the shell runs itself in front of a real QEMU (hmp/shell/connect.py).
LOCAL_COMMANDS = frozenset({"x_migrate_chart", "x_migrate_export"})


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
def _qemus(release: str) -> Dialect:
    ours = DIALECTS[release]
    table = replace(
        ours.table,
        parameters=tuple(spec for spec in ours.table.parameters if not spec.extension),
        capabilities=tuple(cap for cap in ours.table.capabilities if not cap.extension),
    )
    return replace(ours, commands=_qemu_commands(ours.commands), table=table)


def _key(release: str) -> tuple[int, ...]:
    return tuple(int(n) for n in release.split("."))


def dialect_for(version: tuple[int, int]) -> Dialect:
    """That release's dialect, or the newest release before it (a QEMU newer than every
    release speaks at least that one's monitor), or the oldest for an older QEMU."""
    releases = sorted(DIALECTS, key=_key)
    known = [release for release in releases if _key(release) <= version] or releases[:1]
    return _qemus(known[-1])
