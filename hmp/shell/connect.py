"""``qemu-hmp --connect unix:PATH|tcp:HOST:PORT``: the shell in front of a running QEMU.

Every line typed goes to that QEMU as QMP ``human-monitor-command``, and what it answers is
printed unchanged, so the output is QEMU's own. The shell's extras come from QMP as well: a
poller thread reads ``query-migrate`` and ``query-status`` 4 times a second for the toolbar,
the notices above the prompt and the time series of ``x_migrate_chart`` and
``x_migrate_export`` (which the shell runs itself: QEMU has no such commands), and hands on
the events QEMU sent meanwhile. Completion and highlighting speak the dialect of the release
QEMU's greeting names (hmp/shell/dialect.py).

Every wait on QEMU is bounded (the client's deadlines), so a dead or frozen QEMU is a one-line
error, never a hung shell; a connection QEMU closes ends the shell with status 1.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from engine.errors import MigrationError
from engine.params import ParamValue
from engine.state import RUNNING_STATES
from engine.stats import Sample
from hmp.harness import QmpClient, QmpClientError, QmpCommandError, QmpConnectionError, QmpTimeout
from hmp.monitor import (
    Dialect,
    ParseError,
    find_command,
    parse_line,
    run_batch,
    terminal_chart,
    write_series,
)
from hmp.shell.dialect import LOCAL_COMMANDS, dialect_for
from hmp.shell.options import ShellOptions
from hmp.shell.toolbar import Progress
from hmp.shell.watch import ANNOUNCED, SHOWN_EVENTS, ended_notice, event_notice

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0  # connecting, the greeting and the negotiation
COMMAND_TIMEOUT_S = 30.0  # one HMP line; QEMU answers every one at once (nothing waits in QMP)
POLL_TIMEOUT_S = 5.0
POLL_S = 0.25  # the toolbar's refresh


class ConnectError(Exception):
    """The connection failed or was lost: one line, printed after ``qemu-hmp: --connect ADDR: ``."""


def connect(address: str, timeout: float = CONNECT_TIMEOUT_S) -> QmpClient:
    """A negotiated QMP session with the QEMU at ``address``; ConnectError says why not."""
    try:
        return QmpClient(address, timeout)
    except QmpTimeout:
        raise ConnectError(
            f"no QMP greeting within {timeout:g} s (not a QMP socket, or QEMU does not answer)"
        ) from None
    except QmpConnectionError as err:
        raise ConnectError(_reason(address, err)) from None
    except QmpClientError as err:
        raise ConnectError(f"not a QMP server: {_reason(address, err)}") from None


def _reason(address: str, err: Exception) -> str:
    return str(err).removeprefix(f"QMP {address}: ")


def banner(version: tuple[int, int, int]) -> str:
    """QEMU's own monitor banner, for the version that greeted us."""
    return f"QEMU {'.'.join(map(str, version))} monitor - type 'help' for more information\n"


@dataclass
class _Series:
    """The time series of the QEMU's last outgoing migration, one sample per poll."""

    samples: list[Sample] = field(default_factory=list)
    running: bool = False

    def add(self, info: Mapping[str, Any]) -> None:
        ram = info.get("ram")
        status = str(info.get("status", "none"))
        if ram is None:  # no migration, or the destination's side: no RAM figures
            return
        if status in RUNNING_STATES and not self.running:
            self.samples = []  # a new migration
        ended = self.running and status not in RUNNING_STATES
        self.running = status in RUNNING_STATES
        if self.running or ended:
            self.samples.append(
                Sample(
                    t_ms=int(info.get("total-time", 0)),
                    transferred=int(ram["transferred"]),
                    remaining=int(ram["remaining"]),
                    mbps=float(ram["mbps"]),
                    dirty_pages_rate=int(ram.get("dirty-pages-rate", 0)),
                    cpu_throttle=int(info.get("cpu-throttle-percentage", 0)),
                )
            )


