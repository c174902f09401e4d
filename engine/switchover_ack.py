"""QEMU 11.1's switchover-ack: the source switches over only once the destination said so.

With switchover-ack on (11.1 requires return-path with it), the source's CONFIG asks for an
ACK, and the destination sends SWITCHOVER_ACK on the return path once nothing on its side
holds the switchover any more (QEMU's switchover_ack_pending_num: devices such as VFIO ask to
hold it; here only a `hold()` does), which without holders is at once after setup. Until the
ACK arrives the source keeps iterating (QEMU's migration_can_switchover), unless its guest is
stopped. The source's reader takes exactly one record, so the completion handshake reads the
socket alone afterwards.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

from engine import wire

log = logging.getLogger(__name__)


class AckReader(threading.Thread):
    """The source's side: reads the destination's one SWITCHOVER_ACK (or why it will not come)."""

    def __init__(self, sock: socket.socket, wake: Callable[[], None]) -> None:
        super().__init__(name="return_path", daemon=True)
        self._sock = sock
        self._wake = wake  # ends the migration thread's wait for the ACK
        self.acked = threading.Event()
        self.failure: str | None = None  # set when the ACK can no longer come
        self.nack: str | None = None  # the destination's reason, when it gave up
        # What it read instead of the ACK (a stopped source switches over without one): the
        # completion handshake's first reply, or what reading it raised.
        self.reply: wire.Reply | None = None
        self.error: OSError | wire.ForeignPeer | None = None
        self.handed_over = False  # the handshake has taken reply and error

    def run(self) -> None:
        try:
            self.reply = wire.read_reply(self._sock)
        except (wire.ForeignPeer, OSError) as exc:  # OSError: a cancel or the end shut it
            self.error = exc
            self.failure = exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
        else:
            if self.reply is None:
                self.failure = "the destination closed the return path before it acknowledged"
            elif self.reply.kind is wire.Rec.NACK:
                self.failure = self.nack = self.reply.error
            elif self.reply.kind is wire.Rec.SWITCHOVER_ACK:
                self.reply = None
                self.acked.set()
            else:
                self.failure = f"the destination answered {self.reply.kind.name} before its ACK"
        self._wake()

    def take(self, timeout: float) -> tuple[bool, wire.Reply | None]:
        """For the handshake: ``(True, reply)`` once if this reader took a reply (None: the
        connection closed) in the ACK's place, raising what reading it raised; else
        ``(False, None)``: read the socket. TimeoutError if it still reads after ``timeout``."""
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError
        if self.acked.is_set() or self.handed_over:
            return False, None
        self.handed_over = True
        if self.error is not None:
            raise self.error
        return True, self.reply


class Approval:
    """The destination's side: what still holds the switchover, and the ACK once nothing does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holds = 0
        self._send: Callable[[bytes], None] | None = None  # set once the source asked

    def hold(self) -> Callable[[], None]:
        """One more holder (QEMU: a device whose switchover_ack_needed is true); call what
        comes back once it is ready (qemu_loadvm_approve_switchover)."""
        with self._lock:
            self._holds += 1
        released = threading.Event()

        def release() -> None:
            if released.is_set():
                return
            released.set()
            with self._lock:
                self._holds -= 1
                send = self._send if self._holds == 0 else None
            self._ack(send)

        return release

    def armed(self, send: Callable[[bytes], None]) -> None:
        """The source asked for an ACK and the setup is loaded: send it now, or once the last
        holder is ready."""
        with self._lock:
            self._send = send
            ready = self._holds == 0
        self._ack(send if ready else None)

    def disarm(self) -> None:
        """The stream is over (DONE came): an ACK would come after the handshake's replies."""
        with self._lock:
            self._send = None

    def _ack(self, send: Callable[[bytes], None] | None) -> None:
        if send is None:
            return
        with self._lock:
            self._send = None  # one ACK per migration
        try:
            send(wire.json_record(wire.Rec.SWITCHOVER_ACK, {}))
        except OSError as exc:  # the source then keeps iterating until its stream fails too
            log.warning("could not send the switchover ACK to the source: %s", exc)
