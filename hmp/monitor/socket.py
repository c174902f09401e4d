"""``-monitor unix:PATH,server=on,wait=off`` (or ``tcp:``/``telnet:HOST:PORT``): HMP on a socket.

What scripts, expect drivers and ``socat`` attach to, served as QEMU 7.2 serves it: the banner,
then QEMU's line editor (readline.py) echoing every byte, ``\\r\\n`` line ends. One client
at a time: while one is connected the listener is not accepted from, so the next waits in
the backlog and is served, banner first, once the first leaves; the half-typed line is
dropped, the history kept. ``telnet:`` (or ``telnet=on``) first sends QEMU's option offers
and strips the client's telnet commands. ``quit`` ends the process, as QEMU's does.
Without ``-monitor stdio`` next to it, stdin is nobody's: nothing reads it, as in QEMU.
"""

from __future__ import annotations

import io
import logging
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from engine.errors import MigrationError
from engine.machine import Machine
from engine.transport import Address, Listener
from hmp.chardev import monitor_chardev, socket_chardev
from hmp.exits import ProcessEnd, interruptible
from hmp.monitor.readline import ENCODING, LineEditor, complete
from hmp.monitor.session import Monitor
from hmp.qemuopts import OptionError, flag, take_option

log = logging.getLogger(__name__)

# Telnet (RFC 854): Interpret As Command, then a command byte.
IAC, BREAK, WILL, DO = 0xFF, 0xF3, 0xFB, 0xFD
ECHO, SUPPRESS_GO_AHEAD, BINARY = 1, 3, 0
# What QEMU offers at each telnet connection: it echoes, needs no go-ahead, talks 8 bits.
TELNET_OFFERS = bytes(
    [IAC, WILL, ECHO, IAC, WILL, SUPPRESS_GO_AHEAD, IAC, WILL, BINARY, IAC, DO, BINARY]
)


# -- the -monitor option --------------------------------------------------------------------
@dataclass(frozen=True)
class MonitorSpec:
    """A ``-monitor`` value: ``stdio``, ``none``, or a socket to listen on."""

    text: str
    address: Address | None = None  # None: stdio or none
    stdio: bool = False
    telnet: bool = False
    wait: bool = True


def parse_monitor_spec(text: str) -> MonitorSpec:
    """QEMU's ``-monitor`` checks and texts (hmp/chardev.py); then what qemu-hmp serves:
    stdio, none, or a socket it listens on (telnet negotiated here)."""
    try:
        if text == "none":
            return MonitorSpec(text)
        backend, opts = monitor_chardev(text)
        if backend == "stdio":  # mon:stdio too: the monitor is the only user of stdio here
            return MonitorSpec(text, stdio=True)
        if backend != "socket":
            raise OptionError("only stdio, none, unix:, tcp: and telnet: are supported")
        telnet = flag(opts, "telnet")
        server = socket_chardev({k: v for k, v in opts.items() if k != "telnet"})
    except OptionError as err:
        raise err.located(f"-monitor {text}") from None
    return MonitorSpec(text, server.address, telnet=telnet, wait=server.wait)


def extract_monitor_options(argv: list[str]) -> tuple[list[MonitorSpec], list[str]]:
    """Take every ``-monitor VALUE`` (or ``--monitor``) out of ``argv``; OptionError on a bad
    one. No ``-monitor`` at all means the monitor on stdio, as QEMU's default."""
    values, rest = take_option(argv, "monitor")
    specs: list[MonitorSpec] = []
    for value in values:
        specs.append(parse_monitor_spec(value))
        if sum(spec.stdio for spec in specs) > 1:
            raise OptionError("cannot use stdio by multiple character devices").located(
                f"-monitor {value}"
            )
    return specs or [MonitorSpec("stdio", stdio=True)], rest


# -- one connection -------------------------------------------------------------------------
class TelnetFilter:
    """Drops the telnet commands a client sends, as QEMU's telnet chardev does: ``IAC IAC`` is
    a 0xff byte, ``IAC BREAK`` two bytes, any other ``IAC`` starts three (options included)."""

    def __init__(self) -> None:
        self._left = 0  # bytes of a command still to drop
        self._after_iac = False

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        for byte in data:
            if self._after_iac:
                self._after_iac = False
                if byte == IAC:
                    out.append(IAC)
                elif byte != BREAK:
                    self._left = 1
            elif self._left:
                self._left -= 1
            elif byte == IAC:
                self._after_iac = True
            else:
                out.append(byte)
        return bytes(out)


class _ClientOutput(io.TextIOBase, TextIO):  # TextIO: what Monitor takes
    """The monitor's output: QEMU's ``\\r\\n`` line ends, to the client connected (if any)."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None

    def attach(self, sock: socket.socket | None) -> None:
        self._sock = sock

    def write(self, text: str) -> int:
        self.send(text.replace("\n", "\r\n").encode(*ENCODING))
        return len(text)

    def send(self, data: bytes) -> None:
        """Without a client the bytes go nowhere, as QEMU's output to a disconnected socket."""
        if self._sock is None or not data:
            return
        try:
            self._sock.sendall(data)
        except OSError as err:
            log.info("monitor client left while output was sent: %s", err)
            self._sock = None  # its reader sees the end next


