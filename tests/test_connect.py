"""`qemu-hmp --connect`: the shell in front of a QEMU's QMP socket.

Peers that are not a healthy QEMU (nothing listening, not QMP, silent, closing mid-command)
are fake unix-socket peers, so these run without QEMU; the tests marked ``qemu`` drive real
QEMU 7.2 processes: batch mode byte for byte, and a person at a pty (typing, completion from
the 7.2 dialect, the toolbar and events during a migration between two QEMUs, QEMU killed
while a command waits).
"""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from hmp.harness import Endpoint, QmpClient, free_port, qmp_client
from hmp.harness.qemu_endpoint import qemu_argv
from hmp.monitor import DIALECTS
from hmp.shell import connect as connect_module
from hmp.shell.completion import MonitorCompleter
from hmp.shell.connect import ConnectError, RemoteMonitor, connect
from hmp.shell.dialect import dialect_for
from tests.test_qmp_client import Lines, negotiated, peer
from tests.test_repl_tty import Terminal, prompt_line

TIMEOUT = 30.0
QEMU = ["qemu-system-x86_64", "-M", "none", "-accel", "tcg", "-nodefaults", "-display", "none"]


def run_connect(address: str, stdin: str = "") -> tuple[int, str, str]:
    """Status, stdout and stderr of a batch session, bytes as written (no newline edits)."""
    done = subprocess.run(
        [sys.executable, "-m", "hmp", "--connect", address],
        input=stdin.encode(),
        capture_output=True,
        timeout=TIMEOUT,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


# -- connections that fail: one line each, status 1 ---------------------------------------------


def test_nothing_listening(tmp_path: Path) -> None:
    missing = f"unix:{tmp_path}/none.qmp"
    error = f"qemu-hmp: --connect {missing}: cannot connect: No such file or directory\n"
    assert run_connect(missing) == (1, "", error)
    port = free_port()
    error = f"qemu-hmp: --connect tcp:127.0.0.1:{port}: cannot connect: Connection refused\n"
    assert run_connect(f"tcp:127.0.0.1:{port}") == (1, "", error)


def test_a_peer_that_is_not_qmp(tmp_path: Path) -> None:
    with peer(tmp_path, lambda conn, _lines: conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")) as path:
        with pytest.raises(ConnectError, match=r"^not a QMP server: not JSON: b'SSH-2.0"):
            connect(path)


def test_a_peer_that_never_greets_is_bounded(tmp_path: Path) -> None:
    gave_up = threading.Event()
    with peer(tmp_path, lambda _conn, _lines: gave_up.wait(10)) as path:
        started = time.monotonic()
        with pytest.raises(ConnectError, match=r"^no QMP greeting within 0.2 s"):
            connect(path, timeout=0.2)
        assert time.monotonic() - started < 5
        gave_up.set()


def test_a_peer_that_never_ends_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qmp_client, "MAX_LINE", 64 * 1024)

    def endless(conn: socket.socket, _lines: Lines) -> None:
        with pytest.raises(ConnectionError):  # the client hangs up on it
            while True:
                conn.sendall(b" " * 65536)

    with peer(tmp_path, endless) as path:
        with pytest.raises(ConnectError, match=r"^not a QMP server: not QMP: a line of more"):
            connect(path)


def test_qemu_closing_mid_command_ends_the_session(tmp_path: Path) -> None:
    def closes(conn: socket.socket, lines: Lines) -> None:
        negotiated(conn, lines)
        request = lines.next()  # the command arrives; QEMU dies before it answers
        assert request is not None and request["arguments"] == {"command-line": "info status"}

    out, err = io.StringIO(), io.StringIO()
    with peer(tmp_path, closes) as path:
        client = QmpClient(path)
        mon = RemoteMonitor(client, dialect_for((7, 2)), out=out, err=err)
        mon.execute("info status")
        client.close()
    assert (mon.quit_requested, mon.status, out.getvalue()) == (True, 1, "")
    assert err.getvalue() == (
        f"qemu-hmp: --connect {path}: the peer closed the connection during `info status`\n"
    )


def test_a_frozen_qemu_is_a_bounded_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connect_module, "COMMAND_TIMEOUT_S", 0.2)
    released = threading.Event()

    def frozen(conn: socket.socket, lines: Lines) -> None:
        negotiated(conn, lines)
        assert lines.next() is not None  # read, never answered
        released.wait(10)

    out, err = io.StringIO(), io.StringIO()
    with peer(tmp_path, frozen) as path, QmpClient(path) as client:
        mon = RemoteMonitor(client, dialect_for((7, 2)), out=out, err=err)
        mon.execute("info status")
        released.set()
    assert (mon.quit_requested, out.getvalue()) == (False, "")  # the user may try again
    assert err.getvalue() == (
        f"qemu-hmp: --connect {path}: no answer from QEMU within 0.2 s to `info status`\n"
    )


