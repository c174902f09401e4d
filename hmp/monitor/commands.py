"""The command table, in the spirit of QEMU's hmp-commands.hx, and the handlers it names.

Each entry keeps QEMU's fields (name with ``|`` aliases, args_type, params, help). The parser,
`help`, completion and highlighting all derive from this table. Handlers are thin:
parse result → engine call → QEMU's format; they write to the monitor, never to stdout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from engine.errors import MigrationError, ReportedFailure, file_errors
from engine.state import MigrationStatus
from engine.stats import Sample
from hmp.monitor import chart, render, series
from hmp.monitor.parser import Args, ArgSpec, find_command, parse_args_type, split_words

if TYPE_CHECKING:
    from hmp.monitor.session import Monitor

Handler = Callable[["Monitor", Args], None]

QEMU_VERSION = "7.2.0"  # the release whose monitor this one reproduces


def package_version() -> str:
    try:
        return version("qemu-hmp")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Command:
    name: str  # "stop|s": the first spelling, then aliases
    args_type: str
    params: str
    help: str
    handler: Handler
    sub_table: tuple[Command, ...] = ()
    extension: bool = False  # not in QEMU 7.2: listed by `help`, left out of oracle comparisons

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(self.name.split("|"))

    @cached_property
    def args(self) -> tuple[ArgSpec, ...]:
        return parse_args_type(self.args_type)

    def help_line(self, prefix: str = "") -> str:
        return f"{prefix}{self.name} {self.params} -- {self.help}\n"


# -- help -------------------------------------------------------------------------------------
def _help_list(mon: Monitor, table: tuple[Command, ...], prefix: str = "") -> None:
    for cmd in sorted(table, key=lambda c: c.name):
        mon.printf(cmd.help_line(prefix))


def hmp_help(mon: Monitor, args: Args) -> None:
    words = split_words(str(args.get("name") or ""))
    if not words:
        _help_list(mon, mon.dialect.commands)
        return
    cmd = find_command(mon.dialect.commands, words[0])
    if cmd is None:
        mon.printf(f"unknown command: '{words[0]}'\n")
    elif not cmd.sub_table:
        mon.printf(cmd.help_line())
    elif len(words) == 1:
        _help_list(mon, cmd.sub_table, f"{cmd.name} ")
    else:
        sub = find_command(cmd.sub_table, words[1])
        if sub is None:
            mon.printf(f"unknown command: '{words[0]} {words[1]}'\n")
        else:
            mon.printf(sub.help_line(f"{cmd.name} "))


# -- info -------------------------------------------------------------------------------------
def hmp_info(mon: Monitor, args: Args) -> None:
    """Bare `info` lists its sub-commands, like `help info`."""
    _help_list(mon, mon.dialect.info_commands, "info ")


def hmp_info_migrate(mon: Monitor, args: Args) -> None:
    mon.printf(render.info_migrate(mon.machine.query_migrate()))


def hmp_info_migrate_capabilities(mon: Monitor, args: Args) -> None:
    caps, table = mon.machine.config.capabilities(), mon.machine.config.table
    public = {name: on for name, on in caps.items() if not table.caps_by_name[name].extension}
    mon.printf(render.info_migrate_capabilities(public))


def hmp_info_migrate_parameters(mon: Monitor, args: Args) -> None:
    config = mon.machine.config
    mon.printf(render.info_migrate_parameters(config.params(), config.table.parameters))


def hmp_info_status(mon: Monitor, args: Args) -> None:
    mon.printf(render.info_status(mon.machine.query_status()))


def hmp_info_x_compress_policy(mon: Monitor, args: Args) -> None:
    mon.printf(render.info_compress_policy(mon.machine.query_compress_policy()))


def hmp_info_version(mon: Monitor, args: Args) -> None:
    mon.printf(f"{mon.dialect.version} (qemu-hmp {package_version()})\n")


def hmp_info_name(mon: Monitor, args: Args) -> None:
    if mon.machine.opts.name is not None:
        mon.printf(f"{mon.machine.opts.name}\n")


def hmp_info_uuid(mon: Monitor, args: Args) -> None:
    mon.printf(f"{mon.machine.uuid}\n")


# -- configuration ----------------------------------------------------------------------------
def _unknown_name(name: str, known: dict[str, object], example: str) -> MigrationError:
    """QEMU's error; plus, for an old underscore spelling, a line naming the QEMU one."""
    hyphenated = name.replace("_", "-")
    hint = ""
    if hyphenated != name and hyphenated in known:
        hint = f'Try "{example.format(hyphenated)}"\n'
    return MigrationError(f"invalid parameter value: {name}", hint=hint)


