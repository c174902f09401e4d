"""The args_type parser and the value rules, unit by unit, plus a hypothesis fuzz of the monitor."""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import MigrationError
from engine.machine import Machine, MachineOptions
from engine.params import PARAMETERS, PARAMS_BY_NAME, Kind, MigrationConfig
from hmp.monitor.commands import COMMANDS, INFO_COMMANDS
from hmp.monitor.parser import ParseError, parse_args_type, parse_line
from hmp.monitor.session import Monitor
from hmp.monitor.values import NumberError, RangeError, parse_parameter, strtosz, strtou64


def test_table_args_types_parse() -> None:
    for cmd in (*COMMANDS, *INFO_COMMANDS):
        assert cmd.args is not None
    assert [spec.kind for spec in parse_args_type("a:i,b:l")] == ["i", "l"]
    for unsupported in ("x:q", "x:i?"):  # no optional expressions: no command needs one
        with pytest.raises(ValueError):
            parse_args_type(unsupported)


def parse(line: str) -> dict[str, object]:
    parsed = parse_line(COMMANDS, line)
    assert parsed is not None
    return dict(parsed.args)


def test_flags_in_table_order() -> None:
    assert parse("migrate -d uri") == {
        "detach": True,
        "blk": False,
        "inc": False,
        "resume": False,
        "uri": "uri",
    }
    assert parse("migrate -b -i uri")["inc"] is True
    # -dx: the flag is consumed, "x" becomes the uri and "uri" is extra.
    with pytest.raises(ParseError, match="extraneous characters"):
        parse("migrate -dx uri")
    with pytest.raises(ParseError, match="unsupported option -d\n"):
        parse("migrate -i -d uri")


def test_strings() -> None:
    assert parse('migrate_set_parameter tls-creds "a b"')["value"] == "a b"
    assert parse(r'migrate_set_parameter tls-creds "\n\r\\\'\""')["value"] == "\n\r\\'\""
    assert parse("migrate_set_parameter tls-creds 'x'")["value"] == "'x'"
    assert parse("migrate_set_parameter tls-creds " + "z" * 2000)["value"] == "z" * 1023
    with pytest.raises(ParseError) as err:
        parse(r'migrate_set_parameter tls-creds "\t"')
    assert err.value.text.startswith("unsupported escape code: '\\t'\n")
    with pytest.raises(ParseError) as err:
        parse('migrate_set_parameter tls-creds "\\')
    assert err.value.text.startswith("unsupported escape code: '\\migrate_set_parameter:")


def test_blank_and_unknown() -> None:
    assert parse_line(COMMANDS, "") is None
    assert parse_line(COMMANDS, " \t ") is None
    with pytest.raises(ParseError) as err:
        parse_line(COMMANDS, "  info  nope x")
    assert err.value.text == "unknown command: '  info  nope'\n"


# Rules checked against QEMU 7.2 (tests/data/qemu-7.2/pmemsave.txt has the recorded cases).
@pytest.mark.parametrize(
    ("line", "addr", "size"),
    [
        ('pmemsave 0 4096 "f"', 0, 4096),
        ("pmemsave 0x10 010 f", 16, 8),
        ("pmemsave 0 (0x7fffffffffffffff+1)/2 f", 0, None),  # wraps to negative: refused
        ("pmemsave -1 0xffffffff f", -1, 0xFFFFFFFF),  # addr is 64-bit, size 32-bit unsigned
        ("pmemsave 1 2 3 ", 1, 2),  # `2 3`: no operator between, so 3 is the file name
        ("pmemsave (1 - - 1) 'A' f", 2, 65),
        ("pmemsave 0x8000000000000000 1 f", -(1 << 63), 1),  # stored as C's int64_t
    ],
)
def test_expressions(line: str, addr: int, size: int | None) -> None:
    if size is None:
        with pytest.raises(ParseError, match="integer is for 32-bit values"):
            parse(line)
        return
    args = parse(line)
    assert (args["val"], args["size"]) == (addr, size)


def test_registers_are_refused() -> None:
    """QEMU reads the vCPU here (`$pc` works, `$foo` is "unknown register"); we have no vCPU."""
    for reg in ("$pc", "$eax+1", "$"):
        with pytest.raises(ParseError) as err:
            parse(f"pmemsave {reg} 1 f")
        name = reg.removesuffix("+1")
        assert err.value.text == (
            f"cannot read {name}: qemu-hmp emulates no CPU\n"
            'Try "help pmemsave" for more information\n'
        )


