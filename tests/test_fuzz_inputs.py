"""Hypothesis: every URI form and every command-line option, hostile, and never a traceback.

In process, the parsers (migration URIs, -qmp and -monitor chardevs, QemuOpts, -m, the whole
argv, workloads) raise only their documented errors, and `migrate -d`/`migrate_incoming` with
such URIs never say "internal error", neither in the monitor nor in the migration's status.
In subprocesses, a few `python -m hmp` command lines end with status 0, or 1 and lines that
begin `qemu-hmp: ` (or are QEMU's bare hint lines): never a Traceback.

No example may reach a port someone else holds: hosts are loopback, the wildcard, or names
that cannot resolve without DNS; ports are text getaddrinfo refuses, or numbers that wrap to
port 0 (any free port); socket paths stay in a scratch directory.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import MigrationError
from engine.machine import Machine, MachineOptions
from engine.state import MigrationStatus
from engine.transport import inet_parse, parse_uri, socket_parse
from engine.workload import WorkloadSpec
from hmp.chardev import monitor_chardev, qmp_chardev
from hmp.cli import MEMORY_OPTIONS, parse_argv, parse_size_mib
from hmp.monitor.session import Monitor
from hmp.qemuopts import OptionError, parse_opts
from hmp.qmp.server import parse_qmp_spec

HINTS = {  # lines QEMU prints bare, after a message
    "Path must be less than 108 bytes",
    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-",
    "and exabytes, respectively.",
}
# Characters parsers trip on: separators, signs, look-alike digits, bytes that were not UTF-8.
HOSTILE = [*"0123456789:,=[]+-.@xC", "²", "٣", "é", "\udcff", "\x00", "\t", " ", "'"]
TEXT = st.text(alphabet=st.sampled_from(HOSTILE), max_size=40) | st.text(max_size=40)
NUMERIC = re.compile(rb"[ \t\n\v\f\r]*[+-]?[0-9]+")


def _port_is_safe(port: str) -> bool:
    """getaddrinfo refuses it: what QEMU keeps of it (32 bytes) is not a number."""
    return not NUMERIC.fullmatch(port.encode("utf-8", "surrogateescape")[:32])


def _host_cannot_resolve(host: str) -> bool:
    """A character no DNS name has: glibc answers from /etc/hosts or refuses, asking no one."""
    return bool(re.search(r"[^A-Za-z0-9.\-]", host))


NO_SPACE = [c for c in HOSTILE if c not in " \t'\x00"]  # and no NUL: C would cut there
HOSTS = st.sampled_from(["127.0.0.1", "[::1]", "[127.0.0.1]", "", "localhost", "0.0.0.0"])
HOSTS |= st.text(alphabet=st.sampled_from([c for c in NO_SPACE if c not in ":,"]), max_size=70)
HOSTS = HOSTS.filter(lambda h: h in ("", "localhost", "0.0.0.0") or _host_cannot_resolve(h))
PORTS = st.sampled_from(["0", "65536", "131072", "4294967296", "+0", "0" * 40])
PORTS |= st.text(alphabet=st.sampled_from([c for c in NO_SPACE if c != ","]), max_size=40).filter(
    _port_is_safe
)
INET_OPTIONS = st.lists(
    st.sampled_from(
        ",ipv4 ,ipv6=off ,ipv4=on ,to= ,to=5 ,to=x ,keep-alive=on ,mptcp ,ipv4=maybe ,foo ,,"
        " ,to=99999999999999999999 ,ipv6,,x".split()
    ),
    max_size=3,
).map("".join)
NAMES = st.text(alphabet=st.sampled_from([c for c in NO_SPACE if c != "/"]), min_size=1)


@st.composite
def uris(draw: st.DrawFn, scratch: str = "/nonexistent") -> str:
    """A migration URI, in every form QEMU's parsers take, that can reach no one."""
    kind = draw(st.sampled_from(["tcp", "tcp:tcp", "unix", "tcp:unix", "other"]))
    if kind == "other":
        return draw(st.sampled_from(["exec:true", "fd:3", "tcp:fd:3", "vsock:1:2", "x:y", ""]))
    if kind.endswith("unix"):
        name = draw(NAMES | st.sampled_from(["", "a" * 120]))
        return f"{kind}:{scratch}/{name}" if name else f"{kind}:"
    host = draw(HOSTS)
    if draw(st.booleans()) and not host.startswith("["):
        host = f"[{host}]"
    return f"{kind}:{host}:{draw(PORTS)}{draw(INET_OPTIONS)}"


FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# -- the parsers, in process ------------------------------------------------------------------
@FUZZ
@given(text=TEXT | uris())
def test_uri_parsers_raise_only_their_errors(text: str) -> None:
    for parse in (
        lambda t: parse_uri(t, incoming=True),
        lambda t: parse_uri(t, incoming=False),
        socket_parse,
        inet_parse,
    ):
        try:
            parse(text)
        except MigrationError as err:
            assert err.desc


CHARDEV_OPTIONS = st.lists(
    st.sampled_from(
        [
            *"server server=on nowait wait=off wait=x to=5 to= ipv6 id=x telnet=on".split(),
            *"mux=on path=p host=h port= size=1k size=x noserver tls-creds=x".split(),
            *"reconnect=1 delay=on nodelay foo=bar help".split(),
            *["", ","],
        ]
    ),
    max_size=4,
).map(",".join)
CHARDEVS = st.builds(
    lambda prefix, body, opts: f"{prefix}{body},{opts}" if opts else f"{prefix}{body}",
    st.sampled_from(["tcp:", "unix:", "mon:tcp:", "telnet:", "udp:", "vc:", "mon:", "chardev:"]),
    TEXT,
    CHARDEV_OPTIONS,
)
CHARDEVS |= st.sampled_from(["stdio", "mon:stdio", "null", "none", "con:", "file:x", "/dev/x"])


