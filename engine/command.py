"""``exec:`` URIs: a migration stream through a shell command, as QEMU's migration/exec.c.

The command runs as ``/bin/sh -c COMMAND`` (QEMU's argv). Where QEMU gives it pipes, it gets
one end of a socket pair, so the engine reads and writes the other end as any migration
socket (sendmsg, recv_into, timeouts, shutdown all work unchanged): an outgoing command reads
the stream on its stdin (its stdout goes nowhere: nothing reads it, so writing there cannot
block the migration), an incoming one writes it on its stdout. The command has a process
group of its own, killed with it when the migration ends early.

Such a stream has no return path, so the completion handshake cannot run over it: a saved
stream ends with DONE (the run state and the RAM digest), the source completes once the
command has read it all (checked: unread bytes reset our end) and exited with status 0, and
the destination checks the digest before its guest runs (docs/ARCHITECTURE.md, "Streams
without a return path").
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import threading

from engine.errors import MigrationError
from engine.transport import Address, OneStream

log = logging.getLogger(__name__)
SHELL = "/bin/sh"
EXIT_WAIT_S = 1.0  # once its stream is over, how long a command may take to exit by itself


def _exit_text(status: int) -> str:
    if status < 0:
        return f"was killed by signal {-status} ({signal.Signals(-status).name})"
    return f"exited with status {status}"


class CommandChannel:
    """One run of an ``exec:`` command and our end of its stream."""

    name = "command"  # what write errors name: "Unable to write to command: ..."

    def __init__(self, command: str, *, outgoing: bool) -> None:
        self.command = command
        ours, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [SHELL, "-c", command],
                stdin=theirs.fileno() if outgoing else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if outgoing else theirs.fileno(),
                start_new_session=True,  # its own group: a pipeline dies whole with it
            )
        except OSError as exc:
            ours.close()
            raise MigrationError(f"cannot run '{SHELL}': {exc.strerror or exc}") from exc
        finally:
            theirs.close()  # only the command holds its end: its exit is our EOF / EPIPE
        self.sock = ours

    def finish(self, timeout: float) -> None:
        """The stream is written: end it (EOF to the command) and wait for the command to
        exit; a status other than 0 or no exit within ``timeout`` raises MigrationError, a
        stream it left unread OSError (EPIPE)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # it has already gone: its status says how
        try:
            status = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise MigrationError(
                f"the command '{self.command}' did not exit within {timeout:g} s "
                "after the end of the stream"
            ) from None
        if status != 0:
            raise MigrationError(f"the command '{self.command}' {_exit_text(status)}")
        # A command that exits with part of the stream unread leaves our end reset (af_unix
        # sets ECONNRESET on the peer of a socket closed with data queued): the stream was
        # lost as surely as by a write it refused, and says so with that write's error, so
        # `exec:true` fails the same way whether it exits before or after the last write.
        if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            raise OSError(errno.EPIPE, os.strerror(errno.EPIPE))

    def end(self, wait: float) -> str | None:
        """Give the command ``wait`` seconds to exit, then kill its process group: how it
        failed (None when it exited with status 0 or had to be killed). Our end stays open:
        its owner closes it."""
        try:
            status = self._proc.wait(wait)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it exited meanwhile
            self._proc.wait()
            return None
        return None if status == 0 else f"the command '{self.command}' {_exit_text(status)}"


class CommandListener(OneStream):
    """``-incoming exec:COMMAND``: the Listener of a stream that comes from a command.

    It "accepts" once, by running the command; a failed load is final, as in QEMU (which
    exits).
    """

    def __init__(self, addr: Address) -> None:
        """Runs the command at once, as QEMU does at ``-incoming``."""
        super().__init__()
        self.addr = addr
        self._channel = CommandChannel(addr.command, outgoing=False)

    def accept(self, stop: threading.Event, timeout: float | None = None) -> socket.socket | None:
        """The command's stream, once; then None."""
        return self._channel.sock if self._take(stop) else None

    def finish(self) -> str | None:
        """The stream is over: the command has EXIT_WAIT_S to exit by itself, then is killed;
        how it failed, or None (status 0, or killed)."""
        failure = self._channel.end(EXIT_WAIT_S)
        self._close_untaken(self._channel.sock)
        return failure
