"""Migration URIs, sockets, and the max-bandwidth rate limiter."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import select
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from engine.errors import MigrationError

log = logging.getLogger(__name__)

# Bytes a socket may hold on each side: several 1 MiB batches, so the source prepares the next
# batch while the destination stores the last one (with 512 KiB they took turns: half speed).
SOCKET_BUFFER = 4 * 1024 * 1024

# How often a waiting accept() looks at its stop event (a close wakes it at once).
ACCEPT_POLL_S = 0.1

# Protocols QEMU knows but qemu-hmp does not carry (a clear refusal, not QEMU's "valid protocol").
UNSUPPORTED = ("fd", "rdma", "vsock", "file")

# QEMU's inet_parse reads a host of at most 64 bytes and cuts the port after 32.
HOST_MAX, PORT_MAX = 64, 32
UNIX_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path) on Linux
IPPROTO_MPTCP = 262
FLAGS = ("ipv4", "ipv6", "keep-alive", "mptcp")  # inet_parse's boolean options, in its order


class AddressError(MigrationError):
    """A socket address that cannot be parsed, resolved, bound or reached, or a file: URI
    that cannot be parsed or opened (QEMU's texts; `-incoming` names the option with them)."""


class UnknownProtocol(AddressError):
    """QEMU refuses these before the migration records any error text."""


@dataclass(frozen=True)
class Address:
    """A parsed ``tcp:HOST:PORT[,opts]``, ``unix:PATH`` or ``exec:COMMAND``.

    ``port`` stays the text given: as QEMU does, getaddrinfo resolves it (a number, with glibc's
    wrap-around above 65535, or a service name such as ``http``) when it is used.
    """

    kind: str  # "tcp" | "unix" | "exec" | "file" (11.1, engine/file_stream.py)
    host: str = ""
    port: str = ""
    path: str = ""
    ipv4: bool | None = None  # None: not given
    ipv6: bool | None = None
    to: int | None = None  # last port to try when the first one is taken (listening)
    keep_alive: bool = False
    mptcp: bool = False
    command: str = ""  # exec: the shell command (engine/command.py)

    def uri(self) -> str:
        if self.kind == "exec":
            return f"exec:{self.command}"
        if self.kind == "file":
            return f"file:{self.path}"
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"

    def display(self) -> str:
        """How QEMU names the peer in errors: ``host:port``, the socket path, the command."""
        if self.kind == "exec":
            return self.command
        return self.path if self.kind in ("unix", "file") else f"{self.host}:{self.port}"


def _unsupported(scheme: str) -> AddressError:
    return AddressError(f"migration protocol '{scheme}' is not supported by qemu-hmp")


def parse_uri(uri: str, *, incoming: bool) -> Address:
    """Parse a migration URI; ``migrate`` and ``migrate_incoming`` word errors differently."""
    uri = uri.split("\0", 1)[0]  # QEMU sees a C string
    scheme, sep, rest = uri.partition(":")
    if sep and scheme == "tcp":
        return socket_parse(rest)
    if sep and scheme == "unix":
        return socket_parse(uri)
    if sep and scheme == "exec":
        return Address("exec", command=rest)
    if sep and scheme in UNSUPPORTED:
        raise _unsupported(scheme)
    if incoming:
        raise UnknownProtocol(f"unknown migration protocol: {uri}")
    raise UnknownProtocol("Parameter 'uri' expects a valid migration protocol")


def socket_parse(text: str) -> Address:
    """QEMU's socket_parse: ``unix:PATH``, ``tcp:`` once more, or else ``HOST:PORT``.

    QEMU hands what follows a migration URI's ``tcp:`` to it, so ``tcp:unix:PATH`` is a Unix
    socket there and here.
    """
    prefix, sep, rest = text.partition(":")
    if sep and prefix == "unix":
        if not rest:
            raise AddressError("invalid Unix socket address")
        return Address("unix", path=rest)
    if sep and prefix in ("fd", "vsock"):
        raise _unsupported(prefix)
    return inet_parse(rest if sep and prefix == "tcp" else text)


def c_bytes(text: str) -> bytes:
    """The bytes C code sees (arguments that were not UTF-8 come back as they were)."""
    return text.encode("utf-8", "surrogateescape")


def c_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def scan_field(data: bytes, start: int, stops: bytes, limit: int) -> int:
    """sscanf's ``%LIMIT[^STOPS]``: the end of the field at ``start`` (``start``: no match)."""
    end = start
    while end < len(data) and end - start < limit and data[end] not in stops:
        end += 1
    return end


def inet_parse(text: str) -> Address:
    """QEMU 7.2's inet_parse: ``HOST:PORT``, ``:PORT`` or ``[HOST]:PORT``, then options."""
    data = c_bytes(text)
    if data.startswith(b":"):
        host, port_start, what, separated = b"", 1, "port in address", True
    elif data.startswith(b"["):
        end = scan_field(data, 1, b"]", HOST_MAX)
        host, port_start, what = data[1:end], end + 2, "IPv6 address"
        separated = end > 1 and data[end : end + 2] == b"]:"
    else:
        end = scan_field(data, 0, b":", HOST_MAX)
        host, port_start, what = data[:end], end + 1, "address"
        separated = end > 0 and data[end : end + 1] == b":"
    port_end = scan_field(data, port_start, b",", PORT_MAX)
    if not separated or port_end == port_start:
        raise AddressError(f"error parsing {what} '{text}'")
    address = Address("tcp", c_text(host), c_text(data[port_start:port_end]))
    return replace(address, **_inet_options(data[port_end:]))


def _inet_options(opts: bytes) -> dict[str, Any]:
    """inet_parse's options: ``,to=N`` and the flags; anything else is ignored, as in QEMU."""
    found: dict[str, Any] = {}
    at = opts.find(b",to=")
    if at >= 0:
        match = re.match(rb"[ \t\n\v\f\r]*([+-]?[0-9]+)(?=,|$)", opts[at + 4 :])
        if match is None:
            raise AddressError("error parsing to= argument")
        value = max(-(2**63), min(int(match.group(1)), 2**63 - 1))  # sscanf's %d saturates
        found["to"] = value & 0xFFFF  # and QEMU keeps a uint16
    for flag in FLAGS:
        at = opts.find(b"," + flag.encode())
        if at >= 0:
            found[flag.replace("-", "_")] = _parse_flag(flag, opts[at + 1 + len(flag) :])
    return found


def _parse_flag(flag: str, rest: bytes) -> bool:
    """``,FLAG``, ``,FLAG=on`` or ``,FLAG=off``, up to the next comma (``,,`` is refused)."""
    value, comma, after = rest.partition(b",")
    if not (comma and after.startswith(b",")):
        if value in (b"", b"=on"):
            return True
        if value == b"=off":
            return False
    raise AddressError(f"error parsing '{flag}' flag '{c_text(rest)}'")


def _family(addr: Address) -> socket.AddressFamily:
    """QEMU's inet_ai_family_from_address: what ipv4/ipv6 ask getaddrinfo for."""
    v4, v6 = addr.ipv4, addr.ipv6
    if v4 is False and v6 is False:
        raise AddressError("Cannot disable IPv4 and IPv6 at same time")
    if v4 and v6:
        return socket.AF_INET6 if not addr.host else socket.AF_UNSPEC
    if v6 or v4 is False:
        return socket.AF_INET6
    if v4 or v6 is False:
        return socket.AF_INET
    return socket.AF_UNSPEC


# family, protocol, and the address as socket.connect takes it (a tuple, or an AF_UNIX path)
AddrInfo = tuple[socket.AddressFamily, int, Any]


def resolve(addr: Address, *, listening: bool) -> list[AddrInfo]:
    """getaddrinfo on the very strings QEMU passes it, with QEMU's flags and error text.

    Listening, an empty host means every address and an empty port any free one.
    """
    family = _family(addr)
    if listening:
        flags = socket.AI_PASSIVE
        host, port = addr.host or None, addr.port or None
    else:
        flags = socket.AI_CANONNAME | socket.AI_ADDRCONFIG | socket.AI_V4MAPPED
        host, port = addr.host, addr.port
    try:
        infos = socket.getaddrinfo(
            host if host is None else c_bytes(host),
            port if port is None else c_bytes(port),
            family,
            socket.SOCK_STREAM,
            0,
            flags,
        )
    except socket.gaierror as exc:
        raise AddressError(
            f"address resolution failed for {addr.host}:{addr.port}: {exc.strerror}"
        ) from exc
    proto = IPPROTO_MPTCP if addr.mptcp else 0
    return [(info[0], proto or info[2], info[4]) for info in infos]


def _check_unix_path(path: str) -> None:
    """QEMU's length check of sun_path, one byte stricter: QEMU fills all 108 bytes, while
    Python's socket module wants room for the NUL, so a 108-byte path is refused here too."""
    if len(os.fsencode(path)) >= UNIX_PATH_MAX:
        raise AddressError(
            f"UNIX socket path '{path}' is too long",
            hint=f"Path must be less than {UNIX_PATH_MAX} bytes",
        )


def _strerror(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else "Connection timed out"  # a socket timeout


def connect(addr: Address, timeout: float = 10.0) -> socket.socket:
    """Connect with QEMU's error texts (``Failed to connect to 'HOST:PORT': <strerror>``),
    trying each address getaddrinfo gave in turn, as QEMU does; the last failure is reported."""
    if addr.kind == "unix":
        _check_unix_path(addr.path)
        targets: list[AddrInfo] = [(socket.AF_UNIX, 0, addr.path)]
    else:
        targets = resolve(addr, listening=False)
    error = ""
    for family, proto, sockaddr in targets:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM, proto)
        except OSError as exc:
            error = f"Failed to create socket family {family.value}: {_strerror(exc)}"
            continue
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            error = f"Failed to connect to '{addr.display()}': {_strerror(exc)}"
            continue
        tune(sock, keep_alive=addr.keep_alive)
        return sock
    raise AddressError(error)


def listen(addr: Address, backlog: int = 8) -> socket.socket:
    """A listening socket at ``addr`` (QEMU's inet_listen_saddr / unix_listen_saddr texts)."""
    return _listen_unix(addr.path, backlog) if addr.kind == "unix" else _listen_inet(addr, backlog)


def _listen_unix(path: str, backlog: int) -> socket.socket:
    _check_unix_path(path)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # a stale socket is replaced, as QEMU does; never any other file
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise AddressError(f"Failed to bind socket to {path}: {_strerror(exc)}") from exc
    return _start_listening(sock, backlog)


def _start_listening(sock: socket.socket, backlog: int) -> socket.socket:
    try:
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise AddressError(f"Failed to listen on socket: {_strerror(exc)}") from exc
    return sock


def _listen_inet(addr: Address, backlog: int) -> socket.socket:
    """Each address getaddrinfo gave, each port up to ``to``: the first that is free."""
    # Without ipv4/ipv6 (or with both) an IPv6 wildcard also takes IPv4, as in QEMU.
    v6only = not ((addr.ipv4 is None and addr.ipv6 is None) or (addr.ipv4 and addr.ipv6))
    created, last_errno = False, 0
    for family, proto, sockaddr in resolve(addr, listening=True):
        first = int(sockaddr[1])
        for port in range(first, max(first, addr.to or 0) + 1):
            try:
                sock = socket.socket(family, socket.SOCK_STREAM, proto)
            except OSError as exc:
                last_errno = exc.errno or 0
                break
            created = True
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            target = (sockaddr[0], port & 0xFFFF, *sockaddr[2:])
            if _bind(sock, family, target, v6only):
                if addr.keep_alive:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                return _start_listening(sock, backlog)
            last_errno = errno.EADDRINUSE
    what = "Failed to find an available port" if created else "Failed to create a socket"
    raise AddressError(f"{what}: {os.strerror(last_errno)}")


def _bind(
    sock: socket.socket, family: socket.AddressFamily, target: tuple[Any, ...], v6only: bool
) -> bool:
    """Bind; False (socket closed) when the port is taken. An IPv6 socket that also wanted
    IPv4 retries IPv6 alone, since the taken one may be the IPv4 port (QEMU's try_bind)."""
    ipv6 = family == socket.AF_INET6
    for only in (v6only, True) if ipv6 and not v6only else (v6only,):
        if ipv6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(only))
        try:
            sock.bind(target)
            return True
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                sock.close()
                raise AddressError(f"Failed to bind socket: {_strerror(exc)}") from exc
    sock.close()
    return False


