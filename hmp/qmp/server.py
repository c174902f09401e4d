"""A QMP server in front of one `Machine`: what ``-qmp unix:PATH,server=on,wait=off`` serves.

Each client gets QEMU 7.2's greeting, must negotiate with ``qmp_capabilities``, then may run
the migration commands; replies echo ``id``; events reach every negotiated client. Clients
may come one after another or at once. Each has a reader thread (which runs its commands)
and a writer thread, so a slow or vanished client never blocks the engine's event emitters.

Output is bounded: a client that does not read its replies has its requests left unread (the
reader waits once `REPLY_BACKLOG` bytes are queued, as QEMU's monitor stops reading while its
request queue is full), and one that lets `EVENT_BACKLOG` bytes of events pile up is hung up
on. Events that other threads raise while a command runs follow that command's reply, as in
QEMU, whose main loop dispatches them after the command; the command's own come before it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.errors import MigrationError, ReportedFailure
from engine.machine import Machine
from engine.params import TABLE_7_2
from engine.params11 import TABLE_11_1
from engine.state import MigrationStatus
from engine.transport import Address, UnknownProtocol, listen, parse_uri
from hmp.chardev import qmp_chardev
from hmp.exits import interruptible
from hmp.monitor import POSTCOPY_REFUSED_11, Monitor, dialect_of, package_version
from hmp.qemuopts import OptionError
from hmp.qmp import qapi
from hmp.qmp.channels import CHANNELS, main_uri
from hmp.qmp.jsonstream import JsonError, JsonStreamer, dumps
from hmp.qmp.jsonstream11 import JsonStreamer11
from hmp.qmp.qapi import QmpError, Visitor

Args = dict[str, Any]
log = logging.getLogger(__name__)

REPLY_BACKLOG = 1 << 20  # bytes queued for a client beyond which its requests wait
EVENT_BACKLOG = 16 << 20  # bytes queued for a client beyond which it is hung up on


# -- the -qmp option ------------------------------------------------------------------------------
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QmpSpec:
    """A parsed ``-qmp`` value: where to listen and whether to wait for the first client."""

    address: Address
    wait: bool
    text: str  # as given, for messages


def parse_qmp_spec(text: str) -> QmpSpec:
    """``unix:PATH`` or ``tcp:HOST:PORT`` with QEMU's chardev options (hmp/chardev.py; server
    is required); an OptionError (a ValueError) carries QEMU's lines, each after ``-qmp TEXT: ``."""
    try:
        chardev = qmp_chardev(text)
    except OptionError as err:
        raise err.located(f"-qmp {text}") from None
    return QmpSpec(chardev.address, chardev.wait, text)


# -- commands -------------------------------------------------------------------------------------
Handler = Callable[["_Session", Args], Any]


@dataclass(frozen=True)
class _Command:
    args: Visitor
    run: Handler


def _qmp_capabilities(session: _Session, args: Args) -> Any:
    session.negotiate(oob="oob" in args.get("enable", []))
    return {}


def _query_version(session: _Session, args: Args) -> Any:
    major, minor, micro = dialect_of(session.machine).version_triple
    package = f"qemu-hmp {package_version()}"
    return {"qemu": {"major": major, "minor": minor, "micro": micro}, "package": package}


def _set_parameters(session: _Session, args: Args) -> Any:
    if args.pop("block-bitmap-mapping", []):  # an empty mapping is the only one without disks
        raise QmpError("Parameter 'block-bitmap-mapping' is not supported by qemu-hmp")
    session.machine.set_parameters(args)
    return {}


def _migrate(session: _Session, args: Args) -> Any:
    # QMP `migrate` never waits, so `detach` changes nothing.
    flags = {key: bool(args.get(key)) for key in ("blk", "inc", "resume")}
    try:
        session.machine.migrate(args["uri"], **flags)
    except ReportedFailure as exc:
        # QEMU succeeds; its error_report, under a QMP command, writes the bare text to stderr
        sys.stderr.write(f"{exc.desc}\n")
    return {}