def hmp_migrate_set_capability(mon: Monitor, args: Args) -> None:
    name, state = str(args["capability"]), bool(args["state"])
    known = mon.machine.config.table.caps_by_name
    if name not in known:
        raise _unknown_name(name, dict(known), "migrate_set_capability {} " + _onoff(state))
    mon.machine.set_capabilities({name: state})


def _onoff(state: bool) -> str:
    return "on" if state else "off"


def hmp_migrate_set_parameter(mon: Monitor, args: Args) -> None:
    name, text = str(args["parameter"]), str(args["value"])
    known = mon.machine.config.table.params_by_name
    spec = known.get(name)
    if spec is None:
        raise _unknown_name(name, dict(known), "migrate_set_parameter {} " + text)
    mon.machine.set_parameters({name: mon.dialect.parse_parameter(spec, text, mon.warn_report)})


# -- migration --------------------------------------------------------------------------------
def hmp_migrate(mon: Monitor, args: Args) -> None:
    flags = {key: bool(args[key]) for key in ("blk", "inc", "resume")}
    try:
        mon.machine.migrate(str(args["uri"]), **flags)
    except ReportedFailure as exc:  # QEMU's error_report writes to the monitor, no "Error: "
        mon.printf(f"{exc.desc}\n")
        return
    if not args["detach"]:
        if not mon.can_suspend:
            mon.printf("terminal does not allow synchronous migration, continuing detached\n")
            return
        info = mon.wait_migration()
        if info.status is MigrationStatus.FAILED and info.error_desc:
            mon.error_report(info.error_desc)


def hmp_migrate_cancel(mon: Monitor, args: Args) -> None:
    mon.machine.migrate_cancel()


def hmp_migrate_incoming(mon: Monitor, args: Args) -> None:
    mon.machine.migrate_incoming(str(args["uri"]))


def hmp_migrate_start_postcopy(mon: Monitor, args: Args) -> None:
    mon.machine.migrate_start_postcopy()


def hmp_migrate_pause(mon: Monitor, args: Args) -> None:
    mon.machine.migrate_pause()


def hmp_migrate_recover(mon: Monitor, args: Args) -> None:
    mon.machine.migrate_recover(str(args["uri"]))


def hmp_migrate_continue(mon: Monitor, args: Args) -> None:
    state = str(args["state"])
    if state not in MigrationStatus.__members__.values():
        raise MigrationError(f"invalid parameter value: {state}")
    mon.machine.migrate_continue(MigrationStatus(state))


# -- vCPUs and the monitor itself -------------------------------------------------------------
def hmp_stop(mon: Monitor, args: Args) -> None:
    mon.machine.stop()


def hmp_cont(mon: Monitor, args: Args) -> None:
    mon.machine.cont()


def hmp_quit(mon: Monitor, args: Args) -> None:
    mon.request_quit()


# -- memory -------------------------------------------------------------------------------------
def hmp_pmemsave(mon: Monitor, args: Args) -> None:
    addr, size = args["val"], args["size"]
    assert isinstance(addr, int) and isinstance(size, int)  # "l" and "i" arguments
    mon.machine.pmemsave(addr % (1 << 64), size, str(args["filename"]))  # an unsigned address


# -- extensions: the last outgoing migration's time series (one sample per ~100 ms) -------------
def write_series(path: str, samples: Sequence[Sample]) -> None:
    """``x_migrate_export``'s file (also written by the shell in front of a real QEMU)."""
    text = series.render(path, samples)
    with file_errors(path), open(path, "w", encoding="utf-8") as f:
        f.write(text)


def hmp_x_migrate_export(mon: Monitor, args: Args) -> None:
    write_series(str(args["filename"]), mon.machine.migration_timeseries())


