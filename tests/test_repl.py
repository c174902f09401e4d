"""The interactive shell through prompt_toolkit's pipe input: keys in, screen text out.

The REPL runs in a thread of its own; the test types into its pipe and waits on conditions
(text on the screen, the line being edited), never on sleeps.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from prompt_toolkit import PromptSession
from prompt_toolkit.application import create_app_session
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from prompt_toolkit.output.plain_text import PlainTextOutput

from engine.machine import Machine, MachineOptions
from hmp.monitor.session import Monitor
from hmp.shell import repl

TIMEOUT = 20.0
MiB = 1024 * 1024
MONITORS: list[Monitor] = []


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Screen(io.StringIO):
    """What patch_stdout draws above the prompt (it writes here through PlainTextOutput)."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = threading.Condition()

    def write(self, text: str) -> int:
        with self._changed:
            n = super().write(text)
            self._changed.notify_all()
        return n

    def wait_for(self, needle: str, timeout: float = TIMEOUT) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: needle in self.getvalue(), timeout):
                raise AssertionError(f"{needle!r} never appeared in:\n{self.getvalue()}")


class Shell:
    """run_repl on a pipe, in a thread; ``session`` is the PromptSession it built."""

    def __init__(self, machine: Machine, monkeypatch: pytest.MonkeyPatch, history: bool) -> None:
        self.screen = Screen()
        self.machine = machine
        self.status: int | None = None
        self._sessions: list[PromptSession[str]] = []
        make_session = repl.make_session

        def spy(*args: object, **kwargs: object) -> PromptSession[str]:
            session = make_session(*args, **kwargs)  # type: ignore[arg-type]
            self._sessions.append(session)
            return session

        monkeypatch.setattr(repl, "make_session", spy)
        self._stack = ExitStack()
        self._pipe = self._stack.enter_context(create_pipe_input())
        self._thread = threading.Thread(target=self._run, args=(history,), daemon=True)
        self._thread.start()
        wait_until(lambda: bool(self._sessions) and self.session.app.is_running, "the prompt")

    def _run(self, history: bool) -> None:
        # The app session is a context variable: it must be made in the REPL's own thread.
        with create_app_session(output=PlainTextOutput(self.screen)):
            mon = Monitor(self.machine)
            MONITORS.append(mon)
            self.status = repl.run_repl(
                mon, history=history, input=self._pipe, output=DummyOutput()
            )

    @property
    def session(self) -> PromptSession[str]:
        return self._sessions[0]

    @property
    def line(self) -> str:
        return self.session.default_buffer.text

    def type(self, keys: str, *, expect_line: str | None = None) -> None:
        self._pipe.send_text(keys)
        if expect_line is not None:
            wait_until(lambda: self.line == expect_line, f"the line {expect_line!r}")

    def run(self, line: str, output: str) -> None:
        self.type(line + "\r")
        self.screen.wait_for(output)

    def quit(self) -> int | None:
        self.type("\x04")  # Ctrl-D on an empty line
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "Ctrl-D did not end the shell"
        self._stack.close()
        return self.status


@pytest.fixture
def machine() -> Iterator[Machine]:
    # Engine reports reach the monitor of the shell running now, as the CLI wires them.
    m = Machine(
        MachineOptions(ram_size=8 * MiB, seed=1), notify=lambda msg: MONITORS[-1].error_report(msg)
    )
    yield m
    m.close()


@pytest.fixture
def start(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Shell]]:
    """Starts a shell when called: in the test's own phase, because pytest's output capture
    resets sys.stdout between phases and would undo patch_stdout's proxy."""
    shells: list[Shell] = []

    def make(history: bool = False) -> Shell:
        shells.append(Shell(machine, monkeypatch, history))
        return shells[-1]

    yield make
    for s in shells:
        if s._thread.is_alive():
            s.type("\x03", expect_line="")  # whatever the test left on the line
            s.quit()


def test_command_output_is_drawn_above_the_prompt(start: Callable[..., Shell]) -> None:
    shell = start()
    shell.run("info status", "VM status: running\n")
    assert shell.quit() == 0


def test_tab_completes_capability_names(start: Callable[..., Shell]) -> None:
    shell = start()
    shell.type(
        "migrate_set_capability auto-c\t", expect_line="migrate_set_capability auto-converge"
    )
    shell.type(" on\r")
    shell.run("info migrate_capabilities", "auto-converge: on\n")


def test_tab_menu_lists_every_capability(start: Callable[..., Shell]) -> None:
    shell = start()
    shell.type("migrate_set_capability \t")
    wait_until(lambda: shell.session.default_buffer.complete_state is not None, "the menu")
    state = shell.session.default_buffer.complete_state
    assert state is not None
    names = [c.text for c in state.completions]
    assert {"compress", "auto-converge", "events", "multifd", "xbzrle"} <= set(names)


def test_ctrl_c_clears_the_line_and_does_not_exit(start: Callable[..., Shell]) -> None:
    shell = start()
    shell.type("migrate_set_capability events", expect_line="migrate_set_capability events")
    shell.type("\x03", expect_line="")
    shell.run("info migrate_capabilities", "events: off\n")  # the dropped line never ran
    assert shell.quit() == 0


def test_quit_leaves(start: Callable[..., Shell]) -> None:
    shell = start()
    shell.type("quit\r")
    shell._thread.join(TIMEOUT)
    assert shell.status == 0


def _incoming() -> tuple[Machine, str]:
    dst = Machine(MachineOptions(ram_size=8 * MiB, incoming="tcp:127.0.0.1:0"))
    address = dst.query_migrate().socket_address
    assert address is not None
    return dst, address[0]


def test_migration_finished_notice_keeps_the_half_typed_line(start: Callable[..., Shell]) -> None:
    shell = start()
    dst, uri = _incoming()
    try:
        shell.type("info mig", expect_line="info mig")
        shell.machine.migrate(uri)  # started behind the shell's back, so it ends mid-line
        shell.screen.wait_for("* migration completed in ")
        assert shell.line == "info mig"
        shell.run("rate", "Migration status: completed\n")
    finally:
        dst.close()


def test_migration_failure_is_reported_above_the_prompt(start: Callable[..., Shell]) -> None:
    shell = start()
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(TIMEOUT)
        shell.type(f"migrate -d tcp:127.0.0.1:{server.getsockname()[1]}\r")
        conn, _ = server.accept()
        shell.type("info st", expect_line="info st")
        conn.close()  # the "destination" dies mid-stream
        # "Unable to write to socket: …", or, when the whole small guest was already in the
        # socket buffers, "lost contact with the destination before it confirmed …".
        shell.screen.wait_for("qemu-hmp: ")
    assert shell.line == "info st"
    shell.run("atus", "VM status: running\n")  # the source guest runs on


@pytest.fixture
def state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    return tmp_path / "qemu-hmp"


def info_status_then_quit(start: Callable[..., Shell], history: bool) -> None:
    shell = start(history=history)
    shell.run("info status", "VM status: running\n")
    assert shell.quit() == 0


def test_history_persists_across_runs(start: Callable[..., Shell], state_dir: Path) -> None:
    info_status_then_quit(start, history=True)
    assert "+info status" in (state_dir / "history").read_text()

    second = start(history=True)
    history = second.session.history
    wait_until(lambda: "info status" in history.get_strings(), "the history file to load")
    second.type("\x1b[A", expect_line="info status")  # Up: the line typed in the first run
    second.run("", "VM status: running\n")
    assert second.quit() == 0


def test_no_history_writes_no_file(start: Callable[..., Shell], state_dir: Path) -> None:
    info_status_then_quit(start, history=False)
    assert not state_dir.exists()
