"""The command line: QEMU's option spellings, our extensions, batch mode through a real pipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from engine.machine import Loader, MachineOptions
from engine.workload import PROFILES
from hmp.cli import SUBCOMMANDS, main, parse_argv
from hmp.monitor.values import SIZE_HINT
from hmp.qemuopts import OptionError

MiB = 1 << 20
ORACLE = Path(__file__).parent / "data" / "qemu-7.2"
NOT_A_SIZE = f"Parameter 'size' expects a non-negative number below 2^64\n{SIZE_HINT.rstrip()}"


def opts(*argv: str) -> MachineOptions:
    result = parse_argv(list(argv))
    assert result is not None
    return result


@pytest.mark.parametrize(
    ("size", "ram"),
    [("2G", 2048 * MiB), ("512", 512 * MiB), ("512M", 512 * MiB), ("1.5G", 1536 * MiB),
     ("size=64M", 64 * MiB), ("0", 128 * MiB), ("1k", 8192), ("0x10", 16 * MiB)],
)  # fmt: skip
def test_memory_size(size: str, ram: int) -> None:
    assert opts("-m", size).ram_size == ram


def test_defaults_and_qemu_options() -> None:
    assert opts() == MachineOptions()
    o = opts("-m", "256", "-incoming", "defer", "-name", "guest=dst,debug-threads=on", "-S")
    assert (o.ram_size, o.incoming, o.name, o.start_paused) == (256 * MiB, "defer", "dst", True)
    assert opts("--incoming", "tcp:127.0.0.1:4444").incoming == "tcp:127.0.0.1:4444"


def test_extensions_and_loader() -> None:
    o = opts("--workload", "random-writer", "--seed", "7", "-device",
             "loader,file=/tmp/blob,addr=0x100000,force-raw=on")  # fmt: skip
    assert (o.workload, o.seed) == ("random-writer", 7)
    assert o.loaders == (Loader("/tmp/blob", 0x100000),)


def test_harmless_qemu_options_are_ignored() -> None:
    argv = "-machine pc,accel=tcg -smp 1 -display none -nodefaults -M pc".split()
    assert opts(*argv) == MachineOptions()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-m", "abc"], f"-m abc: {NOT_A_SIZE}"),
        (["-m", "64MB"], f"-m 64MB: {NOT_A_SIZE}"),
        (["-m"], "-m: requires an argument"),
        (["-bogus"], "-bogus: invalid option"),
        (["disk.img"], "disk.img: disk images are not supported"),
        (["--workload", "busy"], "--workload busy: expected one of " + ", ".join(PROFILES)),
        (["--seed", "x"], "--seed x: expected a non-negative integer"),
        (["-device", "e1000"], "-device e1000: only the loader device is supported"),
        (["-device", "loader,file=f,addr=1"],
         "-device loader,file=f,addr=1: only raw images are supported (add force-raw=on)"),
        (["-device", "loader,file=f"],
         "-device loader,file=f: expected loader,file=PATH,addr=ADDR,force-raw=on"),
    ],
)  # fmt: skip
def test_bad_command_lines(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(OptionError) as err:
        parse_argv(argv)
    assert str(err.value) == message
    assert main(argv) == 1
    assert capsys.readouterr().err == f"qemu-hmp: {message}\n"


def test_help_version_and_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "-incoming URI|defer" in capsys.readouterr().out
    assert main(["-version"]) == 0
    assert "(QEMU 7.2.0 monitor)" in capsys.readouterr().out
    assert set(SUBCOMMANDS) >= {"demo", "bench", "replay", "record"}


def run(
    stdin: str, *argv: str, exe: tuple[str, ...] = (sys.executable, "-m", "hmp")
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*exe, *argv], input=stdin, capture_output=True, text=True, timeout=60)


def test_batch_mode_prints_the_prompt_and_qemus_output() -> None:
    result = run("info migrate_parameters\n", "-m", "16M")
    lines = (ORACLE / "defaults_prelaunch.txt").read_text().split("(qemu) ")
    expected = next(b for b in lines if b.startswith("info migrate_parameters\n"))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "(qemu) " + expected


def test_batch_mode_quit_and_end_of_input() -> None:
    result = run("info status\nquit\ninfo status\n", "-m", "16M", "-S")
    assert result.returncode == 0
    assert result.stdout == "(qemu) info status\nVM status: paused (prelaunch)\n(qemu) quit\n"
    empty = run("", "-m", "16M")
    assert (empty.returncode, empty.stdout) == (0, "")


def test_console_script() -> None:
    """The script pip installed beside this interpreter (the README's venv is never on PATH)."""
    script = Path(sys.executable).with_name("qemu-hmp")
    assert script.is_file(), f"{script}: the package is not installed (pip install -e .)"
    result = run("info status\n", "-m", "16M", exe=(str(script),))
    assert result.stdout == "(qemu) info status\nVM status: running\n"


def test_bad_size_exits_1_with_qemus_lines() -> None:
    result = run("", "-m", "abc")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 3 and result.stderr.startswith("qemu-hmp: -m abc:")


@pytest.mark.tty
def test_interactive_prompt(tmp_path: Path) -> None:
    # History goes under tmp_path, never into the real user's $XDG_STATE_HOME.
    env = {**os.environ, "PROMPT_TOOLKIT_NO_CPR": "1", "XDG_STATE_HOME": str(tmp_path)}
    child = pexpect.spawn(
        sys.executable, ["-m", "hmp", "-m", "16M", "-S"], encoding="utf-8", timeout=20, env=env
    )
    try:
        child.expect_exact("QEMU 7.2.0 monitor - type 'help' for more information")
        child.expect_exact("(qemu)")
        child.sendline("info status")
        child.expect_exact("VM status: paused (prelaunch)")
        child.send("info sta")
        child.sendintr()  # Ctrl-C clears the line and prompts again
        child.expect_exact("(qemu)")
        child.sendline("info status")
        child.expect_exact("VM status: paused (prelaunch)")
        child.expect_exact("(qemu)")
        child.sendeof()  # Ctrl-D quits
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert (tmp_path / "qemu-hmp" / "history").is_file()
