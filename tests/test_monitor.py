"""The monitor in-process (Monitor + a real Machine): extensions and cases the oracle can't show."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.machine import Machine, MachineOptions
from hmp.monitor.commands import COMMANDS, INFO_COMMANDS
from hmp.monitor.session import Monitor


class Session:
    def __init__(self, **opts: object) -> None:
        opts.setdefault("ram_size", 8 << 20)  # small guests start fast
        self.machine = Machine(MachineOptions(**opts))  # type: ignore[arg-type]
        self.out, self.err = io.StringIO(), io.StringIO()
        self.mon = Monitor(self.machine, self.out, self.err)

    def run(self, line: str) -> str:
        self.out.seek(0)
        self.out.truncate()
        self.mon.execute(line)
        return self.out.getvalue()


@pytest.fixture
def session() -> Iterator[Session]:
    s = Session(start_paused=True)
    yield s
    s.machine.close()


@pytest.mark.parametrize(
    ("line", "hint"),
    [
        ("migrate_set_parameter compress_threads 12", "migrate_set_parameter compress-threads 12"),
        ("migrate_set_parameter compress_level 1", "migrate_set_parameter compress-level 1"),
        (
            "migrate_set_parameter decompress_threads 3",
            "migrate_set_parameter decompress-threads 3",
        ),
        ("migrate_set_parameter max_bandwidth 1G", "migrate_set_parameter max-bandwidth 1G"),
        ("migrate_set_capability auto_converge on", "migrate_set_capability auto-converge on"),
    ],
)
def test_underscore_spelling_hint(session: Session, line: str, hint: str) -> None:
    name = line.split()[1]
    assert session.run(line) == f'Error: invalid parameter value: {name}\nTry "{hint}"\n'


def test_no_hint_for_names_that_stay_unknown(session: Session) -> None:
    assert session.run("migrate_set_parameter no_such 1") == (
        "Error: invalid parameter value: no_such\n"
    )


def test_extension_parameter_is_settable_but_not_printed(session: Session) -> None:
    assert session.run("migrate_set_parameter x-compress-method zstd") == ""
    assert session.machine.config.param("x-compress-method") == "zstd"
    assert "x-compress-method" not in session.run("info migrate_parameters")
    assert session.run("migrate_set_parameter x-compress-method lzo") == (
        "Error: Parameter 'x-compress-method' does not accept value 'lzo'\n"
    )


def test_block_migration_is_refused(session: Session) -> None:
    for flag in ("-b", "-i"):
        assert session.run(f"migrate {flag} tcp:127.0.0.1:1") == (
            "Error: Block migration (-b, -i) is not supported by qemu-hmp\n"
        )


@pytest.mark.parametrize(
    ("uri", "error"),
    [
        ("foo:bar", "Parameter 'uri' expects a valid migration protocol"),
        ("tcp:127.0.0.1", "error parsing address '127.0.0.1'"),
    ],
)
def test_migrate_bad_uri(session: Session, uri: str, error: str) -> None:
    assert session.run(f"migrate -d {uri}") == f"Error: {error}\n"
    assert "Migration status: failed" in session.run("info migrate")


def test_info_version_and_name(session: Session) -> None:
    assert re.fullmatch(r"7\.2\.0 \(qemu-hmp \S+\)\n", session.run("info version"))
    assert session.run("info name") == ""
    named = Session(name="guest0")
    assert named.run("info name") == "guest0\n"
    named.machine.close()


def test_help_derives_from_the_table(session: Session) -> None:
    text = session.run("help")
    names = [line.split(" ")[0] for line in text.splitlines() if not line.startswith("\t")]
    assert names == sorted(c.name for c in COMMANDS)
    assert session.run("?") == text
    info = session.run("info")
    assert info == session.run("help info")
    assert info.splitlines() == [f"info {c.help_line()}".rstrip("\n") for c in INFO_COMMANDS]
    assert session.run("help q") == "quit|q  -- quit the emulator\n"


def test_pmemsave_writes_guest_ram(session: Session, tmp_path: Path) -> None:
    """The bytes (the oracle case checks only sizes); past the end of RAM reads as zeros."""
    ram = session.machine.ram
    ram.write(0x1000, b"qemu-hmp")
    dump, tail = tmp_path / "dump.bin", tmp_path / "tail.bin"
    assert session.run(f'pmemsave 0x1000 8 "{dump}"') == ""
    assert dump.read_bytes() == b"qemu-hmp"
    assert session.run(f'pmemsave {ram.size}-4 8 "{tail}"') == ""
    assert tail.read_bytes() == bytes(ram.buf[ram.size - 4 :]) + bytes(4)


def test_quit(session: Session) -> None:
    assert session.run("q") == ""
    assert session.mon.quit_requested


def test_stop_cont_and_runstates(session: Session) -> None:
    assert session.run("info status") == "VM status: paused (prelaunch)\n"
    session.run("cont")
    assert session.run("info status") == "VM status: running\n"
    session.run("s")
    assert session.run("info status") == "VM status: paused\n"


def test_hex_size_warning_goes_to_the_monitor(session: Session) -> None:
    assert session.run("migrate_set_parameter max-bandwidth 0x10M") == (
        "warning: Using a multiplier suffix on hex numbers is deprecated: 0x10M\n"
    )
    assert "max-bandwidth: 16777216 bytes/second" in session.run("info migrate_parameters")