# -- dialects and the command line of a QEMU ----------------------------------------------------


def completions(completer: MonitorCompleter, text: str) -> list[str]:
    return [c.text for c in completer.get_completions(Document(text), CompleteEvent())]


def test_the_7_2_dialect_is_qemus_plus_the_local_commands() -> None:
    qemu = dialect_for((7, 2))
    assert qemu.release == "7.2" and dialect_for((7, 2, 22)[:2]) is qemu
    assert dialect_for((8, 0)) is qemu  # a newer QEMU: the newest release we know before it
    assert dialect_for((6, 2)) is qemu  # an older one: the oldest we know
    assert dialect_for((11, 1)).release == dialect_for((12, 0)).release == "11.1"
    completer = MonitorCompleter(dialect=qemu)
    assert completions(completer, "info x") == []  # x_compress_policy is ours
    ours = MonitorCompleter(dialect=DIALECTS["7.2"])
    assert completions(ours, "info x") == ["x_compress_policy"]
    assert completions(completer, "x_migrate_") == ["x_migrate_export", "x_migrate_chart"]
    assert "x-compress-auto" not in completions(completer, "migrate_set_capability x")
    assert completions(completer, "migrate_set_parameter x-") == ["x-checkpoint-delay"]


def test_qemu_command_line_of_a_qemu_hmp_one() -> None:
    argv = ["qemu-hmp", "-m", "64M", "-S", "--workload", "idle", "--seed", "3"]
    argv += ["-incoming", "tcp:127.0.0.1:1", "--no-history", "-device", "loader,file=x"]
    assert qemu_argv(argv) == [
        "qemu-system-x86_64", "-m", "64M", "-S", "-incoming", "tcp:127.0.0.1:1",
        "-device", "loader,file=x", "-M", "none", "-accel", "tcg", "-display", "none",
        "-nodefaults",
    ]  # fmt: skip
    assert qemu_argv(["qemu-hmp", "-M", "pc"])[1:3] == ["-M", "pc"]


# -- real QEMU 7.2 -----------------------------------------------------------------------------


