"""The dialect switch (`--qemu`), and the 11.1 rules that need no recording to hold."""

from __future__ import annotations

import io
import re

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from pygments.token import Name

from engine.machine import Machine, MachineOptions
from engine.numbers import NumberError, RangeError
from engine.params import TABLE_7_2, ConfigTable
from engine.params11 import TABLE_11_1
from hmp.cli import UsageError, parse_argv
from hmp.monitor import DIALECTS, Monitor
from hmp.monitor.readline import complete as readline_complete
from hmp.monitor.render11 import size_to_str
from hmp.monitor.values11 import strtosz
from hmp.shell.completion import MonitorCompleter
from hmp.shell.lexer import lexer_for

EVENT = CompleteEvent(completion_requested=True)


def run(table: ConfigTable, *lines: str) -> str:
    machine = Machine(MachineOptions(ram_size=1 << 20, start_paused=True, config_table=table))
    out = io.StringIO()
    try:
        mon = Monitor(machine, out, io.StringIO())
        for line in lines:
            mon.execute(line)
    finally:
        machine.close()
    return out.getvalue()


def test_qemu_option_selects_the_table_and_defaults_to_7_2() -> None:
    assert parse_argv(["--qemu", "11.1"]).config_table is TABLE_11_1  # type: ignore[union-attr]
    assert parse_argv([]).config_table is TABLE_7_2  # type: ignore[union-attr]
    with pytest.raises(UsageError, match=re.escape("expected one of 7.2, 11.1")):
        parse_argv(["--qemu", "9.0"])


def test_each_dialect_says_which_release_it_is() -> None:
    assert run(TABLE_11_1, "info version").startswith("11.1.3 (qemu-hmp ")
    assert run(TABLE_7_2, "info version").startswith("7.2.0 (qemu-hmp ")
    assert DIALECTS["11.1"].banner.startswith("QEMU 11.1.3 monitor")
    assert DIALECTS["11.1"].version_triple == (11, 1, 3)


def test_7_2_names_are_unknown_in_11_1_and_the_engine_still_reads_them() -> None:
    assert run(TABLE_11_1, "migrate_set_capability compress on") == (
        "Error: invalid parameter value: compress\n"
    )
    machine = Machine(MachineOptions(ram_size=1 << 20, config_table=TABLE_11_1))
    try:
        assert machine.config.capability("compress") is False  # implicit: 11.1 has none
        assert "compress-threads" not in machine.config.params()
        assert machine.config.param("zero-page-detection") == "multifd"
    finally:
        machine.close()


def test_multifd_is_refused_once_an_11_1_destination_listens() -> None:
    machine = Machine(
        MachineOptions(ram_size=1 << 20, incoming="tcp:127.0.0.1:0", config_table=TABLE_11_1)
    )
    try:
        out = io.StringIO()
        Monitor(machine, out).execute("migrate_set_capability multifd on")
        assert out.getvalue() == "Error: Multifd must be set before incoming starts\n"
        assert machine.config.capability("multifd") is False
    finally:
        machine.close()


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0 B"), (8, "8 B"), (921600, "900 KiB"), (1845493, "1.76 MiB"), (134750208, "129 MiB")],
)
def test_sizes_print_as_qemu_size_to_str(value: int, text: str) -> None:
    assert size_to_str(value) == text


def test_11_1_size_rules() -> None:
    assert strtosz(".5", "M") == 512 * 1024
    assert strtosz("3.999999999999999999999B") == 4
    assert strtosz("0.1K") == 102
    with pytest.raises(NumberError):
        strtosz("0x10M")
    with pytest.raises(RangeError):
        strtosz("-0")


def test_completion_and_highlighting_follow_the_dialect() -> None:
    eleven = DIALECTS["11.1"]
    completer = MonitorCompleter(dialect=eleven)
    caps = {c.text for c in completer.get_completions(Document("migrate_set_capability "), EVENT)}
    assert "mapped-ram" in caps and "compress" not in caps
    params = {c.text for c in completer.get_completions(Document("migrate_set_parameter z"), EVENT)}
    assert params == {"zero-page-detection"}
    values = completer.get_completions(Document("migrate_set_parameter mode "), EVENT)
    assert {c.text for c in values} == {"normal", "cpr-reboot", "cpr-transfer", "cpr-exec"}
    tokens = dict(
        (v, t) for t, v in lexer_for(eleven)().get_tokens("migrate_set_capability mapped-ram on")
    )
    assert tokens["mapped-ram"] is Name.Attribute
    old = dict((v, t) for t, v in lexer_for(DIALECTS["7.2"])().get_tokens("x mapped-ram"))
    assert old["mapped-ram"] is not Name.Attribute
    # The monitor socket's QEMU-style completion too.
    assert readline_complete("migrate_set_capability mapp", eleven) == ("mapp", ["mapped-ram"])
    assert readline_complete("migrate_set_capability mapp") == ("mapp", [])
