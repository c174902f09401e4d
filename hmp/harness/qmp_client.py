"""A small synchronous QMP client: how drivers read an endpoint's figures, as tools read QEMU's.

It speaks QEMU's protocol — the greeting, ``qmp_capabilities``, then one request at a time,
each with an ``id`` — so it drives real QEMU 7.2 (``-qmp unix:PATH,server=on,wait=off``) as it
drives qemu-hmp. Every read has a deadline; events that arrive between replies are kept in
``events`` (the newest EVENTS_KEPT), never mistaken for a reply. It connects to a unix
socket path, or to ``unix:PATH`` / ``tcp:HOST:PORT`` as ``--connect`` spells them.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0  # default bound of one request and its reply
POLL_INTERVAL_S = 0.05  # between two requests of ``poll``
EVENTS_KEPT = 1000
MAX_LINE = 16 * 1024 * 1024  # QEMU's longest answers are a few hundred KiB; past this, not QMP
# QAPI MigrationStatus values after which a migration's status does not change any more.
MIGRATION_ENDED = frozenset({"completed", "failed", "cancelled"})


class QmpClientError(Exception):
    """The QMP peer could not be reached or did not answer as QMP does."""


class QmpConnectionError(QmpClientError):
    """Refused, gone, or closed the connection."""


class QmpTimeout(QmpClientError):
    """No answer within the deadline; ``last`` is the last answer ``poll`` saw, if any."""

    def __init__(self, message: str, last: Any = None) -> None:
        super().__init__(message)
        self.last = last


class QmpCommandError(QmpClientError):
    """The command failed: QMP's ``{"error": {"class": ..., "desc": ...}}``."""

    def __init__(self, command: str, error: Mapping[str, Any]) -> None:
        self.cls = str(error.get("class", ""))
        self.desc = str(error.get("desc", ""))
        super().__init__(f"{command}: {self.desc} ({self.cls})")


