"""The interactive shell in a real terminal (tmux): send-keys types, capture-pane reads.

A destination qemu-hmp runs beside it over pipes (hmp.endpoint), so the migration is real.
Every wait is on what the screen shows, with a deadline.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hmp.endpoint import Endpoint

pytestmark = [
    pytest.mark.tty,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux"),
]

TIMEOUT = 30.0


class Tmux:
    """One tmux server of our own (-L), one window running the shell."""

    def __init__(self, tmp_path: Path) -> None:
        self.socket = f"qemu-hmp-test-{os.getpid()}"
        self.env = {**os.environ, "XDG_STATE_HOME": str(tmp_path), "TERM": "xterm-256color"}

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args],
            check=True,
            capture_output=True,
            text=True,
            env=self.env,
        ).stdout

    def start(self, *qemu_args: str) -> None:
        command = shlex.join([sys.executable, "-m", "hmp", *qemu_args])
        state = shlex.quote(self.env["XDG_STATE_HOME"])
        self.tmux("new-session", "-d", "-x", "150", "-y", "30", f"XDG_STATE_HOME={state} {command}")
        self.wait_for("(qemu)")  # capture-pane drops trailing spaces

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p")

    def wait_for(self, needle: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if needle in text:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} never appeared on the screen:\n{text}")
            time.sleep(0.05)

    def wait_exit(self, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                raise AssertionError(f"the shell did not exit:\n{self.screen()}")
            time.sleep(0.05)

    def alive(self) -> bool:
        result = subprocess.run(
            ["tmux", "-L", self.socket, "has-session"], capture_output=True, env=self.env
        )
        return result.returncode == 0

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def term(tmp_path: Path) -> Iterator[Tmux]:
    t = Tmux(tmp_path)
    yield t
    t.kill()


def prompt_line(screen: str) -> str:
    return [line for line in screen.splitlines() if line.startswith("(qemu)")][-1]


def test_completion_ctrl_c_ctrl_d_and_history(term: Tmux) -> None:
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


def test_toolbar_and_finished_notice_during_a_real_migration(term: Tmux) -> None:
    with Endpoint(["qemu-hmp", "-m", "64M", "-incoming", "tcp:127.0.0.1:0"], name="dst") as dst:
        dst.wait_ready(TIMEOUT)
        address = dst.execute("info migrate", TIMEOUT).split("socket address: [\n\t")[1]
        uri = address.split("\n")[0]
        term.start("-m", "64M")
        term.keys("migrate_set_parameter max-bandwidth 8M", "Enter")
        term.keys(f"migrate -d {uri}", "Enter")
        term.wait_for("% sent · ")  # the toolbar follows the migration
        term.keys("info mig")
        screen = term.wait_for("* migration completed in ")
        assert prompt_line(screen) == "(qemu) info mig"  # the half-typed line survived
        term.keys("rate", "Enter")
        term.wait_for("Migration status: completed")
        term.wait_for("migration completed in ")  # the toolbar's final state
        assert "incoming migration completed" not in screen
        term.keys("quit", "Enter")
        term.wait_exit()