def tune(sock: socket.socket, *, keep_alive: bool = False) -> None:
    sock.settimeout(None)
    if keep_alive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)


IPTOS_LOWDELAY = 0x10  # RFC 1349's "minimize delay" (not in Python's socket module)
TC_PRIO_INTERACTIVE = 6  # Linux's priority for it: a prio or pfifo_fast qdisc's first band


def prioritize(sock: socket.socket) -> None:
    """Mark what this socket sends as urgent (postcopy's page requests and requested pages):
    "minimize delay" in its IP header, for the network's queues that honour it, and the
    interactive priority for this host's (a page then overtakes a bulk stream queued there)."""
    if sock.family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, IPTOS_LOWDELAY)
    elif sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, IPTOS_LOWDELAY)
    else:  # a unix socket: no network queue to overtake in
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, TC_PRIO_INTERACTIVE)


def shutdown(sock: socket.socket | None) -> None:
    """Break both directions now (unblocks a peer thread in send/recv); a closed socket is fine."""
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def send_buffers(
    sock: socket.socket,
    buffers: Sequence[bytes | memoryview],
    blocked: Callable[[], None] | None = None,
) -> int:
    """Gathered write of every buffer (sendmsg, resuming after partial writes); bytes sent.

    With ``blocked``, a write never blocks in the kernel: when the socket's buffer is full,
    ``blocked()`` waits instead (so its owner knows a write is in progress, and may break it).
    """
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    total = sum(len(v) for v in views)
    flags = 0 if blocked is None else socket.MSG_DONTWAIT
    while views:
        try:
            sent = sock.sendmsg(views[:512], [], flags)
        except BlockingIOError:
            assert blocked is not None
            blocked()
            continue
        while sent:
            if sent >= len(views[0]):
                sent -= len(views.pop(0))
            else:
                views[0] = views[0][sent:]
                sent = 0
    return total