# -- the server -----------------------------------------------------------------------------
class MonitorSocket:
    """One ``-monitor`` socket: its listener, its monitor, its line editor (kept across
    clients, like QEMU's), and a thread serving one client at a time. ``on_quit`` runs on
    that thread after ``quit``; ValueError (QEMU's text) if the socket cannot be bound."""

    def __init__(self, machine: Machine, spec: MonitorSpec, on_quit: Callable[[], None]):
        assert spec.address is not None
        self.spec = spec
        self._on_quit = on_quit
        self._listener = _listen(spec)
        self._out = _ClientOutput()
        self._monitor = Monitor(machine, out=self._out)
        dialect = self._monitor.dialect
        self._editor = LineEditor(lambda before: complete(before, dialect))
        self._closed = threading.Event()
        self._client: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> Address:
        """Where it listens (a tcp port 0 resolved to the real one)."""
        return self._listener.addr

    def start(self) -> None:
        """Serve from now on; with ``wait=on``, first say so and wait for a client, as QEMU."""
        first = None
        if self.spec.wait:
            sys.stderr.write(
                f"qemu-hmp: -monitor {self.spec.text}: info: QEMU waiting for connection on: "
                f"disconnected:{self._where()},server=on\n"
            )
            sys.stderr.flush()
            with interruptible():  # a client may never come: a signal still ends the wait
                first = self._listener.accept(self._closed)
        thread = threading.Thread(
            target=self._serve, args=(first,), name="monitor-socket", daemon=True
        )
        thread.start()
        # Only a started thread may be joined: a signal inside start() leaves close() one
        # that may never have begun (it ends by itself once it sees `_closed`).
        self._thread = thread

    def _where(self) -> str:
        addr = self.address
        if addr.kind == "unix":
            return addr.uri()
        return f"{'telnet' if self.spec.telnet else 'tcp'}:{addr.display()}"

    def _serve(self, client: socket.socket | None) -> None:
        while not self._closed.is_set():
            if client is None:
                client = self._listener.accept(self._closed)
            if client is None:
                return  # closed
            if self._session(client):
                self._on_quit()
                return
            client = None

    def _session(self, client: socket.socket) -> bool:
        """Serve one client until it leaves; True if it typed ``quit``."""
        self._client = client
        self._out.attach(client)
        try:
            return self._converse(client)
        except OSError as err:
            if not self._closed.is_set():
                log.info("monitor client lost: %s", err)
            return False
        finally:
            self._out.attach(None)
            self._client = None
            client.close()

    def _converse(self, client: socket.socket) -> bool:
        telnet = TelnetFilter() if self.spec.telnet else None
        if telnet is not None:
            self._out.send(TELNET_OFFERS)
        self._monitor.printf(self._monitor.dialect.banner)
        self._editor.restart()
        self._out.send(self._editor.take_output())
        while data := client.recv(4096):
            if telnet is not None:
                data = telnet.feed(data)
            for byte in data:
                line = self._editor.feed(byte)
                if line is not None and self._run(line):
                    return True
            self._out.send(self._editor.take_output())
        return False

    def _run(self, line: bytes) -> bool:
        """One line entered: the echo so far, the command's output, the next prompt."""
        self._out.send(self._editor.take_output())
        self._monitor.execute(line.decode(*ENCODING))
        if self._monitor.quit_requested:
            return True
        self._editor.show_prompt()
        return False

    def close(self) -> None:
        """Stop listening (removing a unix socket's file) and hang up on the client."""
        self._closed.set()
        self._listener.close()
        client = self._client
        if client is not None:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # it is gone already
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)


def _listen(spec: MonitorSpec) -> Listener:
    """engine.transport's listener, with QEMU's chardev texts for what goes wrong."""
    assert spec.address is not None
    try:
        return Listener(spec.address)
    except MigrationError as err:  # transport's AddressError has QEMU's text
        raise OptionError(err.report()).located(f"-monitor {spec.text}") from err


class MonitorSockets:
    """Every ``-monitor`` socket of a process; ``quit`` on any of them ends it through
    ``end``, whose cleanups hold ``close`` before any socket serves (a quit typed at once must
    still remove the socket files)."""

    def __init__(self, machine: Machine, specs: list[MonitorSpec], end: ProcessEnd) -> None:
        self.servers: list[MonitorSocket] = []
        end.on_end(self.close)
        for spec in specs:
            if spec.address is None:
                continue
            try:
                self.servers.append(MonitorSocket(machine, spec, end.now))
            except ValueError:
                self.close()
                raise
        for server in self.servers:
            server.start()

    def close(self) -> None:
        for server in self.servers:
            server.close()
