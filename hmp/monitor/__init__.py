"""The HMP language: the command table and its parser, QEMU's value rules, the renderers of
`info`, one monitor session over a Machine, batch mode, and the chart and export of a
migration's time series. Other rooms use only the names below."""

from hmp.monitor.batch import run_batch
from hmp.monitor.chart import Faults, fault_chart, terminal_chart, write_png
from hmp.monitor.commands import (
    COMMANDS,
    QEMU_VERSION,
    Command,
    hmp_help,
    package_version,
    write_series,
)
from hmp.monitor.commands11 import POSTCOPY_REFUSED as POSTCOPY_REFUSED_11
from hmp.monitor.dialect import DEFAULT as DEFAULT_DIALECT
from hmp.monitor.dialect import DIALECTS, Dialect, dialect_of
from hmp.monitor.parser import ArgSpec, ParseError, find_command, parse_line
from hmp.monitor.series import from_json as series_from_json
from hmp.monitor.session import BANNER, Monitor
from hmp.monitor.socket import MonitorSockets, extract_monitor_options
from hmp.monitor.values import spell, strtosz, strtou64, valid_text

__all__ = [
    "BANNER",
    "COMMANDS",
    "DEFAULT_DIALECT",
    "DIALECTS",
    "POSTCOPY_REFUSED_11",
    "QEMU_VERSION",
    "ArgSpec",
    "Command",
    "Dialect",
    "Faults",
    "Monitor",
    "MonitorSockets",
    "ParseError",
    "dialect_of",
    "extract_monitor_options",
    "fault_chart",
    "find_command",
    "hmp_help",
    "package_version",
    "parse_line",
    "run_batch",
    "series_from_json",
    "spell",
    "strtosz",
    "strtou64",
    "terminal_chart",
    "valid_text",
    "write_png",
    "write_series",
]