def _migrate_recover(session: _Session, args: Args) -> Any:
    session.machine.migrate_recover(args["uri"])
    return {}


def _human_monitor_command(session: _Session, args: Args) -> Any:
    if args.get("cpu-index", 0) != 0:  # qemu-hmp guests have one vCPU
        raise QmpError("Parameter 'cpu-index' expects a CPU number")
    text, quit_requested = hmp_to_string(session.machine, args["command-line"])
    if quit_requested:
        session.server.quit(session)
    return text.replace("\n", "\r\n")  # what QEMU's monitor output always does


def _quit(session: _Session, args: Args) -> Any:
    session.server.quit(session)
    return {}


def _set_capabilities(session: _Session, args: Args) -> Any:
    session.machine.set_capabilities({c["capability"]: c["state"] for c in args["capabilities"]})
    return {}


def _migrate_incoming(session: _Session, args: Args) -> Any:
    session.machine.migrate_incoming(args["uri"])
    return {}


def _migrate_continue(session: _Session, args: Args) -> Any:
    session.machine.migrate_continue(MigrationStatus(args["state"]))
    return {}


def _done(action: Callable[[Machine], object]) -> Handler:
    """A command without arguments that just calls the machine and returns ``{}``."""

    def run(session: _Session, args: Args) -> Any:
        action(session.machine)
        return {}

    return run


_MIGRATE_FLAGS = {name: qapi.boolean for name in ("blk", "inc", "detach", "resume")}

COMMANDS: dict[str, _Command] = {
    "qmp_capabilities": _Command(
        qapi.struct({}, {"enable": qapi.array(qapi.enum(("oob",)))}), _qmp_capabilities
    ),
    "query-version": _Command(qapi.NO_ARGS, _query_version),
    "query-commands": _Command(qapi.NO_ARGS, lambda s, a: [{"name": name} for name in COMMANDS]),
    "query-name": _Command(
        qapi.NO_ARGS,
        lambda s, a: {} if s.machine.opts.name is None else {"name": s.machine.opts.name},
    ),
    "query-uuid": _Command(qapi.NO_ARGS, lambda s, a: {"UUID": s.machine.uuid}),
    "query-status": _Command(qapi.NO_ARGS, lambda s, a: qapi.status_info(s.machine.query_status())),
    "query-migrate": _Command(
        qapi.NO_ARGS, lambda s, a: qapi.migration_info(s.machine.query_migrate())
    ),
    "query-migrate-capabilities": _Command(
        qapi.NO_ARGS,
        lambda s, a: qapi.migration_capabilities(s.machine.config.capabilities()),
    ),
    "query-migrate-parameters": _Command(
        qapi.NO_ARGS,
        lambda s, a: qapi.migration_parameters(
            s.machine.config.params(), s.machine.config.table.parameters
        ),
    ),
    "migrate-set-capabilities": _Command(qapi.SET_CAPABILITIES, _set_capabilities),
    "migrate-set-parameters": _Command(qapi.SET_PARAMETERS, _set_parameters),
    "migrate": _Command(qapi.struct({"uri": qapi.string}, _MIGRATE_FLAGS), _migrate),
    "migrate_cancel": _Command(qapi.NO_ARGS, _done(Machine.migrate_cancel)),
    "migrate-start-postcopy": _Command(qapi.NO_ARGS, _done(Machine.migrate_start_postcopy)),
    "migrate-pause": _Command(qapi.NO_ARGS, _done(Machine.migrate_pause)),
    "migrate-recover": _Command(qapi.struct({"uri": qapi.string}), _migrate_recover),
    # Ours: each postcopy fault's wait on the destination, for `bench postcopy`.
    "x-query-postcopy-faults": _Command(
        qapi.NO_ARGS, lambda s, a: s.machine.query_postcopy_faults()
    ),
    "migrate-incoming": _Command(qapi.struct({"uri": qapi.string}), _migrate_incoming),
    "migrate-continue": _Command(
        qapi.struct({"state": qapi.enum(tuple(MigrationStatus))}), _migrate_continue
    ),
    "stop": _Command(qapi.NO_ARGS, _done(Machine.stop)),
    "cont": _Command(qapi.NO_ARGS, _done(Machine.cont)),
    "quit": _Command(qapi.NO_ARGS, _quit),
    "human-monitor-command": _Command(
        qapi.struct({"command-line": qapi.string}, {"cpu-index": qapi.integer}),
        _human_monitor_command,
    ),
}


