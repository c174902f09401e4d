"""One monitor session: runs command lines against a Machine and writes what QEMU would print."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TextIO

from engine.errors import MigrationError
from engine.machine import Machine
from engine.snapshot import MigrationInfo
from hmp.monitor.dialect import DEFAULT, dialect_of
from hmp.monitor.parser import ParseError, parse_line

log = logging.getLogger(__name__)
BANNER = DEFAULT.banner  # the default dialect's; a monitor's own is ``monitor.dialect.banner``


class Monitor:
    """Output goes to ``out`` (QEMU's monitor_printf) and ``err`` (QEMU's error_report)."""

    def __init__(
        self,
        machine: Machine,
        out: TextIO | None = None,
        err: TextIO | None = None,
        *,
        can_suspend: bool = True,
    ):
        self.machine = machine
        self.dialect = dialect_of(machine)
        self._out = out
        self._err = err
        self.quit_requested = False
        # How a blocking `migrate` waits (while setup or active); the REPL draws its progress.
        self.wait_migration: Callable[[], MigrationInfo] = machine.wait_foreground
        # QEMU's monitor_suspend fails for the HMP that human-monitor-command runs: nothing
        # there may wait for a migration.
        self.can_suspend = can_suspend

    # Resolved at each write, so prompt_toolkit's patch_stdout also catches monitor output.
    @property
    def out(self) -> TextIO:
        return self._out if self._out is not None else sys.stdout

    @property
    def err(self) -> TextIO:
        return self._err if self._err is not None else sys.stderr

    def printf(self, text: str) -> None:
        self.out.write(text)

    def warn_report(self, message: str) -> None:
        """QEMU's warn_report inside a command: it goes to the monitor."""
        self.printf(f"warning: {message}\n")

    def error_report(self, message: str) -> None:
        """What QEMU writes to stderr as ``qemu-system-x86_64: message``."""
        self.out.flush()
        self.err.write(f"qemu-hmp: {message}\n")
        self.err.flush()

    def request_quit(self) -> None:
        self.quit_requested = True

    def execute(self, line: str) -> None:
        """Run one command line. Never raises: every failure becomes monitor output."""
        try:
            parsed = parse_line(self.dialect.commands, line)
            if parsed is not None:
                parsed.command.handler(self, parsed.args)
        except ParseError as err:
            self.printf(err.text)
        except MigrationError as err:
            self.printf(f"Error: {err.report()}\n")
        except Exception as exc:  # a bug must not take the user's session down with it
            log.exception("monitor command %r", line)
            self.error_report(f"internal error: {exc!r}")
        self.out.flush()