@FUZZ
@given(text=CHARDEVS | TEXT)
def test_chardev_parsers_raise_only_option_errors(text: str) -> None:
    for parse in (monitor_chardev, qmp_chardev, parse_qmp_spec):
        try:
            parse(text)
        except OptionError as err:
            assert err.messages and all(m and not m.startswith("\n") for m in err.messages)


@FUZZ
@given(text=TEXT, implied=st.sampled_from([None, "size"]))
def test_qemuopts_and_memory_sizes_raise_only_option_errors(text: str, implied: str) -> None:
    for parse in (lambda t: parse_opts(t, MEMORY_OPTIONS, implied), parse_size_mib):
        try:
            parse(text)
        except OptionError as err:
            assert err.messages


OPTIONS = ["-m", "-name", "-device", "--workload", "--seed", "-monitor", "-incoming", "-qmp"]
OPTIONS += ["-S", "-mem-prealloc", "-M", "-smp", "-nodefaults", "-bogus", "disk.img"]
VALUES = TEXT | uris() | CHARDEVS | st.sampled_from(["idle,rate=5,wss=1.5e999", "defer"])
VALUES |= st.sampled_from(["loader,file=f,addr=0x٣,force-raw=on", "random-writer,rate=٣"])


@FUZZ
@given(argv=st.lists(st.sampled_from(OPTIONS) | VALUES, max_size=5))
def test_the_command_line_raises_only_option_errors(argv: list[str]) -> None:
    try:
        parse_argv(argv)
    except OptionError as err:
        assert err.messages


WORKLOADS = TEXT.map(lambda t: f"random-writer,{t}") | TEXT.map(lambda t: f"idle,wss={t}")
WORKLOADS |= st.sampled_from(["idle,rate=1,wss=1.5e999", "idle,wss=1e400.", "random,rate=1"])


@FUZZ
@given(text=WORKLOADS)
def test_workload_specs_raise_only_value_errors(text: str) -> None:
    try:
        WorkloadSpec.parse(text)
    except ValueError as err:
        assert str(err)


# -- the monitor ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sockets")


@pytest.fixture(scope="module")
def source() -> Iterator[tuple[Monitor, list[str]]]:
    reports: list[str] = []
    machine = Machine(MachineOptions(ram_size=1 << 20), notify=reports.append)
    try:
        yield Monitor(machine, io.StringIO(), io.StringIO()), reports
    finally:
        machine.close()


def _said(mon: Monitor) -> str:
    out, err = mon.out, mon.err
    assert isinstance(out, io.StringIO) and isinstance(err, io.StringIO)
    text = out.getvalue() + err.getvalue()
    for stream in (out, err):
        stream.seek(0)
        stream.truncate()
    return text


@FUZZ
@given(data=st.data())
def test_migrate_to_any_uri_is_no_internal_error(
    source: tuple[Monitor, list[str]], scratch: Path, data: st.DataObject
) -> None:
    mon, reports = source
    uri = data.draw(uris(str(scratch)).filter(lambda u: not re.search(r"[\s'\"]", u)))
    reports.clear()
    mon.execute(f"migrate -d {uri}")
    info = mon.machine.wait_migration(10)
    said = _said(mon) + "".join(reports) + (info.error_desc or "")
    assert "internal error" not in said, (uri, said)
    assert info.status is not MigrationStatus.COMPLETED  # nothing was there to migrate to


@FUZZ
@given(data=st.data())
def test_migrate_incoming_on_any_uri_is_no_internal_error(
    scratch: Path, data: st.DataObject
) -> None:
    uri = data.draw(uris(str(scratch)).filter(lambda u: not re.search(r"[\s'\"]", u)))
    machine = Machine(MachineOptions(ram_size=1 << 20, incoming="defer"))
    mon = Monitor(machine, io.StringIO(), io.StringIO())
    try:
        mon.execute(f"migrate_incoming {uri}")
    finally:
        machine.close()
    said = _said(mon)
    assert "internal error" not in said, (uri, said)


# -- the process ------------------------------------------------------------------------------
CLI_VALUES = {
    "-m": TEXT,
    "-name": TEXT,
    "-device": TEXT.map(lambda t: f"loader,{t}"),
    "--workload": TEXT.map(lambda t: f"random-writer,{t}"),
    "--seed": TEXT,
    "-monitor": CHARDEVS,
    "-incoming": uris(),
    # wait=off last, so that no valid spelling waits for a client
    "-qmp": CHARDEVS.map(lambda c: f"{c},server=on,wait=off") | TEXT,
}


@settings(FUZZ, max_examples=8)
@given(data=st.data())
def test_the_process_ends_with_qemus_lines_never_a_traceback(
    tmp_path: Path, data: st.DataObject
) -> None:
    option = data.draw(st.sampled_from(sorted(CLI_VALUES)))
    value = data.draw(CLI_VALUES[option].filter(lambda v: "\x00" not in v))  # argv is C strings
    proc = subprocess.run(
        [sys.executable, "-m", "hmp", "-m", "16", option, value],
        input=b"quit\n",
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
    )
    stderr = proc.stderr.decode("utf-8", "surrogateescape")
    assert "Traceback" not in stderr and "internal error" not in stderr, (option, value, stderr)
    assert proc.returncode in (0, 1), (option, value, stderr)
    if proc.returncode == 1:
        lines = stderr.splitlines()
        assert lines and lines[0].startswith("qemu-hmp: "), (option, value, stderr)
        assert all(line.startswith("qemu-hmp: ") or line in HINTS for line in lines), stderr