def _migrate_11(session: _Session, args: Args) -> Any:
    """QEMU 11.1's `migrate`: a URI or one main channel (as the URI it stands for), parsed
    first."""
    uri, channels = args.get("uri"), args.get("channels", [])
    if (uri is None) == (not channels):
        raise QmpError("need either 'uri' or 'channels' argument")
    if uri is None:
        uri = main_uri(channels)
    try:
        if not uri.startswith("file:"):  # a file is opened by the migration itself
            parse_uri(uri, incoming=False)
    except UnknownProtocol:
        raise QmpError(f"unknown migration protocol: {uri}") from None
    session.machine.migrate(uri, resume=bool(args.get("resume")))
    return {}


def _refuse(command: str) -> Handler:
    """A postcopy command of the 11.1 dialect, which has no postcopy: QEMU 11.1's error."""

    def run(session: _Session, args: Args) -> Any:
        raise QmpError(POSTCOPY_REFUSED_11[command])

    return run


def _migrate_incoming_11(session: _Session, args: Args) -> Any:
    """QEMU 11.1's `migrate-incoming`: a URI or one main channel; exit-on-error."""
    uri, channels = args.get("uri"), args.get("channels", [])
    if (uri is None) == (not channels):
        raise QmpError("need either 'uri' or 'channels' argument")
    if not args.get("exit-on-error", True):  # a failed load ends a qemu-hmp destination
        raise QmpError("qemu-hmp's destination exits on a failed load: no 'exit-on-error': false")
    session.machine.migrate_incoming(uri if uri is not None else main_uri(channels, True))
    return {}


# QEMU 11.1's query-commands lists ours in this order (tests/data/qemu-11.1/qmp/commands.jsonl);
# our extension last.
_LISTED_11 = (
    *("human-monitor-command", "cont", "stop", "query-name", "query-uuid", "quit"),
    *("query-commands", "query-version", "qmp_capabilities", "migrate-pause", "migrate-recover"),
    *("migrate-incoming", "migrate", "migrate-continue", "migrate_cancel"),
    *("migrate-start-postcopy", "query-migrate-parameters", "migrate-set-parameters"),
    *("query-migrate-capabilities", "migrate-set-capabilities", "query-migrate", "query-status"),
    "x-query-postcopy-faults",
)


# QEMU 11.1's commands where they differ from 7.2's: its capability and parameter sets, no
# `singlestep` in query-status, `migrate` without blk/inc/detach but with channels, the
# members query-migrate lost and gained.
COMMANDS_11: dict[str, _Command] = {
    **COMMANDS,
    "query-commands": _Command(
        qapi.NO_ARGS, lambda s, a: [{"name": name} for name in _LISTED_11 if name in COMMANDS_11]
    ),
    "query-status": _Command(
        qapi.NO_ARGS, lambda s, a: qapi.status_info_11(s.machine.query_status())
    ),
    "query-migrate": _Command(
        qapi.NO_ARGS, lambda s, a: qapi.migration_info_11(s.machine.query_migrate())
    ),
    "migrate-set-capabilities": _Command(qapi.set_capabilities(TABLE_11_1), _set_capabilities),
    "migrate-start-postcopy": _Command(qapi.NO_ARGS, _refuse("migrate_start_postcopy")),
    "migrate-pause": _Command(qapi.NO_ARGS, _refuse("migrate_pause")),
    "migrate-recover": _Command(qapi.struct({"uri": qapi.string}), _refuse("migrate_recover")),
    "migrate-incoming": _Command(
        qapi.struct({}, {"uri": qapi.string, "channels": CHANNELS, "exit-on-error": qapi.boolean}),
        _migrate_incoming_11,
    ),
    "migrate-set-parameters": _Command(qapi.set_parameters(TABLE_11_1), _set_parameters),
    "migrate": _Command(
        qapi.struct(
            {},
            {
                "uri": qapi.string,
                "channels": CHANNELS,
                "resume": qapi.boolean,
            },
        ),
        _migrate_11,
    ),
}
# Each release's command table, by `--qemu`'s name.
COMMAND_TABLES: dict[str, dict[str, _Command]] = {
    TABLE_7_2.release: COMMANDS,
    TABLE_11_1.release: COMMANDS_11,
}
# Each release's JSON reader (their error texts and when they are given differ).
JSON_READERS: dict[str, type[JsonStreamer]] = {
    TABLE_7_2.release: JsonStreamer,
    TABLE_11_1.release: JsonStreamer11,
}