class OneStream:
    """The base of a Listener that "accepts" once: the one stream of a command or a file. It
    has no return path (so no completion handshake, engine/destination.py) and no multifd
    channels, and a failed load is final: there is nothing to listen on again."""

    one_way = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken = False
        self._closed = False

    def _take(self, stop: threading.Event) -> bool:
        """Whether this accept gets the stream: the first, unless closed or stopped."""
        with self._lock:
            if self._closed or self._taken or stop.is_set():
                return False
            self._taken = True
            return True

    def _close_untaken(self, sock: socket.socket) -> None:
        with self._lock:
            if not self._taken:  # nobody else owns our end of the stream
                sock.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Refuse further accepts (a stream already taken flows on)."""
        with self._lock:
            self._closed = True


class Listener:
    """A listening socket; its owner closes it once it has the connections it wants (one, or
    one plus the multifd channels), after which further connections are refused, as in QEMU."""

    one_way = False  # its streams have a return path (engine/command.py's have none)

    def __init__(self, addr: Address) -> None:
        sock = listen(addr)
        if addr.kind == "tcp":  # the address actually bound: port 0 becomes the real port
            host, port = sock.getsockname()[:2]
            addr = replace(addr, host=str(host), port=str(port), to=None)
        self.addr = addr
        sock.setblocking(False)  # accepted only once poll() says a connection waits
        self._sock = sock
        # close() writes here to wake an accept waiting in poll() at once (a shutdown would
        # wake a TCP accept only, not a unix one).
        self._wake_r, self._wake_w = socket.socketpair()
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._poll.register(self._wake_r, select.POLLIN)
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
                if not self._poll.poll(ACCEPT_POLL_S * 1000):
                    continue
                try:
                    conn, _ = self._sock.accept()
                except BlockingIOError:  # woken by close(), or the client gave up meanwhile
                    continue
                except OSError as exc:
                    log.error("accept on %s failed: %s", self.addr.uri(), exc)
                    return None
            tune(conn)  # blocking again (settimeout(None))
            return conn
        return None

    @property
    def closed(self) -> bool:
        return self._closed

    def finish(self) -> str | None:
        """The stream is over: what failed besides it (a command's exit, for
        CommandListener); for a socket, nothing."""
        return None

    def close(self) -> None:
        """Refuse further connections, at once: an accept in progress is woken."""
        self._closing = True
        with contextlib.suppress(OSError):  # closed already
            self._wake_w.send(b"x")
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._sock.close()
            self._wake_r.close()
            self._wake_w.close()
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
    and :meth:`wake` re-checks a waiting sender at once; 0 means unlimited, as in QEMU. A
    sender sizes each step by :meth:`left` (QEMU checks its budget before each page, so a
    window carries at most a page past it, the first one too); bytes beyond a window's
    budget are carried into the next, so sends still average out to the limit.
    ``clock`` times the windows (tests hold it still).
    """

    WINDOW_S = 0.1

    def __init__(
        self, rate: Callable[[], int], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._clock = clock
        # Guards the counters (multifd channel threads charge too) and wakes a waiting sender.
        self._cond = threading.Condition()
        self._window_start = clock()
        self._used = 0
        self._ended = False
        self.unlimited = False  # stop-and-copy lifts the limit

    def charge(self, nbytes: int) -> None:
        with self._cond:
            self._used += nbytes

    def _budget(self) -> int:
        """This window's budget (0: unlimited); rolls the window when it has ended."""
        rate = 0 if self.unlimited else self._rate()
        now = self._clock()
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

    def left(self) -> int | None:
        """Bytes this window may still carry (None: unlimited)."""
        with self._cond:
            budget = self._budget()
            return max(0, budget - self._used) if budget else None

    def wait_window(self, urgent: Callable[[], bool] = lambda: False) -> None:
        """When the budget is spent, wait for the next window (QEMU's migration_rate_limit);
        ``urgent`` work (postcopy's requested pages, after a wake) ends the wait at once."""
        with self._cond:
            while not self._ended and self._exhausted() and not urgent():
                left = self._window_start + self.WINDOW_S - self._clock()
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
