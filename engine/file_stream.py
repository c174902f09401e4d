"""QEMU 11.1's `file:` URI without mapped-ram: the plain migration stream in a file.

`migrate file:PATH[,offset=N]` writes from byte N of PATH (created, or cut at N) the records
a live migration sends (header, CONFIG, BATCH/EOS, DONE with the run state and the RAM
digest); `migrate_incoming file:PATH[,offset=N]` on an `-incoming defer` destination reads
them back from byte N. The engine drives a file as it drives an `exec:` command
(engine/command.py): the migration has one end of a socket pair and a thread copies between
the other end and the file, so the stream has no return path, a saved one ends with DONE and
its digest, and the restore checks the digest before the guest runs ("Streams without a return
path" in docs/ARCHITECTURE.md). The file is opened when the command runs, so a bad path is
`migrate`'s or `migrate_incoming`'s error, in QEMU 11.1's words.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from engine import wire
from engine.errors import MigrationError
from engine.mapped_ram import FileUri, open_file
from engine.transport import Address, OneStream, shutdown

log = logging.getLogger(__name__)
CHUNK = 1 << 20  # bytes per copy between the socket pair and the file
QEMU_MAGIC = 0x5145564D  # "QEVM": what QEMU 11.1 says it expected of a stream's first bytes


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


class FileSink:
    """`migrate file:` without mapped-ram: what the migration writes on ``sock`` lands in the
    file from the URI's offset on. Opened (and cut there) at once: its errors are migrate's."""

    name = "file"  # what write errors name: "Unable to write to file: ..."

    def __init__(self, uri: FileUri) -> None:
        self.uri = uri
        self._fd = open_file(uri, save=True)
        os.lseek(self._fd, uri.offset, os.SEEK_SET)
        self.sock, self._theirs = socket.socketpair()
        self._error: OSError | None = None
        self._copier = threading.Thread(target=self._copy, name="file_sink", daemon=True)
        self._copier.start()

    def _copy(self) -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        try:
            while n := self._theirs.recv_into(buf):
                if self._error is None:
                    try:
                        _write_all(self._fd, view[:n])
                    except OSError as exc:  # kept for finish(); the rest is read and dropped,
                        self._error = exc  # so the migration ends with the file's error
        except OSError as exc:  # end() shut the pair down
            log.debug("file sink for %s ended: %s", self.uri.path, exc)
        finally:
            self._theirs.close()

    def finish(self, timeout: float) -> None:
        """The stream is written: end it and wait until it is all in the file; OSError if the
        file refused a write, MigrationError if the copy does not end within ``timeout``."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the copier has gone: its error says why
        self._copier.join(timeout)
        if self._copier.is_alive():
            raise MigrationError(
                f"the file '{self.uri.path}' did not take the stream within {timeout:g} s"
            )
        if self._error is not None:
            raise self._error

    def end(self, wait: float) -> str | None:
        """The migration is over (whatever its end): stop the copier and close the file.
        ``wait`` is a command's grace to exit; the copier ends as soon as the pair is shut."""
        shutdown(self.sock)
        self._copier.join(wire.SWITCHOVER_TIMEOUT_S)
        if self._copier.is_alive():  # it only waits on the pair we just shut down
            log.warning("file sink for %s did not end", self.uri.path)
        os.close(self._fd)
        return None


class FileSource(OneStream):
    """`migrate_incoming file:` without mapped-ram: the Listener of a stream read from a file.

    It "accepts" once; the file's first bytes are checked first, so a file that is not a
    stream fails with QEMU 11.1's words."""

    def __init__(self, uri: FileUri) -> None:
        """Opens the file at once, as QEMU does at `migrate_incoming` (its error is the
        command's)."""
        super().__init__()
        self.addr = Address("file", path=uri.path)
        self.uri = uri
        self._fd = open_file(uri, save=False)
        self._ours, self._theirs = socket.socketpair()
        self._copier = threading.Thread(target=self._copy, name="file_source", daemon=True)

    def check(self) -> str | None:
        """QEMU's header check on the file's first bytes: what is wrong, or None."""
        try:
            head = os.pread(self._fd, len(wire.MAGIC), self.uri.offset)
        except OSError:  # a directory reads nothing, as QEMU's read of it does
            head = b""
        if head == wire.MAGIC:
            return None
        magic = int.from_bytes(head, "big") if len(head) == len(wire.MAGIC) else 0
        return f"Invalid argument: Not a migration stream, magic: {magic:x} != {QEMU_MAGIC:x}"

    def _copy(self) -> None:
        offset = self.uri.offset
        try:
            while data := os.pread(self._fd, CHUNK, offset):
                self._theirs.sendall(data)
                offset += len(data)
        except OSError as exc:  # the load ended first (closed), or the file failed to read
            log.debug("file source %s ended at %d: %s", self.uri.path, offset, exc)
        finally:
            self._theirs.close()  # the end of the file is the end of the stream

    def accept(self, stop: threading.Event, timeout: float | None = None) -> socket.socket | None:
        """The file's stream, once; then None."""
        if not self._take(stop):
            return None
        self._copier.start()
        return self._ours

    def finish(self) -> str | None:
        """The stream is over: stop the copier and close the file."""
        shutdown(self._ours)
        if self._copier.is_alive():
            self._copier.join(wire.SWITCHOVER_TIMEOUT_S)
        self._close_untaken(self._ours)
        self._theirs.close()
        os.close(self._fd)
        return None