def test_deep_expression_is_an_error_not_a_crash() -> None:
    with pytest.raises(ParseError, match=r"^expression too deeply nested\n"):
        parse("pmemsave 0 " + "(" * 5000 + "1" + ")" * 5000 + " f")
    with pytest.raises(ParseError, match=r"^expression too deeply nested\n"):
        parse("pmemsave 0 " + "-" * 5000 + "1 f")


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("0x1f", 31), ("010", 8), (" +7", 7), ("-1", 2**64 - 1), ("-0", 0)],
)
def test_strtou64(text: str, value: int) -> None:
    assert strtou64(text) == value


@pytest.mark.parametrize("text", ["", "08", "0x", "1.5", "1k", "abc", "1 ", "--1"])
def test_strtou64_rejects(text: str) -> None:
    with pytest.raises(NumberError):
        strtou64(text)


def test_strtou64_range() -> None:
    with pytest.raises(RangeError):
        strtou64("18446744073709551616")


@pytest.mark.parametrize(
    ("text", "unit", "value"),
    [
        ("100", "M", 100 << 20),
        ("1.5", "M", 3 << 19),
        ("5.", "M", 5 << 20),
        ("0.1K", "B", 102),
        ("0x10", "M", 16 << 20),
        ("010", "M", 10 << 20),
        ("1e", "B", 1 << 60),
        ("3.999999999999999999999B", "B", 3),
        ("8191P", "B", 8191 << 50),
    ],
)
def test_strtosz(text: str, unit: str, value: int) -> None:
    assert strtosz(text, unit) == value


@pytest.mark.parametrize("text", ["1.5", "1.5B", ".5", "1e3", "0x1.8", "-1", "1KiB", "1M2", ""])
def test_strtosz_rejects(text: str) -> None:
    with pytest.raises(NumberError):
        strtosz(text)


def test_strtosz_range() -> None:
    with pytest.raises(RangeError):
        strtosz("16E")


def test_parse_parameter_errors_and_warning() -> None:
    warnings: list[str] = []
    spec = PARAMS_BY_NAME["downtime-limit"]
    assert parse_parameter(spec, "0x10k", warnings.append) == 16 * 1024
    assert warnings == ["Using a multiplier suffix on hex numbers is deprecated: 0x10k"]
    with pytest.raises(MigrationError) as err:
        parse_parameter(spec, "abc", warnings.append)
    assert err.value.hint.startswith("Optional suffix k, M, G, T, P or E")
    with pytest.raises(MigrationError, match=r"^Invalid size 8E$"):
        parse_parameter(PARAMS_BY_NAME["max-bandwidth"], "8E", warnings.append)
    assert parse_parameter(PARAMS_BY_NAME["cpu-throttle-tailslow"], "y", warnings.append) is True
    assert parse_parameter(PARAMS_BY_NAME["x-compress-method"], "zstd", warnings.append) == "zstd"


# -- fuzz -------------------------------------------------------------------------------------
WORDS = [c.names[0] for c in COMMANDS] + [c.name for c in INFO_COMMANDS]
WORDS += [p.name for p in PARAMETERS] + ["compress", "multifd", "on", "off", "-d", "-", '"', "\\"]
WORDS += ["0", "-1", "1k", "0x10", "1.5", "256", "tcp:127.0.0.1:1", "foo:bar", "|", "/", "\t"]
WORDS += ["(", ")", "+", "*", "%", "~", "'a'", "'", "$pc", "0x", "08", "0xffffffff"]


@pytest.fixture(scope="module")
def monitor() -> Monitor:
    return Monitor(
        Machine(MachineOptions(ram_size=8 << 20, start_paused=True)), io.StringIO(), io.StringIO()
    )


def _assert_still_valid(mon: Monitor) -> None:
    """The stored set would pass QEMU's checks afresh."""
    params = mon.machine.config.params()
    MigrationConfig().set_parameters(
        {k: v for k, v in params.items() if PARAMS_BY_NAME[k].kind is not Kind.QMP_ONLY}
    )
    MigrationConfig().set_capabilities(mon.machine.config.capabilities(), incoming=False)


def _run(mon: Monitor, line: str) -> None:
    name = line.lstrip().split(" ")[0].split("\t")[0]
    if name in ("migrate", "migrate_incoming", "pmemsave", "x_migrate_export"):
        # Real migrations are the engine's tests and written files their commands': only parse.
        with contextlib.suppress(ParseError):
            parse_line(COMMANDS, line)
        return
    mon.execute(line)
    mon.quit_requested = False
    _assert_still_valid(mon)


@settings(
    max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=80))
def test_fuzz_bytes(monitor: Monitor, data: bytes) -> None:
    _run(monitor, data.decode("utf-8", errors="replace"))


@settings(
    max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.sampled_from(WORDS) | st.text(max_size=6), max_size=6),
    st.sampled_from([" ", "  ", "\t"]),
)
def test_fuzz_tokens(monitor: Monitor, words: list[str], sep: str) -> None:
    _run(monitor, sep.join(words))
