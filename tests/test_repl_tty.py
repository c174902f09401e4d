"""The interactive shell in a real pseudo-terminal: pexpect types, pyte draws the screen.

pexpect runs the shell on a pty; everything it prints goes through pyte, a VT100 emulator,
so tests read the screen as a person would see it (toolbar, redrawn prompt), as with tmux's
capture-pane but with nothing to install outside the project. A destination qemu-hmp runs
beside it over pipes (hmp/harness/endpoint.py), so the migration is real. Every wait reads
output with a deadline.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pexpect
import pyte
import pytest

from hmp.harness.endpoint import Endpoint

pytestmark = pytest.mark.tty

TIMEOUT = 30.0
COLUMNS, ROWS = 150, 30
CPR = b"\x1b[6n"  # "report the cursor position"
KEYS = {"Enter": "\r", "Tab": "\t", "Up": "\x1b[A", "C-c": "\x03", "C-d": "\x04", "C-u": "\x15"}


class Terminal:
    """One shell on a pty of COLUMNS x ROWS, its output rendered by a terminal emulator."""

    def __init__(self, tmp_path: Path) -> None:
        self.env = {"XDG_STATE_HOME": str(tmp_path), "TERM": "xterm-256color"}
        self.child: pexpect.spawn | None = None
        self.screen_ = pyte.Screen(COLUMNS, ROWS)
        self.stream = pyte.ByteStream(self.screen_)

    def start(self, *qemu_args: str) -> None:
        self.screen_.reset()
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "hmp", *qemu_args],
            env={**os.environ, **self.env},
            dimensions=(ROWS, COLUMNS),
        )
        self.wait_for("(qemu)")

    def keys(self, *keys: str) -> None:
        assert self.child is not None
        for key in keys:
            self.child.send(KEYS.get(key, key))

    def _pump(self, timeout: float) -> bool:
        """Feed what the shell printed within ``timeout`` to the screen; False once it exited."""
        assert self.child is not None
        try:
            data = self.child.read_nonblocking(65536, timeout)
        except pexpect.TIMEOUT:
            return True
        except pexpect.EOF:
            return False
        self.stream.feed(data)
        if CPR in data:  # prompt_toolkit asks where the cursor is, as a terminal would answer
            cursor = self.screen_.cursor
            self.child.send(f"\x1b[{cursor.y + 1};{cursor.x + 1}R")
        return True

    def screen(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen_.display)

    def wait_until(self, shown: Callable[[str], bool], what: str, timeout: float = TIMEOUT) -> str:
        """The screen, once ``shown`` holds for it (the shell may still be redrawing before)."""
        deadline = time.monotonic() + timeout
        while not shown(self.screen()):
            if time.monotonic() > deadline or not self._pump(0.1):
                raise AssertionError(f"{what} never appeared on the screen:\n{self.screen()}")
        return self.screen()

    def wait_for(self, needle: str, timeout: float = TIMEOUT) -> str:
        return self.wait_until(lambda screen: needle in screen, repr(needle), timeout)

    def wait_exit(self, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while self._pump(0.1):
            if time.monotonic() > deadline:
                raise AssertionError(f"the shell did not exit:\n{self.screen()}")

    def alive(self) -> bool:
        return self.child is not None and self.child.isalive()

    def kill(self) -> None:
        if self.child is not None:
            self.child.close(force=True)


def prompt_line(screen: str) -> str:
    return [line for line in screen.splitlines() if line.startswith("(qemu)")][-1]


def test_completion_ctrl_c_ctrl_d_and_history(term: Terminal) -> None:
    term.start("-m", "16M")
    term.keys("migrate_set_capability auto-conv", "Tab")
    term.wait_for("(qemu) migrate_set_capability auto-converge")
    term.keys(" on", "Enter", "info migrate_capabilities", "Enter")
    term.wait_for("auto-converge: on")
    term.keys("info sta")
    term.wait_for("(qemu) info sta")
    term.keys("C-c")  # drops the line; the shell stays
    term.keys("info status", "Enter")
    term.wait_for("VM status: running")
    assert term.alive()
    term.keys("C-d")
    term.wait_exit()

    term.start("-m", "16M")  # a new process reads the same history file
    term.keys("Up")
    term.wait_for("(qemu) info status")
    term.keys("C-u", "quit", "Enter")
    term.wait_exit()


def test_toolbar_and_finished_notice_during_a_real_migration(term: Terminal) -> None:
    argv = ["qemu-hmp", "-m", "64M", "-incoming", "tcp:127.0.0.1:0"]
    with Endpoint(argv, name="dst", qmp=True) as dst:
        dst.wait_ready(TIMEOUT)
        uri = dst.listening_uri()
        term.start("-m", "64M")
        term.keys("migrate_set_parameter max-bandwidth 8M", "Enter")
        term.keys(f"migrate -d {uri}", "Enter")
        term.wait_for("% in sync · ")  # the toolbar follows the migration
        term.keys("info mig")
        # The notice lands above the prompt and the half-typed line survives the redraw.
        screen = term.wait_until(
            lambda screen: (
                "* migration completed in " in screen and prompt_line(screen) == "(qemu) info mig"
            ),
            "the notice above an intact '(qemu) info mig'",
        )
        term.keys("rate", "Enter")
        term.wait_for("Migration status: completed")
        term.wait_for("migration completed in ")  # the toolbar's final state
        assert "incoming migration completed" not in screen
        term.keys("quit", "Enter")
        term.wait_exit()


def destination_uri(dst: Endpoint) -> str:
    return dst.execute("info migrate", TIMEOUT).split("socket address: [\n\t")[1].split("\n")[0]


def test_blocking_migrate_shows_progress_and_ctrl_c_says_it_detached(term: Terminal) -> None:
    with Endpoint(["qemu-hmp", "-m", "64M", "-incoming", "tcp:127.0.0.1:0"], name="dst") as dst:
        dst.wait_ready(TIMEOUT)
        term.start("-m", "64M")
        # 64 MiB at 1 MiB/s: a minute, so the wait is still on when Ctrl-C comes.
        term.keys("migrate_set_parameter max-bandwidth 1M", "Enter")
        term.keys(f"migrate {destination_uri(dst)}", "Enter")
        screen = term.wait_for("% in sync · ")  # the toolbar draws while migrate blocks
        assert prompt_line(screen).startswith("(qemu) migrate tcp:")
        term.keys("C-c")
        term.wait_for("* stopped waiting: the migration goes on in the background")
        term.keys("info migrate", "Enter")
        term.wait_for("Migration status: active")  # detached, not cancelled
        term.keys("migrate_cancel", "Enter")
        term.keys("quit", "Enter")
        term.wait_exit()


def test_blocking_migrate_returns_to_the_prompt_when_it_completes(term: Terminal) -> None:
    with Endpoint(["qemu-hmp", "-m", "16M", "-incoming", "tcp:127.0.0.1:0"], name="dst") as dst:
        dst.wait_ready(TIMEOUT)
        term.start("-m", "16M")
        term.keys(f"migrate {destination_uri(dst)}", "Enter")
        term.wait_for("* migration completed in ")
        term.keys("info status", "Enter")
        term.wait_for("VM status: paused (postmigrate)")
        assert "stopped waiting" not in term.screen()
        term.keys("quit", "Enter")
        term.wait_exit()


def test_history_suggestion_is_styled_apart_from_typed_text(term: Terminal) -> None:
    term.start("-m", "16M")
    term.keys("info status", "Enter")
    term.wait_for("VM status: running")
    term.keys("info st")

    def suggested(screen: str) -> bool:  # on the new prompt, below the answer
        lines = screen.splitlines()
        answer = lines.index("VM status: running")
        return any(line == "(qemu) info status" for line in lines[answer + 1 :])

    screen = term.wait_until(suggested, "the suggested rest on the new prompt")
    row = max(y for y, line in enumerate(screen.splitlines()) if line.startswith("(qemu)"))
    cells = term.screen_.buffer[row]
    typed, suggested = cells[len("(qemu) info s")], cells[len("(qemu) info st")]
    assert not typed.italics and suggested.italics
    term.keys("C-u", "quit", "Enter")
    term.wait_exit()


def test_tab_offers_values_that_mean_what_the_menu_says(term: Terminal) -> None:
    """max-bandwidth's current value is offered as 32M: a bare 33554432 would mean 32 TiB/s."""
    term.start("-m", "16M")
    term.keys("migrate_set_parameter max-bandwidth 32M", "Enter")
    term.keys("migrate_set_parameter max-bandwidth ", "Tab")
    term.wait_for("current; size")  # the menu: the current value first
    term.keys("Tab", "Enter")  # take the first entry, run it
    term.keys("info migrate_parameters", "Enter")
    screen = term.wait_for("max-bandwidth: 33554432 bytes/second")  # not 32 TiB/s
    assert screen.splitlines().count("(qemu) migrate_set_parameter max-bandwidth 32M") == 2
    term.keys("quit", "Enter")
    term.wait_exit()
