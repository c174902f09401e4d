"""``-qmp`` on the command line: QMP servers next to the stdio monitor, and QEMU's lifetime.

QEMU outlives its monitor's input and ends at QMP ``quit``; so does qemu-hmp with ``-qmp``:
after piped input ends it keeps serving until a client sends ``quit``, and that ``quit``
releases the endpoint and ends the process, as QEMU's does.
"""

from __future__ import annotations

import contextlib
import os
import sys
import termios
import threading

from engine.errors import MigrationError
from engine.machine import Machine
from hmp.monitor import Monitor
from hmp.qemuopts import OptionError
from hmp.qmp import QmpServer, QmpSpec, parse_qmp_spec


def extract_qmp_options(argv: list[str]) -> tuple[list[QmpSpec], list[str]]:
    """Take every ``-qmp VALUE`` (or ``--qmp``) out of ``argv``; OptionError on a bad one."""
    specs: list[QmpSpec] = []
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in ("-qmp", "--qmp"):
            value = next(args, None)
            if value is None:
                raise OptionError(f"{arg}: requires an argument")
            specs.append(parse_qmp_spec(value))
        else:
            rest.append(arg)
    return specs, rest


class QmpFrontend:
    """The ``-qmp`` servers of one qemu-hmp process (OptionError, QEMU's text, if one can't
    listen)."""

    def __init__(self, machine: Machine, mon: Monitor, specs: list[QmpSpec]) -> None:
        self._machine = machine
        self._mon = mon
        # A QMP `quit` may end the process mid-prompt: keep the terminal mode to restore.
        self._tty = termios.tcgetattr(0) if specs and sys.stdin.isatty() else None
        self.servers: list[QmpServer] = []
        for spec in specs:
            try:
                server = QmpServer(machine, spec, on_quit=self._quit)
            except MigrationError as err:  # transport's AddressError: resolve, bind, listen
                self.close()
                raise OptionError(f"-qmp {spec.text}: {err.report()}") from err
            self.servers.append(server)
            if spec.wait:
                sys.stderr.write(f"qemu-hmp: -qmp {spec.text}: waiting for a client\n")
            server.start()

    def wait_for_quit(self) -> None:
        """After the monitor's input ended: with ``-qmp``, serve until QMP ``quit`` or Ctrl-C."""
        if not self.servers or self._mon.quit_requested:
            return
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            sys.stderr.write("qemu-hmp: terminating on signal 2\n")

    def _quit(self) -> None:
        """QMP ``quit`` (runs on a session thread): release everything, then end the process."""
        self.close()
        self._machine.close()
        if self._tty is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(0, termios.TCSANOW, self._tty)
            sys.stdout.write("\x1b[?2004l\x1b[?25h\n")  # bracketed paste off, cursor on
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    def close(self) -> None:
        for server in self.servers:
            server.close()
