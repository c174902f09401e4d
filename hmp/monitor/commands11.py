"""QEMU 11.1's monitor command table: 7.2's entries where 11.1 kept them (commands.py), and
what 11.1 changed: `migrate` without block migration, `info migrate [-a]`, a
`migrate_set_parameter` value that is the rest of the line, and the postcopy commands, which
answer as QEMU 11.1 does without a postcopy migration."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from engine.errors import MigrationError
from engine.state import MigrationStatus
from engine.transport import UnknownProtocol, parse_uri
from hmp.monitor import commands, render11
from hmp.monitor.commands import Command
from hmp.monitor.parser import Args, find_command

if TYPE_CHECKING:
    from hmp.monitor.session import Monitor


def _kept(table: tuple[Command, ...], name: str) -> Command:
    cmd = find_command(table, name)
    assert cmd is not None, name
    return cmd


def hmp_info_migrate(mon: Monitor, args: Args) -> None:
    mon.printf(render11.info_migrate(mon.machine.query_migrate(), bool(args["all"])))


def hmp_migrate(mon: Monitor, args: Args) -> None:
    """11.1 parses the URI first: a URI it cannot use leaves no status behind."""
    uri = str(args["uri"])
    try:
        if not uri.startswith("file:"):  # a file is opened by the migration itself
            parse_uri(uri, incoming=False)
    except UnknownProtocol:
        raise MigrationError(f"unknown migration protocol: {uri}") from None
    mon.machine.migrate(uri, resume=bool(args["resume"]))
    if args["detach"] or not mon.can_suspend:  # human-monitor-command goes on detached, silently
        return
    info = mon.wait_migration()
    if info.status is MigrationStatus.FAILED and info.error_desc:
        mon.error_report(info.error_desc)


def _refuse(text: str) -> commands.Handler:
    """A postcopy command outside a postcopy migration: QEMU 11.1's error."""

    def handler(mon: Monitor, args: Args) -> None:
        raise MigrationError(text)

    return handler


# QEMU 11.1's errors for the postcopy commands outside a postcopy migration (HMP and QMP).
POSTCOPY_REFUSED = {
    "migrate_pause": "migrate-pause is currently only supported during postcopy-active or "
    "postcopy-recover state",
    "migrate_recover": "Migrate recover can only be run when postcopy is paused.",
    "migrate_start_postcopy": "Enable postcopy with migrate_set_capability before the start of "
    "migration",
}

MIGRATE_HELP = (
    "migrate to URI (using -d to not wait for completion)"
    "\n\t\t\t -r to resume a paused postcopy migration"
)

INFO_COMMANDS: tuple[Command, ...] = tuple(
    Command(
        "migrate",
        "all:-a",
        "[-a]",
        "show migration status (-a: all, dump all status)",
        hmp_info_migrate,
    )
    if sub.name == "migrate"
    else sub
    for sub in commands.INFO_COMMANDS
)

_SEVEN = commands.COMMANDS
COMMANDS: tuple[Command, ...] = (
    _kept(_SEVEN, "help"),
    replace(_kept(_SEVEN, "info"), sub_table=INFO_COMMANDS),
    *(_kept(_SEVEN, name) for name in ("stop", "cont", "quit")),
    Command("migrate", "detach:-d,resume:-r,uri:s", "[-d] [-r] uri", MIGRATE_HELP, hmp_migrate),
    *(_kept(_SEVEN, name) for name in ("migrate_cancel", "migrate_continue", "migrate_incoming")),
    Command(
        "migrate_pause",
        "",
        "",
        "Pause an ongoing migration (postcopy-only)",
        _refuse(POSTCOPY_REFUSED["migrate_pause"]),
    ),
    Command(
        "migrate_recover",
        "uri:s",
        "uri",
        "Continue a paused incoming postcopy migration",
        _refuse(POSTCOPY_REFUSED["migrate_recover"]),
    ),
    replace(
        _kept(_SEVEN, "migrate_start_postcopy"),
        handler=_refuse(POSTCOPY_REFUSED["migrate_start_postcopy"]),
    ),
    _kept(_SEVEN, "migrate_set_capability"),
    replace(_kept(_SEVEN, "migrate_set_parameter"), args_type="parameter:s,value:S"),
    *(_kept(_SEVEN, name) for name in ("pmemsave", "x_migrate_export", "x_migrate_chart")),
)
