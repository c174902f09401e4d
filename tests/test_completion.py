"""Completion, highlighting and the toolbar line: all derived from the tables, checked here."""

from __future__ import annotations

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from pygments.token import Error, Keyword, Name, Number, String

from engine.params import CAPABILITIES, PARAMETERS, PARAMS_BY_NAME, Kind
from engine.snapshot import MigrationInfo, RamStats
from engine.state import MigrationStatus
from hmp.monitor import render
from hmp.monitor.commands import COMMANDS, INFO_COMMANDS
from hmp.monitor.values import parse_parameter
from hmp.qmp import qapi
from hmp.shell.completion import MonitorCompleter
from hmp.shell.lexer import MonitorLexer
from hmp.shell.toolbar import Progress, progress_text
from hmp.shell.watch import ended_notice
from tests.readme_tables import README

MiB = 1024 * 1024


def complete(text: str, completer: MonitorCompleter | None = None) -> dict[str, str]:
    completer = completer or MonitorCompleter()
    found = completer.get_completions(Document(text), CompleteEvent(completion_requested=True))
    return {c.text: c.display_meta_text for c in found}


def test_first_word_is_any_command_name_or_alias() -> None:
    names = {name for cmd in COMMANDS for name in cmd.names}
    assert set(complete("")) == names
    assert set(complete("migrate_set_")) == {"migrate_set_capability", "migrate_set_parameter"}
    assert complete("q") == {"quit": "quit the emulator", "q": "quit the emulator"}


def test_info_offers_its_sub_table() -> None:
    assert set(complete("info ")) == {c.name for c in INFO_COMMANDS}
    assert set(complete("info migrate_")) == {"migrate_capabilities", "migrate_parameters"}
    assert complete("info status ") == {}


def test_capability_names_then_on_off() -> None:
    offered = complete("migrate_set_capability ")
    assert list(offered) == [cap.name for cap in CAPABILITIES]
    assert offered["compress"] == CAPABILITIES[4].doc
    assert set(complete("migrate_set_capability compress ")) == {"on", "off"}
    assert complete("migrate_set_capability compress o") == {"on": "", "off": ""}
    assert complete("migrate_set_capability compress on ") == {}


def test_parameter_names_carry_default_range_and_doc() -> None:
    offered = complete("migrate_set_parameter ")
    settable = [p.name for p in PARAMETERS if p.kind is not Kind.QMP_ONLY]
    assert list(offered) == settable
    assert offered["compress-level"] == (
        "default 1; 0–9; zlib level of the compress capability (0 none, 1 fastest, 9 best)"
    )
    assert offered["downtime-limit"].startswith("default 300 ms; 0–2000000; ")


@pytest.mark.parametrize(
    ("line", "values"),
    [
        ("migrate_set_parameter compress-wait-thread ", {"on", "off"}),
        ("migrate_set_parameter multifd-compression ", {"none", "zlib", "zstd", "x-lz4", "x-auto"}),
        ("migrate_set_parameter compress-threads ", {"8"}),
        ("migrate_set_parameter tls-creds ", set()),
    ],
)
def test_value_hints_follow_the_parameter_kind(line: str, values: set[str]) -> None:
    assert set(complete(line)) == values


def test_value_hint_shows_the_current_value_first() -> None:
    current = {"compress-threads": 12}
    completer = MonitorCompleter(
        current=lambda name: current.get(name, PARAMS_BY_NAME[name].default)
    )
    offered = complete("migrate_set_parameter compress-threads ", completer)
    assert offered == {
        "12": "current; 1–255",
        "8": "default; 1–255",
    }


@pytest.mark.parametrize(
    ("name", "value", "spelled"),
    [
        ("max-bandwidth", 32 * 1024 * 1024, "32M"),  # a bare 33554432 would mean 32 TiB/s
        ("max-bandwidth", 1000, "1000B"),
        ("max-bandwidth", 0, "0"),
        ("xbzrle-cache-size", 64 * 1024 * 1024, "64M"),
        ("downtime-limit", 300, "300"),  # milliseconds: no unit to add
    ],
)
def test_offered_values_read_back_as_the_same_value(name: str, value: int, spelled: str) -> None:
    spec = PARAMS_BY_NAME[name]
    completer = MonitorCompleter(
        current=lambda n: value if n == name else PARAMS_BY_NAME[n].default
    )
    offered = complete(f"migrate_set_parameter {name} ", completer)
    assert spelled in offered
    for text in offered:
        assert parse_parameter(spec, text, lambda _w: None) in (value, spec.default)


def test_menu_and_readme_say_the_same_range() -> None:
    """announce-step takes 1-10000 (QEMU's error text says 0): one source for both."""
    hint = dict(complete("migrate_set_parameter announce-s"))["announce-step"]
    assert "; 1–10000; " in hint
    assert "| `announce-step` | 100 ms | 1–10000 |" in README.read_text()


def test_flags_come_from_args_type() -> None:
    assert set(complete("migrate -")) == {"-d", "-b", "-i", "-r"}
    assert set(complete("migrate -d -")) == {"-b", "-i", "-r"}


def test_help_completes_command_then_info_subcommand() -> None:
    assert "migrate_set_capability" in complete("help migrate_s")
    assert set(complete("help info migrate_")) == {"migrate_capabilities", "migrate_parameters"}