class Qemu:
    """A QEMU with a QMP socket for the shell and one for the test."""

    def __init__(self, tmp_path: Path, name: str, *args: str) -> None:
        self.address = f"unix:{tmp_path}/{name}.qmp"
        own = tmp_path / f"{name}-test.qmp"
        self.proc = subprocess.Popen(
            [
                *QEMU,
                *args,
                "-qmp",
                f"{self.address},server=on,wait=off",
                "-qmp",
                f"unix:{own},server=on,wait=off",
            ],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + TIMEOUT
        tick = threading.Event()
        while not own.exists():  # QEMU binds its sockets before it serves them
            assert self.proc.poll() is None and time.monotonic() < deadline, "QEMU did not start"
            tick.wait(0.05)
        self.qmp = QmpClient(str(own), TIMEOUT)

    def hmp(self, line: str) -> str:
        return str(self.qmp.execute("human-monitor-command", {"command-line": line}))

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.qmp.close()


@pytest.fixture
def qemus(tmp_path: Path) -> Iterator[list[Qemu]]:
    started: list[Qemu] = []
    yield started
    for qemu in started:
        qemu.kill()


@pytest.fixture
def qemu(tmp_path: Path, qemus: list[Qemu]) -> Qemu:
    """A QEMU 7.2 source, 64 MiB, its monitor on a socket."""
    qemus.append(Qemu(tmp_path, "src", "-m", "64M"))
    return qemus[-1]


@pytest.mark.qemu
def test_batch_output_is_qemus_byte_for_byte(qemu: Qemu) -> None:
    lines = ["info status", "foo", "migrate_set_parameter compress-level 10", "help migrate"]
    status, out, err = run_connect(qemu.address, "".join(f"{line}\n" for line in lines))
    assert (status, err) == (0, "")
    assert out == "".join(f"(qemu) {line}\n{qemu.hmp(line)}" for line in lines)
    assert "\r\n" in out  # QEMU's line ends, as QEMU wrote them


@pytest.mark.qemu
def test_qemu_killed_while_a_command_waits(qemu: Qemu) -> None:
    shell = Endpoint(["qemu-hmp", "--connect", qemu.address], name="shell")
    try:
        assert shell.execute("info status", TIMEOUT) == "VM status: running\r\n"
        qemu.proc.send_signal(signal.SIGSTOP)  # QEMU answers nothing from here on
        shell.proc.stdin.write(b"info migrate\n")  # type: ignore[union-attr]
        shell.proc.stdin.flush()  # type: ignore[union-attr]
        qemu.kill()
        assert shell.proc.wait(TIMEOUT) == 1  # at once: no answer can come
        error = shell.read_stderr(timeout=TIMEOUT)
    finally:
        shell.kill()
    assert len(error) == 1
    assert error[0].startswith(
        f"qemu-hmp: --connect {qemu.address}: the peer closed the connection"
    )


@pytest.mark.qemu
@pytest.mark.tty
def test_typing_and_completion_at_a_real_qemu(term: Terminal, qemu: Qemu) -> None:
    term.start("--connect", qemu.address)
    term.wait_for("QEMU 7.2.")  # QEMU's banner, with the version that greeted the shell
    term.keys("migrate_set_cap", "Tab")
    term.wait_for("(qemu) migrate_set_capability")
    term.keys(" xbz", "Tab")
    term.wait_for("(qemu) migrate_set_capability xbzrle")
    term.keys(" on", "Enter", "info migrate_capabilities", "Enter")
    term.wait_for("xbzrle: on")
    assert qemu.hmp("info migrate_capabilities").startswith("xbzrle: on\r\n")  # QEMU's own
    # A parameter's value as QEMU reports it (polled) is offered first, spelled to mean it.
    term.keys("migrate_set_parameter max-bandwidth 32M", "Enter")
    term.keys("migrate_set_parameter max-bandwidth ", "Tab")
    term.wait_for("current; size")
    term.keys("C-c", "C-d")
    term.wait_exit()
    assert qemu.proc.poll() is None  # leaving the shell leaves QEMU running


@pytest.mark.qemu
@pytest.mark.tty
def test_toolbar_and_events_during_a_migration_between_qemus(
    tmp_path: Path, term: Terminal, qemus: list[Qemu]
) -> None:
    port = free_port()
    qemus.append(Qemu(tmp_path, "dst", "-m", "64M", "-incoming", f"tcp:127.0.0.1:{port}"))
    src = Qemu(tmp_path, "src", "-m", "64M")
    qemus.append(src)
    term.start("--connect", src.address)
    term.wait_for("no migration")  # the toolbar, from query-migrate
    # 16384 zero pages at 1 KiB/s: minutes, so the migration is active while we look.
    term.keys("migrate_set_parameter max-bandwidth 1K", "Enter")
    term.keys("migrate_set_capability events on", "Enter")
    term.keys(f"migrate -d tcp:127.0.0.1:{port}", "Enter")
    term.wait_for("* event MIGRATION status=active")  # a QMP event, above the prompt
    term.wait_for("% in sync · ")
    term.wait_for("migration active")
    term.keys("info mig")
    term.wait_for("(qemu) info mig")
    src.hmp("migrate_cancel")  # from another client: the notice comes all the same
    term.wait_until(
        lambda screen: (
            "* migration cancelled" in screen and prompt_line(screen) == "(qemu) info mig"
        ),
        "the notice above an intact '(qemu) info mig'",
    )
    term.keys("C-u", "x_migrate_chart", "Enter")
    term.wait_for("remaining RAM")  # drawn from the polled query-migrate samples
    export = tmp_path / "migration.csv"
    term.keys(f"x_migrate_export {export}", "Enter")
    term.wait_until(lambda _screen: export.exists(), "the export")
    header, first, *_ = export.read_text().splitlines()
    assert header == "t_ms,transferred,remaining,mbps,dirty_pages_rate,cpu_throttle"
    assert int(first.split(",")[2]) > 0  # RAM remained when the first sample was taken
    term.keys("quit", "Enter")
    term.wait_exit()
    assert src.proc.wait(TIMEOUT) == 0  # `quit` went to QEMU


@pytest.mark.qemu
@pytest.mark.tty
def test_qemu_killed_mid_command_at_the_prompt(term: Terminal, qemu: Qemu) -> None:
    term.start("--connect", qemu.address)
    term.wait_for("QEMU 7.2.")
    qemu.proc.send_signal(signal.SIGSTOP)  # the command below gets no answer
    term.keys("info status", "Enter")
    term.wait_for("(qemu) info status")
    qemu.kill()
    term.wait_for(f"qemu-hmp: --connect {qemu.address}: the peer closed the connection")
    term.wait_exit(connect_module.COMMAND_TIMEOUT_S / 2)  # not at the command's deadline
    assert term.child is not None
    term.child.close()
    assert term.child.exitstatus == 1