class QemuLink:
    """What the shell knows of the QEMU, refreshed by a poller thread; ``post(text)`` gets
    the notices (from that thread), ``lost(reason)`` is called once if QEMU goes away."""

    def __init__(
        self,
        client: QmpClient,
        defaults: Mapping[str, ParamValue],
        post: Callable[[str], None] | None = None,
        lost: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.defaults = defaults
        self.progress = Progress("none")
        self.vm = ""
        self.params: dict[str, ParamValue] = {}
        self.series = _Series()
        self.closing = False
        self._post = post
        self._lost = lost
        self._last: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qemu-link", daemon=True)

    def __enter__(self) -> QemuLink:
        self.refresh()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def current(self, name: str) -> ParamValue:
        """A parameter's value as QEMU last reported it (completion's hint), else its default."""
        return self.params.get(name, self.defaults.get(name, ""))

    def refresh(self) -> None:
        """One poll: migration, run state, parameters, events. QmpClientError if QEMU fails."""
        info = self.client.execute("query-migrate", timeout=POLL_TIMEOUT_S)
        self.vm = str(self.client.execute("query-status", timeout=POLL_TIMEOUT_S)["status"])
        self.refresh_params()
        self.progress = Progress.from_query_migrate(info)
        self.series.add(info)
        key = (self.progress.status, self.progress.elapsed_ms)
        if self._last is not None and key != self._last and self.progress.status in ANNOUNCED:
            self._notice(ended_notice(self.progress))
        self._last = key
        for event in self.client.take_events():
            if event.get("event") in SHOWN_EVENTS:
                self._notice(event_notice(str(event["event"]), event.get("data", {})))

    def refresh_params(self) -> None:
        self.params = self.client.execute("query-migrate-parameters", timeout=POLL_TIMEOUT_S)

    def _notice(self, text: str) -> None:
        if self._post is not None:
            self._post(text)

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.refresh()
            except QmpTimeout as err:  # a frozen QEMU: the toolbar keeps its last figures
                log.warning("--connect: %s", err)
            except QmpClientError as err:
                if not self.closing and self._lost is not None:
                    self._lost(_reason(self.client.path, err))
                return


class RemoteMonitor:
    """A monitor whose lines run in a QEMU (batch mode and the REPL drive it as a Monitor).

    ``post`` gets the notices from the poller's thread (the REPL's; batch mode has none);
    ``on_lost`` is called once QEMU has gone away (the REPL leaves its prompt then).
    """

    def __init__(
        self,
        client: QmpClient,
        dialect: Dialect,
        *,
        post: Callable[[str], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        defaults = {spec.name: spec.default for spec in dialect.table.parameters}
        self.link = QemuLink(client, defaults, post, self.lose)
        self.dialect = dialect
        self.address = client.path
        self._on_lost = on_lost
        self._out = out
        self._err = err
        self.quit_requested = False
        self.status = 0

    @property
    def out(self) -> TextIO:  # resolved at each write, for prompt_toolkit's patch_stdout
        return self._out if self._out is not None else sys.stdout

    def printf(self, text: str) -> None:
        self.out.write(text)

    def report(self, message: str) -> None:
        self.out.flush()
        err = self._err if self._err is not None else sys.stderr
        err.write(f"qemu-hmp: --connect {self.address}: {message}\n")
        err.flush()

    def lose(self, reason: str) -> None:
        """QEMU went away: say so once and end the session with status 1."""
        if self.quit_requested:
            return
        self.report(reason)
        self.quit_requested = True
        self.status = 1
        if self._on_lost is not None:
            self._on_lost()

    def execute(self, line: str) -> None:
        words = line.split()
        cmd = find_command(self.dialect.commands, words[0]) if words else None
        if cmd is not None and cmd.name in LOCAL_COMMANDS:
            self._local(line)
            return
        quitting = cmd is not None and "quit" in cmd.names
        self.link.closing = quitting
        try:
            text = self.link.client.execute(
                "human-monitor-command", {"command-line": line}, timeout=COMMAND_TIMEOUT_S
            )
        except QmpCommandError as err:  # QEMU refused the request itself
            self.printf(f"Error: {err.desc}\n")
        except QmpTimeout:
            self.report(f"no answer from QEMU within {COMMAND_TIMEOUT_S:g} s to `{line}`")
        except QmpClientError as err:
            if not quitting:
                self.lose(f"{_reason(self.address, err)} during `{line}`")
        else:
            self.printf(str(text))
            if not quitting:  # the next Tab offers what the line may have set
                self._refresh_params()
        if quitting:
            self.quit_requested = True
        self.out.flush()

    def _refresh_params(self) -> None:
        try:
            self.link.refresh_params()
        except QmpClientError as err:  # the next command or poll says what became of QEMU
            log.debug("--connect: query-migrate-parameters: %s", err)

    def _local(self, line: str) -> None:
        """``x_migrate_chart`` / ``x_migrate_export``: our commands, over polled figures."""
        try:
            parsed = parse_line(self.dialect.commands, line)
            assert parsed is not None
            samples = list(self.link.series.samples)
            if parsed.command.name == "x_migrate_chart":
                self.printf(terminal_chart({"migrate": samples}))
            else:
                write_series(str(parsed.args["filename"]), samples)
        except ParseError as err:
            self.printf(err.text)
        except MigrationError as err:
            self.printf(f"Error: {err.report()}\n")
        self.out.flush()


def run_connect(address: str, shell: ShellOptions, interactive: bool) -> int:
    """The shell (``interactive``) or batch mode in front of the QEMU at ``address``."""
    try:
        client = connect(address)
    except ConnectError as err:
        sys.stderr.write(f"qemu-hmp: --connect {address}: {err}\n")
        return 1
    major, minor, _micro = client.version
    dialect = dialect_for((major, minor))
    try:
        if interactive:
            from hmp.shell.repl import run_connected_repl  # prompt_toolkit only here

            return run_connected_repl(client, dialect, history=shell.history)
        mon = RemoteMonitor(client, dialect)
        with mon.link:
            status = run_batch(mon, sys.stdin)
        return status or mon.status
    except QmpClientError as err:  # the first poll failed: QEMU went away at once
        sys.stderr.write(f"qemu-hmp: --connect {address}: {_reason(address, err)}\n")
        return 1
    finally:
        client.close()
