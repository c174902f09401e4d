"""Hypothesis: monitor lines built from the command table with hostile values.

tests/test_parser.py fuzzes raw bytes and token soup; these lines are well-formed up to the
value, where parsers break: every command (aliases too) with capability and parameter names
and numbers at and beyond their limits, sizes with suffixes, `migrate` to URIs that fail at
once. Monitor.execute turns an unexpected exception into "internal error" rather than
raising, so the check is that it never says so, and that the parser raises only ParseError.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_parser import _assert_still_valid

from engine.machine import Machine, MachineOptions
from engine.params import CAPABILITIES, PARAMETERS
from hmp.monitor.commands import COMMANDS, INFO_COMMANDS
from hmp.monitor.parser import ParseError, parse_line
from hmp.monitor.session import Monitor

NUMBERS = ["0", "1", "-1", "255", "256", "65536", "2147483648", "4294967296"]
NUMBERS += ["18446744073709551615", "18446744073709551616", "1" * 40, "0x", "0x7fffffff"]
NUMBERS += ["1.5", "1e3", "nan", "inf", "1k", "1M", "1G", "8191P", "16E", "1KiB", " ", ""]
# Each fails before any byte is sent: refused, missing, unsupported, malformed.
URIS = ["tcp:127.0.0.1:1", "unix:/nonexistent/sock", "exec:true", "tcp:[::1", "tcp::", "x"]
VALUES = st.sampled_from(NUMBERS) | st.sampled_from(["on", "off", "zlib", "zstd", "none", "\\"])
VALUES |= st.text(max_size=8)

NAMES = [n for c in COMMANDS for n in c.names]


@st.composite
def lines(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(NAMES))
    if name == "migrate_set_capability":
        args = [draw(st.sampled_from([c.name for c in CAPABILITIES] + ["nope"])), draw(VALUES)]
    elif name == "migrate_set_parameter":
        args = [draw(st.sampled_from([p.name for p in PARAMETERS] + ["nope"])), draw(VALUES)]
    elif name == "info":
        args = [draw(st.sampled_from([c.name for c in INFO_COMMANDS] + ["", "nope"]))]
    elif name in ("migrate", "migrate_incoming"):
        args = [draw(st.sampled_from(["", "-d", "-b", "-d -i", "-x"])), draw(st.sampled_from(URIS))]
    else:
        args = draw(st.lists(VALUES, max_size=3))
    tail = draw(st.sampled_from(["", " ", "  extra", "\t", " \x00"]))
    return " ".join([name, *args]) + tail


@pytest.fixture(scope="module")
def monitor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitor]:
    """A paused guest with a small RAM: nothing runs between examples; quit only sets a flag.

    It works in a scratch directory: fuzzed `pmemsave`/`x_migrate_export` lines write files.
    """
    machine = Machine(MachineOptions(ram_size=4 << 20, start_paused=True))
    home = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("fuzz"))
    try:
        yield Monitor(machine, io.StringIO(), io.StringIO())
    finally:
        os.chdir(home)
        machine.close()


def run(monitor: Monitor, line: str) -> str:
    """Execute ``line``; what the monitor wrote to stderr meanwhile."""
    err = monitor.err
    assert isinstance(err, io.StringIO)
    err.seek(0)
    err.truncate()
    monitor.execute(line)
    return err.getvalue()


@settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(line=lines())
def test_table_driven_lines_never_break_the_monitor(monitor: Monitor, line: str) -> None:
    try:
        parse_line(COMMANDS, line)
    except ParseError:
        pass
    errors = run(monitor, line)
    monitor.quit_requested = False
    monitor.machine.wait_migration(10)  # a `migrate -d` that is refused settles first
    assert "internal error" not in errors, (line, errors)
    _assert_still_valid(monitor)


@pytest.mark.parametrize("line", ["x_migrate_export a\x00b", "pmemsave 0 4096 a\x00b"])
def test_nul_in_a_file_name(monitor: Monitor, line: str) -> None:
    assert "internal error" not in run(monitor, line)
    out = monitor.out
    assert isinstance(out, io.StringIO)
    assert out.getvalue().endswith("': Invalid argument\n")