def hmp_x_migrate_chart(mon: Monitor, args: Args) -> None:
    """The outgoing migration's series; on a postcopy destination, its page-request waits."""
    samples = mon.machine.migration_timeseries()
    faults = chart.Faults.from_query(mon.machine.query_postcopy_faults())
    if samples or not faults.waits_ms:
        mon.printf(chart.terminal_chart({"migrate": samples}))
    if faults.waits_ms:
        mon.printf(chart.fault_chart(faults))


MIGRATE_HELP = (
    "migrate to URI (using -d to not wait for completion)"
    "\n\t\t\t -b for migration without shared storage with full copy of disk"
    "\n\t\t\t -i for migration without shared storage with incremental copy of disk"
    " (base image shared between src and destination)"
    "\n\t\t\t -r to resume a paused migration"
)

INFO_COMMANDS: tuple[Command, ...] = (
    Command("migrate", "", "", "show migration status", hmp_info_migrate),
    Command(
        "migrate_capabilities",
        "",
        "",
        "show current migration capabilities",
        hmp_info_migrate_capabilities,
    ),
    Command(
        "migrate_parameters",
        "",
        "",
        "show current migration parameters",
        hmp_info_migrate_parameters,
    ),
    Command("name", "", "", "show the current VM name", hmp_info_name),
    Command("status", "", "", "show the current VM status (running|paused)", hmp_info_status),
    Command("uuid", "", "", "show the current VM UUID", hmp_info_uuid),
    Command("version", "", "", "show the version of QEMU", hmp_info_version),
    Command(
        "x_compress_policy",
        "",
        "",
        "show what the adaptive compression policy (x-compress-auto) measured and chose",
        hmp_info_x_compress_policy,
        extension=True,
    ),
)

COMMANDS: tuple[Command, ...] = (
    Command("help|?", "name:S?", "[cmd]", "show the help", hmp_help),
    Command(
        "info",
        "item:s?",
        "[subcommand]",
        "show various information about the system state",
        hmp_info,
        INFO_COMMANDS,
    ),
    Command("stop|s", "", "", "stop emulation", hmp_stop),
    Command("cont|c", "", "", "resume emulation", hmp_cont),
    Command("quit|q", "", "", "quit the emulator", hmp_quit),
    Command(
        "migrate",
        "detach:-d,blk:-b,inc:-i,resume:-r,uri:s",
        "[-d] [-b] [-i] [-r] uri",
        MIGRATE_HELP,
        hmp_migrate,
    ),
    Command("migrate_cancel", "", "", "cancel the current VM migration", hmp_migrate_cancel),
    Command(
        "migrate_continue",
        "state:s",
        "state",
        "Continue migration from the given paused state",
        hmp_migrate_continue,
    ),
    Command(
        "migrate_incoming",
        "uri:s",
        "uri",
        "Continue an incoming migration from an -incoming defer",
        hmp_migrate_incoming,
    ),
    Command(
        "migrate_pause", "", "", "Pause an ongoing migration (postcopy-only)", hmp_migrate_pause
    ),
    Command(
        "migrate_recover",
        "uri:s",
        "uri",
        "Continue a paused incoming postcopy migration",
        hmp_migrate_recover,
    ),
    Command(
        "migrate_set_capability",
        "capability:s,state:b",
        "capability state",
        "Enable/Disable the usage of a capability for migration",
        hmp_migrate_set_capability,
    ),
    Command(
        "migrate_set_parameter",
        "parameter:s,value:s",
        "parameter value",
        "Set the parameter for migration",
        hmp_migrate_set_parameter,
    ),
    Command(
        "migrate_start_postcopy",
        "",
        "",
        "Followup to a migration command to switch the migration to postcopy mode. The "
        "postcopy-ram capability must be set on both source and destination before the "
        "original migration command .",
        hmp_migrate_start_postcopy,
    ),
    Command(
        "pmemsave",
        "val:l,size:i,filename:s",
        "addr size file",
        "save to disk physical memory dump starting at 'addr' of size 'size'",
        hmp_pmemsave,
    ),
    Command(
        "x_migrate_export",
        "filename:s",
        "filename",
        "write the last migration's time series to filename (.json: JSON, else CSV)",
        hmp_x_migrate_export,
        extension=True,
    ),
    Command(
        "x_migrate_chart",
        "",
        "",
        "chart the last migration's remaining RAM, throughput, dirty rate and throttle"
        " (on a postcopy destination, its page-request waits)",
        hmp_x_migrate_chart,
        extension=True,
    ),
)
