"""``-qmp`` on the command line: QMP servers next to the stdio monitor, and QEMU's lifetime.

QEMU outlives its monitor's input and ends at QMP ``quit``; so does qemu-hmp with ``-qmp``:
after piped input ends it keeps serving until a client sends ``quit``, and that ``quit``
releases the endpoint and ends the process, as QEMU's does.
"""

from __future__ import annotations

import sys

from engine.errors import MigrationError
from engine.machine import Machine
from hmp.exits import ProcessEnd
from hmp.qemuopts import OptionError, take_option
from hmp.qmp.server import QmpServer, QmpSpec, parse_qmp_spec


def extract_qmp_options(argv: list[str]) -> tuple[list[QmpSpec], list[str]]:
    """Take every ``-qmp VALUE`` (or ``--qmp``) out of ``argv``; OptionError on a bad one."""
    values, rest = take_option(argv, "qmp")
    return [parse_qmp_spec(value) for value in values], rest


class QmpFrontend:
    """The ``-qmp`` servers of one qemu-hmp process (OptionError, QEMU's text, if one can't
    listen).

    A QMP ``quit`` ends the process through ``end``, whose cleanups hold ``close`` before any
    server serves (a quit sent at once must still remove the socket files)."""

    def __init__(self, machine: Machine, specs: list[QmpSpec], end: ProcessEnd) -> None:
        self.servers: list[QmpServer] = []
        end.on_end(self.close)
        for spec in specs:
            try:
                server = QmpServer(machine, spec, on_quit=end.now)
            except MigrationError as err:  # transport's AddressError: resolve, bind, listen
                self.close()
                raise OptionError(f"-qmp {spec.text}: {err.report()}") from err
            self.servers.append(server)
            if spec.wait:
                sys.stderr.write(f"qemu-hmp: -qmp {spec.text}: waiting for a client\n")
            server.start()

    def close(self) -> None:
        for server in self.servers:
            server.close()