def test_unknown_command_offers_nothing() -> None:
    assert complete("bogus ") == {}


def tokens(line: str) -> list[tuple[object, str]]:
    return [(tok, text) for tok, text in MonitorLexer().get_tokens(line) if text.strip()]


def test_lexer_words_come_from_the_tables() -> None:
    assert tokens("migrate_set_capability auto-converge on") == [
        (Keyword, "migrate_set_capability"),
        (Name.Attribute, "auto-converge"),
        (Keyword.Constant, "on"),
    ]
    assert tokens("migrate_set_parameter max-bandwidth 16M") == [
        (Keyword, "migrate_set_parameter"),
        (Name.Variable, "max-bandwidth"),
        (Number, "16M"),
    ]
    assert tokens("dst> info migrate_parameters") == [
        (Name.Label, "dst>"),
        (Keyword, "info"),
        (Name.Function, "migrate_parameters"),
    ]
    assert tokens("migrate -d tcp:127.0.0.1:4444") == [
        (Keyword, "migrate"),
        (Name.Builtin, "-d"),
        (String, "tcp:127.0.0.1:4444"),
    ]
    assert tokens("migrat")[0] == (Error, "migrat")


def ram(**fields: int | float) -> RamStats:
    base: dict[str, int | float] = dict(
        transferred=64 * MiB,
        remaining=192 * MiB,
        total=256 * MiB,
        duplicate=0,
        skipped=0,
        normal=0,
        normal_bytes=0,
        dirty_sync_count=1,
        page_size=4096,
        multifd_bytes=0,
        pages_per_second=0,
        mbps=134.2,
    )
    return RamStats(**{**base, **fields})  # type: ignore[arg-type]


def test_toolbar_while_active() -> None:
    info = MigrationInfo(
        status=MigrationStatus.ACTIVE, total_time=2500, expected_downtime=300, ram=ram()
    )
    assert progress_text(Progress.from_info(info), "running") == (
        "migration active █████░░░░░░░░░░░░░░░  25% in sync · 134.2 mbps · 192.0 MiB remaining"
        " · expected downtime 300 ms · 2.5 s"
    )


def test_toolbar_idle_completed_and_destination() -> None:
    assert progress_text(Progress.from_info(MigrationInfo()), "running") == (
        "VM running · no migration"
    )
    done = MigrationInfo(status=MigrationStatus.COMPLETED, total_time=4100, downtime=21, ram=ram())
    assert progress_text(Progress.from_info(done), "postmigrate") == (
        "migration completed in 4100 ms · downtime 21 ms · 64.0 MiB sent · VM postmigrate"
    )
    incoming = MigrationInfo(status=MigrationStatus.ACTIVE)  # a destination has no figures
    assert progress_text(Progress.from_info(incoming), "inmigrate") == (
        "migration active · VM inmigrate"
    )


@pytest.mark.parametrize(
    "info",
    [
        MigrationInfo(),
        MigrationInfo(
            status=MigrationStatus.ACTIVE, total_time=2500, expected_downtime=300, ram=ram()
        ),
        MigrationInfo(status=MigrationStatus.COMPLETED, total_time=4100, downtime=21, ram=ram()),
        MigrationInfo(status=MigrationStatus.ACTIVE),  # a destination: no figures
        MigrationInfo(status=MigrationStatus.FAILED, error_desc="Unable to write to socket"),
    ],
    ids=["none", "active", "completed", "destination", "failed"],
)
def test_progress_from_query_migrate_matches_the_snapshot(info: MigrationInfo) -> None:
    """What `demo` reads over QMP shows what the REPL shows of the same snapshot, to the byte."""
    assert Progress.from_query_migrate(qapi.migration_info(info)) == Progress.from_info(info)


def test_notices() -> None:
    done = MigrationInfo(status=MigrationStatus.COMPLETED, total_time=4100, downtime=21, ram=ram())
    assert ended_notice(Progress.from_info(done)) == (
        "* migration completed in 4100 ms (downtime 21 ms, 64.0 MiB sent, 134.2 mbps)\n"
    )
    completed_here = MigrationInfo(status=MigrationStatus.COMPLETED, total_time=0)
    assert ended_notice(Progress.from_info(completed_here)) == ("* incoming migration completed\n")
    assert ended_notice(Progress.from_info(MigrationInfo(status=MigrationStatus.CANCELLED))) == (
        "* migration cancelled\n"
    )


def test_toolbar_and_info_migrate_read_one_snapshot() -> None:
    """The toolbar's expected downtime is the figure `info migrate` prints from that snapshot."""
    ram = RamStats(
        transferred=1, remaining=2 * MiB, total=4 * MiB, duplicate=0, skipped=0, normal=1,
        normal_bytes=4096, dirty_sync_count=3, page_size=4096, multifd_bytes=0,
        pages_per_second=1, mbps=8.0,
    )  # fmt: skip
    info = MigrationInfo(status=MigrationStatus.ACTIVE, total_time=1000, expected_downtime=4321,
                         setup_time=1, ram=ram)  # fmt: skip
    text = progress_text(Progress.from_info(info))
    assert "expected downtime 4321 ms" in text and " 50% in sync" in text
    assert "expected downtime: 4321 ms\n" in render.info_migrate(info)
