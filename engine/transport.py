"""Migration URIs, sockets, and the max-bandwidth rate limiter."""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.errors import MigrationError

log = logging.getLogger(__name__)

# Bytes a socket may hold on each side: several 1 MiB batches, so the source prepares the next
# batch while the destination stores the last one (with 512 KiB they took turns: half speed).
SOCKET_BUFFER = 4 * 1024 * 1024

# How often a blocked accept() looks at its stop event and the listener's close.
ACCEPT_POLL_S = 0.1

# Protocols QEMU knows but qemu-hmp does not carry (a clear refusal, not QEMU's "valid protocol").
UNSUPPORTED = ("exec", "fd", "rdma", "vsock", "file")


class UnknownProtocol(MigrationError):
    """QEMU refuses these before the migration records any error text."""


@dataclass(frozen=True)
class Address:
    """A parsed ``tcp:HOST:PORT`` or ``unix:PATH``; the port may be a service name."""

    kind: str  # "tcp" | "unix"
    host: str = ""
    port: int | str = 0
    path: str = ""

    def uri(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"

    def display(self) -> str:
        """How QEMU names the peer in errors: ``host:port`` or the socket path."""
        return self.path if self.kind == "unix" else f"{self.host}:{self.port}"


def parse_uri(uri: str, *, incoming: bool) -> Address:
    """Parse a migration URI; ``migrate`` and ``migrate_incoming`` word errors differently."""
    scheme, sep, rest = uri.partition(":")
    if sep and scheme == "tcp":
        return _parse_inet(rest)
    if sep and scheme == "unix":
        if not rest:
            raise MigrationError("invalid Unix socket address")
        return Address("unix", path=rest)
    if sep and scheme in UNSUPPORTED:
        raise MigrationError(f"migration protocol '{scheme}' is not supported by qemu-hmp")
    if incoming:
        raise UnknownProtocol(f"unknown migration protocol: {uri}")
    raise UnknownProtocol("Parameter 'uri' expects a valid migration protocol")


def _parse_inet(rest: str) -> Address:
    text = rest.split(",", 1)[0]  # QEMU options such as ",ipv4" are accepted and ignored
    if text.startswith("["):
        host, close, tail = text[1:].partition("]")
        ok = bool(close) and tail.startswith(":")
        port = tail[1:]
    else:
        host, colon, port = text.rpartition(":")
        ok = bool(colon)
    if not ok or not port:
        raise MigrationError(f"error parsing address '{rest}'")
    # A service name is resolved later, as QEMU does (and fails there if unknown).
    return Address("tcp", host=host, port=int(port) if port.isdigit() else port)


def resolve(addr: Address, *, listening: bool) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """getaddrinfo with QEMU's error text; an empty host means any address when listening."""
    host = addr.host or ("0.0.0.0" if listening else "")
    try:
        if not host:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        family, _, _, _, sockaddr = socket.getaddrinfo(host, addr.port, 0, socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise MigrationError(
            f"address resolution failed for {addr.display()}: {exc.strerror}"
        ) from exc
    return family, (str(sockaddr[0]), int(sockaddr[1]))


def connect(addr: Address, timeout: float = 10.0) -> socket.socket:
    """Connect with QEMU's error texts (``Failed to connect to 'HOST:PORT': <strerror>``)."""
    try:
        if addr.kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: str | tuple[str, int] = addr.path
        else:
            family, target = resolve(addr, listening=False)
            sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(target)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else "Connection timed out"
        raise MigrationError(f"Failed to connect to '{addr.display()}': {reason}") from exc
    tune(sock)
    return sock


def tune(sock: socket.socket) -> None:
    sock.settimeout(None)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)


def shutdown(sock: socket.socket | None) -> None:
    """Break both directions now (unblocks a peer thread in send/recv); a closed socket is fine."""
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def send_buffers(sock: socket.socket, buffers: Sequence[bytes | memoryview]) -> int:
    """Gathered write of every buffer (sendmsg, resuming after partial writes); bytes sent."""
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    total = sum(len(v) for v in views)
    while views:
        sent = sock.sendmsg(views[:512])
        while sent:
            if sent >= len(views[0]):
                sent -= len(views.pop(0))
            else:
                views[0] = views[0][sent:]
                sent = 0
    return total


class Listener:
    """A listening socket; its owner closes it once it has the connections it wants (one, or
    one plus the multifd channels), after which further connections are refused, as in QEMU."""

    def __init__(self, addr: Address) -> None:
        try:
            if addr.kind == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                if os.path.exists(addr.path):
                    os.unlink(addr.path)
                sock.bind(addr.path)
                self.addr = addr
            else:
                family, (host, port) = resolve(addr, listening=True)
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                self.addr = Address("tcp", host=host, port=sock.getsockname()[1])
            sock.listen(8)
            sock.settimeout(ACCEPT_POLL_S)
        except OSError as exc:
            raise MigrationError(
                f"Failed to bind socket: {os.strerror(exc.errno or errno.EINVAL)}"
            ) from exc
        self._sock = sock
        # Held across each accept poll, so close() never frees the descriptor under an accept
        # (which could then take a connection from whatever socket reused the number);
        # ``_closing`` makes the accept loop stand aside for a waiting close().
        self._lock = threading.Lock()
        self._closing = False
        self._closed = False

    def accept(self, stop: threading.Event, timeout: float | None = None) -> socket.socket | None:
        """The next connection; None once ``stop`` is set, time is up or the listener closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (stop.is_set() or self._closing) and (
            deadline is None or time.monotonic() < deadline
        ):
            with self._lock:
                if self._closed:
                    return None
                try:
                    conn, _ = self._sock.accept()
                except TimeoutError:
                    continue
                except OSError as exc:
                    log.error("accept on %s failed: %s", self.addr.uri(), exc)
                    return None
            tune(conn)
            return conn
        return None

    def close(self) -> None:
        """Refuse further connections (waits for an accept poll in progress, ≤ ACCEPT_POLL_S)."""
        self._closing = True
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._sock.close()
        if self.addr.kind == "unix":
            try:
                os.unlink(self.addr.path)
            except FileNotFoundError:
                pass  # removed by whoever bound the path next
            except OSError as exc:
                log.warning("cannot remove %s: %s", self.addr.path, exc)


class RateLimiter:
    """QEMU's limiter: a byte budget of max-bandwidth/10 per 100 ms window.

    ``rate`` is re-read at each check, so `migrate_set_parameter max-bandwidth` applies live,
    and :meth:`wake` re-checks a waiting sender at once; 0 means unlimited, as in QEMU. Bytes
    beyond a window's budget are carried into the next, so whole-batch sends still average
    out to the limit.
    """

    WINDOW_S = 0.1

    def __init__(self, rate: Callable[[], int]) -> None:
        self._rate = rate
        # Guards the counters (multifd channel threads charge too) and wakes a waiting sender.
        self._cond = threading.Condition()
        self._window_start = time.monotonic()
        self._used = 0
        self._ended = False
        self.unlimited = False  # stop-and-copy lifts the limit

    def charge(self, nbytes: int) -> None:
        with self._cond:
            self._used += nbytes

    def _budget(self) -> int:
        """This window's budget (0: unlimited); rolls the window when it has ended."""
        rate = 0 if self.unlimited else self._rate()
        now = time.monotonic()
        if now >= self._window_start + self.WINDOW_S:
            self._used = max(0, self._used - rate // 10) if rate else 0
            self._window_start = now
        return rate // 10 if rate else 0

    def _exhausted(self) -> bool:
        budget = self._budget()
        return bool(budget) and self._used >= budget

    def exhausted(self) -> bool:
        with self._cond:
            return self._exhausted()

    def wait_window(self) -> None:
        """When the budget is spent, wait for the next window (QEMU's migration_rate_limit)."""
        with self._cond:
            while not self._ended and self._exhausted():
                left = self._window_start + self.WINDOW_S - time.monotonic()
                self._cond.wait(max(left, 0.0))

    def wake(self) -> None:
        """The rate may have changed: a waiting sender re-checks its budget now."""
        with self._cond:
            self._cond.notify_all()

    def end(self) -> None:
        """The migration is over: no wait, now or later."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()


class Link:
    """An emulated network link of ``rate()`` bytes/s for experiments (0: the socket's own speed).

    Unlike max-bandwidth it never lifts, not even in stop-and-copy: it is the wire, not a
    policy. A sender is held back until the link would have carried what it sent, at the
    rate in force meanwhile: :meth:`wake` after a change re-times every wait at the new rate
    (what is still on the wire drains at it), so no wait outlasts what the current rate implies.
    """

    BURST_S = 0.005  # an idle link banks at most this much time

    def __init__(self, rate: Callable[[], int]) -> None:
        self._rate = rate
        self._cond = threading.Condition()  # one link under several multifd channels
        self._at = time.monotonic()
        self._rate_now = max(0, rate())  # the rate since ``_at``
        self._sent = 0.0  # bytes handed to the link
        self._carried = 0.0  # bytes it has carried (ahead of _sent by at most a burst)
        self._ended = False

    def _advance(self) -> None:
        """Carry what the link carried since ``_at`` at the rate then in force; re-read it."""
        now, rate = time.monotonic(), self._rate_now
        if rate:
            credit = self._sent + rate * self.BURST_S
            self._carried = min(self._carried + (now - self._at) * rate, credit)
        else:
            self._carried = self._sent  # no link: nothing is left on the wire
        self._at = now
        self._rate_now = max(0, self._rate())

    def pace(self, nbytes: int) -> None:
        with self._cond:
            self._advance()
            self._sent += nbytes
            mark = self._sent
            while not self._ended and self._rate_now and self._carried < mark:
                self._cond.wait((mark - self._carried) / self._rate_now)
                self._advance()

    def wake(self) -> None:
        """The rate may have changed: what was carried so far counts at the old rate, the
        rest at the new one, from now."""
        with self._cond:
            self._advance()
            self._cond.notify_all()

    def end(self) -> None:
        """The migration is over: no wait, now or later."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()