class QmpClient:
    """One negotiated QMP session on a unix socket; safe to share between threads."""

    def __init__(self, path: str, timeout: float = TIMEOUT_S) -> None:
        """``path``: a unix socket's path, or ``unix:PATH`` or ``tcp:HOST:PORT``."""
        self.path = path
        self.timeout = timeout
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self._buf = b""
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        deadline = time.monotonic() + timeout
        try:
            self._sock = _connect(path, timeout)
        except (OSError, ValueError) as err:
            message = err.strerror if isinstance(err, OSError) and err.strerror else err
            raise QmpConnectionError(f"QMP {path}: cannot connect: {message}") from None
        try:
            try:
                self.greeting = self._read(deadline)
            except QmpTimeout:
                raise QmpTimeout(f"QMP {path}: no greeting within {timeout:g}s") from None
            if "QMP" not in self.greeting:
                raise QmpClientError(f"QMP {path}: expected a greeting, got {self.greeting}")
            self.execute("qmp_capabilities")
        except QmpClientError:
            self._sock.close()
            raise

    @property
    def version(self) -> tuple[int, int, int]:
        """The peer's version, from its greeting: (major, minor, micro)."""
        qemu = self.greeting["QMP"].get("version", {}).get("qemu", {})
        return int(qemu.get("major", 0)), int(qemu.get("minor", 0)), int(qemu.get("micro", 0))

    def take_events(self) -> list[dict[str, Any]]:
        """The events kept so far, oldest first, and forget them (safe beside ``execute``)."""
        taken = []
        while True:
            try:
                taken.append(self.events.popleft())
            except IndexError:
                return taken

    def execute(
        self, command: str, arguments: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """Run ``command``; its ``return`` (a dict for the query commands), or QmpCommandError."""
        request: dict[str, Any] = {"execute": command, "id": next(self._ids)}
        if arguments is not None:
            request["arguments"] = dict(arguments)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._lock:
            self._send(request)
            while True:
                msg = self._read(deadline)
                if "event" in msg:
                    self.events.append(msg)
                elif msg.get("id") != request["id"]:
                    # The late reply to a request that timed out: not this one's.
                    log.warning("QMP %s: dropped a reply to another request: %s", self.path, msg)
                elif "error" in msg:
                    raise QmpCommandError(command, msg["error"])
                else:
                    return msg.get("return")

    def poll(
        self,
        command: str,
        done: Callable[[Any], bool],
        timeout: float,
        interval: float = POLL_INTERVAL_S,
    ) -> Any:
        """Run ``command`` every ``interval`` seconds until ``done(its return)``: that return.

        QmpTimeout (carrying the last return) once ``timeout`` seconds have passed.
        """
        deadline = time.monotonic() + timeout
        tick = threading.Event()  # never set: a pause between two requests to another process
        while True:
            value = self.execute(command)
            if done(value):
                return value
            if time.monotonic() >= deadline:
                raise QmpTimeout(
                    f"QMP {self.path}: {command} not as awaited after {timeout:g}s: {value}", value
                )
            tick.wait(interval)

    def _send(self, request: Mapping[str, Any]) -> None:
        try:
            self._sock.sendall((json.dumps(request) + "\n").encode())
        except OSError as err:
            raise QmpConnectionError(
                f"QMP {self.path}: the peer closed the connection ({err.strerror})"
            ) from None

    def _read(self, deadline: float) -> dict[str, Any]:
        """The next message, whole: a line of JSON (QEMU ends each with CRLF)."""
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpTimeout(f"QMP {self.path}: no answer within the deadline")
            try:
                self._sock.settimeout(left)
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue  # the deadline check above raises
            except ConnectionError as err:  # reset: QEMU died with our request unread
                raise QmpConnectionError(
                    f"QMP {self.path}: the peer closed the connection ({err.strerror})"
                ) from None
            except OSError as err:
                raise QmpConnectionError(f"QMP {self.path}: {err.strerror or err}") from None
            if not chunk:
                raise QmpConnectionError(f"QMP {self.path}: the peer closed the connection")
            self._buf += chunk
            if len(self._buf) > MAX_LINE and b"\n" not in self._buf:
                raise QmpClientError(f"QMP {self.path}: not QMP: a line of more than 16 MiB")
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except ValueError:
            raise QmpClientError(f"QMP {self.path}: not JSON: {line[:200]!r}") from None
        if not isinstance(msg, dict):
            raise QmpClientError(f"QMP {self.path}: not a JSON object: {line[:200]!r}")
        return msg

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> QmpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connect(target: str, timeout: float) -> socket.socket:
    """A connected socket to a unix path, ``unix:PATH`` or ``tcp:HOST:PORT`` (``[IPV6]``)."""
    if target.startswith("tcp:"):
        host, sep, port = target.removeprefix("tcp:").rpartition(":")
        if not sep or not host or not port:
            raise ValueError(f"expected tcp:HOST:PORT, not {target!r}")
        return socket.create_connection((host.removeprefix("[").removesuffix("]"), port), timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(target.removeprefix("unix:"))
    except OSError:
        sock.close()
        raise
    return sock


def socket_uri(address: Mapping[str, Any]) -> str:
    """A QAPI ``SocketAddress`` (``query-migrate``'s ``socket-address``) as a migration URI."""
    if address.get("type") == "inet":
        host = str(address["host"])
        return f"tcp:{f'[{host}]' if ':' in host else host}:{address['port']}"
    if address.get("type") == "unix":
        return f"unix:{address['path']}"
    raise ValueError(f"no migration URI for the socket address {dict(address)}")


def listening_uri(info: Mapping[str, Any]) -> str:
    """Where a destination listens, from its ``query-migrate`` (port 0 resolved by then)."""
    addresses = info.get("socket-address")
    if not addresses:
        raise ValueError("the endpoint is not listening for an incoming migration")
    return socket_uri(addresses[0])