# -- one client -----------------------------------------------------------------------------------
class _Outbox:
    """What one client has yet to read, counted in bytes until the socket took it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._bytes = 0
        self._open = True

    @property
    def backlog(self) -> int:
        with self._cond:
            return self._bytes

    def put(self, chunk: bytes) -> int:
        """Queue ``chunk`` (dropped once closed); the backlog after it."""
        with self._cond:
            if self._open:
                self._chunks.append(chunk)
                self._bytes += len(chunk)
                self._cond.notify_all()
            return self._bytes

    def next(self) -> bytes | None:
        """The oldest chunk, still counted until `sent`; None once closed and drained."""
        with self._cond:
            self._cond.wait_for(lambda: self._chunks or not self._open)
            return self._chunks[0] if self._chunks else None

    def sent(self) -> None:
        with self._cond:
            if self._chunks:  # `discard` may have emptied it meanwhile
                self._bytes -= len(self._chunks.popleft())
                self._cond.notify_all()

    def wait_room(self, limit: int) -> bool:
        """Block while more than ``limit`` bytes wait; False if closed meanwhile."""
        with self._cond:
            self._cond.wait_for(lambda: self._bytes <= limit or not self._open)
            return self._open

    def close(self) -> None:
        """Take nothing more; what is queued still goes out."""
        with self._cond:
            self._open = False
            self._cond.notify_all()

    def discard(self) -> None:
        """Close and drop what is queued: the client will not read it."""
        with self._cond:
            self._open = False
            self._chunks.clear()
            self._bytes = 0
            self._cond.notify_all()


class _Session:
    """One connected client: greeting, negotiation, requests in order, events once negotiated."""

    machine: Machine

    def __init__(self, server: QmpServer, sock: socket.socket) -> None:
        self.server = server
        self.machine = server.machine
        self._sock = sock
        self._out = _Outbox()
        self.held = threading.Event()  # set while requests wait for the client to read
        self.ended = threading.Event()  # set once closed and its output released
        self._negotiated = False
        self._oob = False
        self.quitting = False  # set by `quit`: end the session once its reply is out
        self._lock = threading.Lock()  # orders replies and events
        self._busy = False  # a command is running on the reader thread
        self._deferred: list[bytes] = []  # events raised elsewhere meanwhile
        self._closed = False
        self._unsubscribe = self.machine.events.subscribe(self._event)
        self._reader = threading.Thread(target=self._read, name="qmp-reader", daemon=True)
        self._writer = threading.Thread(target=self._write, name="qmp-writer", daemon=True)

    @property
    def backlog(self) -> int:
        """Bytes of replies and events queued for this client and not yet sent."""
        return self._out.backlog

    def start(self) -> None:
        self._writer.start()
        self._reader.start()

    def negotiate(self, oob: bool) -> None:
        self._negotiated, self._oob = True, oob

    @staticmethod
    def _line(msg: dict[str, Any]) -> bytes:
        return (dumps(msg) + "\r\n").encode()

    def _event(self, name: str, data: dict[str, Any]) -> None:
        if not self._negotiated:
            return  # QEMU holds events back until capabilities are negotiated
        now = time.time()
        stamp = {"seconds": int(now), "microseconds": int(now % 1 * 1_000_000)}
        msg: dict[str, Any] = {"timestamp": stamp, "event": name}
        if data:
            msg["data"] = data
        line = self._line(msg)
        with self._lock:
            if self._busy and threading.current_thread() is not self._reader:
                self._deferred.append(line)
                return
            backlog = self._out.put(line)
        if backlog > EVENT_BACKLOG:
            log.warning("QMP client left %d bytes of events unread: hanging up", backlog)
            self._hang_up()

    def _read(self) -> None:
        greeting = {"QMP": {"version": _query_version(self, {}), "capabilities": ["oob"]}}
        self._out.put(self._line(greeting))
        try:
            self._serve()
        except OSError:
            pass  # the client went away, or the server is closing
        finally:
            self.close()
        if self.quitting:
            self.server.quit_done()

    def _serve(self) -> None:
        streamer = JSON_READERS[self.machine.config.table.release]()
        while not self.quitting and (data := self._sock.recv(65536)):
            for request in streamer.feed(data):
                if not self._room():
                    return
                self._answer(request)
                if self.quitting:
                    return

    def _room(self) -> bool:
        """Wait until the client has read enough of its replies; False if it went away."""
        if self._out.backlog <= REPLY_BACKLOG:
            return True
        log.debug("QMP client is not reading its replies: its requests wait")
        self.held.set()
        try:
            return self._out.wait_room(REPLY_BACKLOG)
        finally:
            self.held.clear()

    def _answer(self, request: Any) -> None:
        """Run one request; queue its reply, then the events others raised meanwhile."""
        with self._lock:
            self._busy = True
        reply = self._reply(request)
        with self._lock:
            self._busy = False
            for line in (reply, *self._deferred):
                self._out.put(line)
            self._deferred.clear()

    def _write(self) -> None:
        while (chunk := self._out.next()) is not None:
            try:
                self._sock.sendall(chunk)
            except OSError:
                self._hang_up()  # wakes the reader, which ends the session
                return
            self._out.sent()

    def _hang_up(self) -> None:
        """Drop what is queued and break the connection; `close` follows from the reader."""
        self._out.discard()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def _reply(self, request: Any) -> bytes:
        """The reply's line; ``id`` echoed when there is one (`dumps` puts it in QEMU's place)."""
        echo = {"id": request["id"]} if isinstance(request, dict) and "id" in request else {}
        try:
            return self._line({"return": self._dispatch(request), **echo})
        except Exception as exc:  # a bug in one command must not take the session down
            if not isinstance(exc, QmpError):
                log.exception("QMP command failed")
            err = exc if isinstance(exc, QmpError) else QmpError(f"qemu-hmp internal error: {exc}")
            return self._line({"error": {"class": err.cls, "desc": err.desc}, **echo})

    def _dispatch(self, request: Any) -> Any:
        if isinstance(request, JsonError):
            raise QmpError(request.desc)
        if not isinstance(request, dict):
            raise QmpError("QMP input must be a JSON object")
        for key, value in request.items():
            if key in ("execute", "exec-oob") and (key == "execute" or self._oob):
                if not isinstance(value, str):
                    raise QmpError(f"QMP input member '{key}' must be a string")
            elif key == "arguments":
                if not isinstance(value, dict):
                    raise QmpError("QMP input member 'arguments' must be an object")
            elif key != "id":
                raise QmpError(f"QMP input member '{key}' is unexpected")
        if "execute" in request and "exec-oob" in request:
            raise QmpError("QMP input member 'execute' clashes with 'exec-oob'")
        name = request.get("execute", request.get("exec-oob"))
        if name is None:
            raise QmpError("QMP input lacks member 'execute'")
        command = self._lookup(name)
        if "exec-oob" in request:
            raise QmpError(f"The command {name} does not support OOB")
        args = command.args(request.get("arguments", {}), "")
        try:
            return command.run(self, args)
        except MigrationError as err:
            raise QmpError.of(err) from err

    def _lookup(self, name: str) -> _Command:
        if not self._negotiated and name != "qmp_capabilities":
            raise QmpError(
                "Expecting capabilities negotiation with 'qmp_capabilities'", "CommandNotFound"
            )
        if self._negotiated and name == "qmp_capabilities":
            raise QmpError(
                "Capabilities negotiation is already complete, command ignored", "CommandNotFound"
            )
        commands = COMMAND_TABLES[self.machine.config.table.release]
        if name not in commands:
            raise QmpError(f"The command {name} has not been found", "CommandNotFound")
        return commands[name]

    def close(self) -> None:
        """End the session: let queued output out (for at most a second), then hang up and
        release what the client did not read."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._unsubscribe()
        self._out.close()
        if threading.current_thread() is not self._writer and self._writer.is_alive():
            self._writer.join(1.0)
        self._hang_up()
        self._sock.close()
        self.server.forget(self)
        self.ended.set()

    def join(self, timeout: float) -> None:
        for thread in (self._reader, self._writer):
            if thread is not threading.current_thread() and thread.is_alive():
                thread.join(timeout)


