"""MSG_ZEROCOPY sends for multifd's zero-copy-send (Linux), as QEMU 7.2's io/channel-socket.c.

With SO_ZEROCOPY on, ``sendmsg(MSG_ZEROCOPY)`` pins the buffers' pages and returns before
the kernel has read them; each such call that sends bytes gets the next number (from 0), and
completions come later on the socket's error queue as ranges of those numbers, flagged
SO_EE_CODE_ZEROCOPY_COPIED when the kernel copied the data after all (loopback always does).
A buffer given to such a send must not be reused until its completion has come, so each
send's buffers are held here until then. ``flush`` waits for every completion (QEMU's
qio_channel_flush at each multifd sync) and says whether the kernel copied any.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)
# <linux/socket.h>, <linux/errqueue.h>, <linux/in.h>, <linux/in6.h>
SO_ZEROCOPY = 60
MSG_ZEROCOPY = 0x4000000
SO_EE_ORIGIN_ZEROCOPY = 5
SO_EE_CODE_ZEROCOPY_COPIED = 1
IP_RECVERR = 11
IPV6_RECVERR = 25
SOCK_EXTENDED_ERR = struct.Struct("=IBBBBII")  # errno, origin, type, code, pad, info, data
ANCILLARY = socket.CMSG_SPACE(SOCK_EXTENDED_ERR.size + 16)  # the error and its offender
FLUSH_TIMEOUT_S = 10.0  # completions come as the peer's ACKs do: this only bounds a bug
NO_MEMORY = "Process can't lock enough memory for using MSG_ZEROCOPY"  # QEMU's text


class ZeroCopyUnavailable(OSError):
    """The kernel refused SO_ZEROCOPY on this socket."""


class NoLockedMemory(OSError):
    """ENOBUFS from a zero-copy send; its text is QEMU's whole error (error_setg_errno's
    ``text: strerror``), not a cause of "Unable to write to socket"."""

    def __init__(self) -> None:
        super().__init__(f"{NO_MEMORY}: {os.strerror(errno.ENOBUFS)}")


class ZeroCopySocket:
    """Zero-copy sends on one connected TCP socket, used by one thread."""

    def __init__(self, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        except OSError as exc:
            raise ZeroCopyUnavailable(exc.errno, exc.strerror) from exc
        self.sock = sock
        self._sent = 0  # zero-copy sends made: the next one's number
        self._completed = 0  # completions reaped (each range counts its numbers)
        self._held: dict[int, Sequence[bytes | memoryview]] = {}  # number → its buffers
        self._copied = False  # since the last flush, the kernel copied some send
        self.copied = 0  # sends the kernel reported it copied (SO_EE_CODE_ZEROCOPY_COPIED)
        self.copied_flushes = 0  # flushes that returned True: QEMU's fallbacks

    def send(self, buffers: Sequence[bytes | memoryview]) -> int:
        """Send all of ``buffers`` zero-copy; they are held until their completions came."""
        views = [memoryview(b).cast("B") for b in buffers]
        total = 0
        while views:
            try:
                sent = self.sock.sendmsg(views, [], MSG_ZEROCOPY)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the locked-memory or optmem limit
                    raise NoLockedMemory from exc
                raise
            if sent:
                self._held[self._sent] = views[:]  # what the kernel may still read
                self._sent += 1
            total += sent
            while views and sent >= len(views[0]):
                sent -= len(views.pop(0))
            if views:
                views[0] = views[0][sent:]
            self._reap()  # keep the error queue short (optmem_max)
        return total

    def flush(self) -> bool:
        """Wait until every send so far has completed; True if the kernel copied any since
        the last flush (QEMU counts such a flush as a zero-copy fallback)."""
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while self._completed < self._sent:
            left = deadline - time.monotonic()
            if left <= 0:
                raise OSError(errno.ETIMEDOUT, "zero-copy completions did not come")
            poller = select.poll()
            poller.register(self.sock, select.POLLERR)
            if poller.poll(min(left, 0.5) * 1000):
                self._reap()
        copied, self._copied = self._copied, False
        self.copied_flushes += copied
        return copied

    def report(self) -> str:
        """What the kernel reported on this socket, for the log."""
        return (
            f"{self._sent} zero-copy sends, {self._completed} completed, {self.copied} copied "
            f"by the kernel; {self.copied_flushes} flushes saw a copy"
        )

    @property
    def pending(self) -> int:
        """Sends whose completion has not come yet (their buffers still held)."""
        return self._sent - self._completed

    def _reap(self) -> None:
        """Read every completion waiting on the error queue and release its buffers."""
        while self._completed < self._sent:
            try:
                _data, ancdata, _flags, _addr = self.sock.recvmsg(
                    0, ANCILLARY, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT
                )
            except (BlockingIOError, InterruptedError):
                return
            for level, kind, data in ancdata:
                if (level, kind) not in (
                    (socket.IPPROTO_IP, IP_RECVERR),
                    (socket.IPPROTO_IPV6, IPV6_RECVERR),
                ):
                    continue
                err, origin, _type, code, _pad, lo, hi = SOCK_EXTENDED_ERR.unpack_from(data)
                if origin != SO_EE_ORIGIN_ZEROCOPY or err != 0:
                    log.warning("zero-copy: unexpected error queue entry (errno %d)", err)
                    continue
                for number in range(lo, hi + 1):
                    self._held.pop(number, None)
                self._completed += hi - lo + 1
                if code & SO_EE_CODE_ZEROCOPY_COPIED:
                    self.copied += hi - lo + 1
                    self._copied = True
