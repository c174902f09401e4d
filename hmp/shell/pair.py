"""``qemu-hmp --pair``: one shell for both ends of a migration, for a laptop with one terminal.

This process is the source; a destination qemu-hmp with the same RAM size, workload and seed
runs as a child on a free 127.0.0.1 port, driven over pipes (hmp.harness.Endpoint), its
address read from its ``query-migrate`` over QMP. ``dst> LINE`` runs LINE there and
``src> LINE`` or a plain LINE here; ``{dst}`` in any line stands for the destination's URI,
so ``migrate -d {dst}`` needs no port. In a dialect whose destination must be set up before
it listens (QEMU 11.1: multifd), the destination starts with ``-incoming defer`` and listens
at the first ``{dst}`` (a ``migrate_incoming`` there). The destination's asynchronous
messages (stderr) are shown as they come, after ``dst: ``.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from engine.machine import Machine
from hmp.harness import Endpoint, EndpointError
from hmp.monitor import Monitor, run_batch
from hmp.shell.options import ShellOptions

ENDPOINTS = ("src", "dst")
_PREFIX = re.compile(r"\s*(src|dst)>\s?")
DST_URI = "{dst}"
LISTEN_URI = "tcp:127.0.0.1:0"  # a free port, read back from the destination
START_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 120.0  # a destination command never waits on a migration; this is a hang
STDERR_POLL_S = 0.2


def split_endpoint(line: str) -> tuple[str, str]:
    """``"dst> info migrate"`` → ``("dst", "info migrate")``; no prefix means the source."""
    match = _PREFIX.match(line)
    if match is None:
        return "src", line
    return match.group(1), line[match.end() :]


class PairMonitor(Monitor):
    """The source's monitor, with lines for the destination sent to its process."""

    def __init__(
        self,
        machine: Machine,
        dst: Endpoint,
        dst_uri: str | None,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        super().__init__(machine, out, err)
        self.dst = dst
        self.dst_uri = dst_uri  # None: the destination listens at the first {dst}

    def _uri(self) -> str:
        if self.dst_uri is None:
            self.printf(self.dst.execute(f"migrate_incoming {LISTEN_URI}", COMMAND_TIMEOUT_S))
            self.dst_uri = self.dst.listening_uri()
        return self.dst_uri

    def execute(self, line: str) -> None:
        try:
            if DST_URI in line:
                line = line.replace(DST_URI, self._uri())
        except EndpointError as err:
            self.error_report(str(err))
            return
        endpoint, rest = split_endpoint(line)
        if endpoint == "src":
            super().execute(rest)
            return
        try:
            self.printf(self.dst.execute(rest, COMMAND_TIMEOUT_S))
        except EndpointError as err:
            self.printf(err.output)
            self.error_report(str(err))
        self.out.flush()


def _start_destination(machine: Machine, listen_late: bool) -> tuple[Endpoint, str | None]:
    opts = machine.opts
    incoming = "defer" if listen_late else LISTEN_URI
    argv = ["qemu-hmp", "-m", f"{opts.ram_size // 1024}K", "-incoming", incoming]
    argv += ["--workload", opts.workload_name(), "--seed", str(opts.seed)]
    argv += ["--qemu", opts.config_table.release]  # both ends speak one dialect
    dst = Endpoint(argv, name="dst", qmp=True)
    try:
        dst.wait_ready(START_TIMEOUT_S)
        return dst, None if listen_late else dst.listening_uri()
    except EndpointError:
        dst.kill()
        raise


@contextmanager
def _relay_stderr(dst: Endpoint, mon: Monitor) -> Iterator[None]:
    """The destination's error reports, as they come, on this process's stderr."""
    stop = threading.Event()

    def relay() -> None:
        while not stop.is_set():
            for line in dst.read_stderr(count=1, timeout=STDERR_POLL_S):
                mon.err.write(f"dst: {line}\n")
                mon.err.flush()

    thread = threading.Thread(target=relay, name="dst-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_pair(src: Monitor, shell: ShellOptions) -> int:
    """Batch or interactive, as for one endpoint; the destination ends with this process."""
    try:
        dst, uri = _start_destination(src.machine, src.dialect.listen_late)
    except EndpointError as err:
        sys.stderr.write(f"qemu-hmp: --pair: the destination did not start: {err}\n")
        return 1
    mon = PairMonitor(src.machine, dst, uri)
    try:
        with _relay_stderr(dst, mon):
            if not sys.stdin.isatty():
                return run_batch(mon, sys.stdin)
            from hmp.shell.repl import run_repl  # prompt_toolkit only when a person is typing

            where = f"on {uri}" if uri else "listening at the first {dst}"
            mon.printf(f"qemu-hmp --pair: destination {where}; `dst> LINE` runs there\n")
            return run_repl(mon, history=shell.history, endpoints=ENDPOINTS)
    finally:
        dst.close()