# -- the server -----------------------------------------------------------------------------------
def hmp_to_string(machine: Machine, line: str) -> tuple[str, bool]:
    """Run one HMP command line as ``human-monitor-command`` does: its text, and whether it quit.

    Each runs in a monitor of its own that cannot suspend (a `migrate` goes on detached, as in
    QEMU), so commands of different clients run side by side like their QMP commands do: the
    machine is thread-safe and no lock is held across one.
    """
    out = io.StringIO()
    monitor = Monitor(machine, out=out, err=out, can_suspend=False)
    monitor.execute(line)
    return out.getvalue(), monitor.quit_requested


class QmpServer:
    """Listens on one ``-qmp`` address; `close` ends every session and the listener."""

    def __init__(
        self,
        machine: Machine,
        spec: QmpSpec | str,
        *,
        on_quit: Callable[[], None] | None = None,
    ) -> None:
        self.machine = machine
        self.spec = parse_qmp_spec(spec) if isinstance(spec, str) else spec
        self._on_quit = on_quit or self._shutdown
        self._lock = threading.Lock()
        self._sessions: set[_Session] = set()
        self._closed = threading.Event()
        self._first_client = threading.Event()
        self._listener = listen(self.spec.address)  # an AddressError has QEMU's text
        self._accepter = threading.Thread(target=self._accept, name="qmp-accept", daemon=True)

    @property
    def address(self) -> str:
        """The bound address as a URI (``tcp:HOST:PORT`` shows the real port for port 0)."""
        if self.spec.address.kind == "unix":
            return self.spec.address.uri()
        host, port = self._listener.getsockname()[:2]
        return f"tcp:{host}:{port}"

    def start(self) -> None:
        """Accept clients from now on; with ``wait=on``, return once the first one connected."""
        self._accepter.start()
        if self.spec.wait:
            with interruptible():  # a client may never come: a signal still ends the wait
                self._first_client.wait()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            session = _Session(self, sock)
            with self._lock:
                closed = self._closed.is_set()
                if not closed:
                    self._sessions.add(session)
            if closed:
                session.close()
                return
            session.start()
            self._first_client.set()

    def sessions(self) -> list[_Session]:
        """The clients connected now (a snapshot), e.g. to see what each has queued."""
        with self._lock:
            return list(self._sessions)

    def forget(self, session: _Session) -> None:
        with self._lock:
            self._sessions.discard(session)

    def quit(self, session: _Session) -> None:
        """``quit``: announce SHUTDOWN; `quit_done` follows once the reply went out."""
        self.machine.events.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        session.quitting = True

    def quit_done(self) -> None:
        self._on_quit()

    def _shutdown(self) -> None:
        """The default `quit` without a CLI around: what exiting QEMU would release."""
        self.close()
        self.machine.close()

    def close(self) -> None:
        """Stop listening and end every session (idempotent; `quit` may race the owner)."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            sessions = list(self._sessions)
        self._first_client.set()  # release a start() still waiting (wait=on)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        if self.spec.address.kind == "unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.spec.address.path)
        for session in sessions:
            session.close()
        for session in sessions:
            session.join(5.0)
