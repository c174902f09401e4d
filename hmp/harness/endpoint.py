"""Drive one qemu-hmp process over pipes: one HMP line in, its exact output back.

Used by transcripts (record/replay) and by any shell that drives a second endpoint. The
process runs in batch mode with ``QEMU_HMP_END_MARKER`` set, so each command's output ends
with a marker line; reader threads turn stdout and stderr into queues, so every wait has a
timeout and a hung endpoint is reported instead of hanging its caller.

With ``qmp=True`` the process also serves QMP on a socket in a private temporary directory,
and ``endpoint.qmp`` is a client of it: programs read figures there (``query-migrate``), as
tools read QEMU's, and type HMP only where a person would.
"""

from __future__ import annotations

import logging
import os
import queue
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from hmp.harness.qmp_client import QmpClient, QmpClientError, listening_uri
from hmp.markers import END_MARKER_ENV, PROMPT

log = logging.getLogger(__name__)

# Not something a monitor prints: ASCII record separators around a name.
END_MARKER = "\x1eqemu-hmp:end-of-output\x1e"


class EndpointError(Exception):
    """The endpoint did not answer as a monitor does; ``output`` is what it printed so far."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class EndpointTimeout(EndpointError):
    pass


class EndpointExited(EndpointError):
    pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def resolve_argv(argv: Sequence[str]) -> list[str]:
    """``qemu-hmp ...`` runs this interpreter's hmp package, whatever PATH holds."""
    if argv and argv[0] == "qemu-hmp":
        return [sys.executable, "-m", "hmp", *argv[1:]]
    return list(argv)


def _pump(stream: IO[bytes], lines: queue.Queue[str | None]) -> None:
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode("utf-8", "replace"))
    lines.put(None)  # end of stream


class Endpoint:
    """One qemu-hmp process. ``argv`` may start with ``qemu-hmp`` (see resolve_argv)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str = "",
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        qmp: bool = False,
    ) -> None:
        self.name = name or shlex.join(argv)
        full_env = dict(os.environ if env is None else env)
        full_env[END_MARKER_ENV] = END_MARKER
        full_env["PYTHONUNBUFFERED"] = "1"
        self._qmp_dir = tempfile.TemporaryDirectory(prefix="qemu-hmp-qmp-") if qmp else None
        self._qmp: QmpClient | None = None
        extra = ["-qmp", f"unix:{self._qmp_path},server=on,wait=off"] if qmp else []
        self.proc = subprocess.Popen(
            [*resolve_argv(argv), *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=cwd,
        )
        self._stdout: queue.Queue[str | None] = queue.Queue()
        self._stderr: queue.Queue[str | None] = queue.Queue()
        self._stdout_eof = False
        self._stderr_eof = False
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, lines in ((self.proc.stdout, self._stdout), (self.proc.stderr, self._stderr)):
            threading.Thread(target=_pump, args=(stream, lines), daemon=True).start()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and not self._stdout_eof

    @property
    def _qmp_path(self) -> str:
        assert self._qmp_dir is not None
        return str(Path(self._qmp_dir.name) / "qmp.sock")

    @property
    def qmp(self) -> QmpClient:
        """The QMP client of an endpoint started with ``qmp=True``, once wait_ready returned."""
        if self._qmp is None:
            raise EndpointError(f"{self.name}: no QMP session (started without qmp, or not ready)")
        return self._qmp

    def wait_ready(self, timeout: float) -> None:
        """Return once the monitor reads commands (a destination then listens already).

        An empty line is a no-op command; its end marker proves the machine was built and
        the QMP socket bound (qemu-hmp binds it before its monitor reads), so the QMP client
        connects here: its session exists before any figure is taken of the process.
        Raises EndpointExited when the process ended instead (a bad command line).
        """
        self.execute("", timeout)
        if self._qmp_dir is not None and self._qmp is None:
            try:
                self._qmp = QmpClient(self._qmp_path, timeout)
            except QmpClientError as err:
                raise EndpointError(f"{self.name}: {err}") from None

    def listening_uri(self) -> str:
        """Where this destination listens (port 0 resolved), from its ``query-migrate``."""
        try:
            return listening_uri(self.qmp.execute("query-migrate"))
        except (QmpClientError, ValueError) as err:
            raise EndpointError(f"{self.name}: {err}") from None

    def execute(self, line: str, timeout: float) -> str:
        """Send one HMP line; return its output exactly, without the ``(qemu) LINE`` echo."""
        if self._stdout_eof:
            raise EndpointExited(f"{self.name}: the process has exited")
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise EndpointExited(f"{self.name}: the process has exited") from None
        text = self._read_until_marker(timeout, f"`{line}`")
        echo = f"{PROMPT}{line}\n"
        if not text.startswith(echo):
            raise EndpointError(f"{self.name}: expected the echo {echo!r}", text)
        return text[len(echo) :]

    def _read_until_marker(self, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while True:
            try:
                chunk = self._stdout.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise EndpointTimeout(
                    f"{self.name}: {what} did not finish within {timeout:g}s", text
                ) from None
            if chunk is None:
                self._stdout_eof = True
                raise EndpointExited(f"{self.name}: exited during {what}", text)
            text += chunk
            if text.endswith(END_MARKER + "\n"):
                return text[: -len(END_MARKER) - 1]

    def read_stderr(self, count: int | None = None, timeout: float = 0.0) -> list[str]:
        """Lines written to stderr (async messages), oldest first, without their newlines.

        Collects until ``count`` lines (None: no limit), the end of the stream, or ``timeout``
        seconds; with the default timeout of 0 it takes only what has already arrived.
        """
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while not self._stderr_eof and (count is None or len(lines) < count):
            try:
                chunk = self._stderr.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if chunk is None:
                self._stderr_eof = True
            else:
                lines.append(chunk.removesuffix("\n"))
        return lines

    def kill(self) -> None:
        """SIGKILL, as when a destination host dies; returns once the process is gone."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close_stdin()
        self._release_qmp()

    def _release_qmp(self) -> None:
        if self._qmp is not None:
            self._qmp.close()
        if self._qmp_dir is not None:
            self._qmp_dir.cleanup()

    def _close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass

    def close(self, timeout: float = 5.0) -> int:
        """End of input (the monitor quits), then its exit status; killed if it lingers.

        With QMP the process outlives its input, as QEMU does, so QMP ``quit`` ends it.
        """
        self._close_stdin()
        if self._qmp_dir is not None and self.proc.poll() is None:
            self._quit_over_qmp(timeout)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning(
                "%s: still running %gs after the end of its input: killed", self.name, timeout
            )
            self.kill()
            return self.proc.wait()
        finally:
            self._release_qmp()

    def _quit_over_qmp(self, timeout: float) -> None:
        try:
            self._qmp = self._qmp or QmpClient(self._qmp_path, timeout)
            self._qmp.execute("quit", timeout=timeout)
        except QmpClientError as err:  # it may be ending already (an HMP `quit`, a crash)
            log.debug("%s: QMP quit: %s", self.name, err)

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
