"""The QEMU releases whose monitor qemu-hmp speaks, each as data: its version, its
capability/parameter table (engine/params.py, engine/params11.py), its command table (with
its help texts and `info` renderers) and its value rules. `qemu-hmp --qemu RELEASE` picks
one; a Monitor looks up its machine's once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.params import TABLE_7_2, ConfigTable, ParamSpec, ParamValue
from engine.params11 import TABLE_11_1
from hmp.monitor import commands, commands11, values, values11
from hmp.monitor.commands import Command

if TYPE_CHECKING:
    from engine.machine import Machine

ValueParser = Callable[[ParamSpec, str, Callable[[str], None]], ParamValue]


@dataclass(frozen=True)
class Dialect:
    release: str  # what --qemu takes
    version: str  # the banner's, `info version`'s and QMP's
    table: ConfigTable
    commands: tuple[Command, ...]
    parse_parameter: ValueParser
    # Capabilities such as multifd must be set before the destination listens (11.1), so
    # a tool that starts a destination for you starts it with `-incoming defer`.
    listen_late: bool = False

    @property
    def info_commands(self) -> tuple[Command, ...]:
        return next(cmd.sub_table for cmd in self.commands if cmd.name == "info")

    @property
    def banner(self) -> str:
        return f"QEMU {self.version} monitor - type 'help' for more information\n"

    @property
    def version_triple(self) -> tuple[int, int, int]:
        major, minor, micro = (int(n) for n in self.version.split("."))
        return major, minor, micro


QEMU_7_2 = Dialect(
    "7.2", commands.QEMU_VERSION, TABLE_7_2, commands.COMMANDS, values.parse_parameter
)
QEMU_11_1 = Dialect(
    "11.1", "11.1.3", TABLE_11_1, commands11.COMMANDS, values11.parse_parameter, listen_late=True
)
DIALECTS: dict[str, Dialect] = {d.release: d for d in (QEMU_7_2, QEMU_11_1)}
DEFAULT = QEMU_7_2


def dialect_of(machine: Machine) -> Dialect:
    """The dialect of the release whose table ``machine``'s configuration has."""
    return DIALECTS[machine.config.table.release]
