"""The incoming migration thread: accept one connection, check, apply, verify, resume.

Every record is bounds-checked before it touches guest RAM (wire.read_batch_head); raw
pages are received straight into guest RAM. Compressed
pages go to the decompress workers, which inflate them straight into RAM; at each EOS the
thread drains them, as QEMU does, so a page re-sent in a later iteration can never be
overtaken by its stale copy. At DONE the CRC table of what was written must equal the
source's; then READY, and the guest resumes only once the source's GO arrives (the
completion handshake: docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np
import numpy.typing as npt

from engine import postcopy, wire, xbzrle
from engine.command import CommandListener
from engine.compression import CHUNK, CODECS, DecompressPool
from engine.file_stream import FileSource
from engine.guest import GuestRam
from engine.multifd import HELLO_MAGIC, METHODS, Hello, MultifdReceiver
from engine.snapshot import MigrationInfo
from engine.state import MigrationStatus, RunState
from engine.switchover_ack import Approval
from engine.transport import Address, Listener, prioritize, shutdown
from engine.vm import Vm

log = logging.getLogger(__name__)
STALE_PEEK_S = 1.0  # how long a new connection may take to show its first bytes
CHANNEL_TIMEOUT_S = 10.0  # for multifd channels to connect after the main stream
# From taking a stream to having its header, configuration and multifd channels: a silent or
# trickling peer is dropped after this, so it cannot hold the one incoming slot for ever.
SETUP_TIMEOUT_S = 10.0

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)


class IncomingMigration(threading.Thread):
    def __init__(
        self,
        listener: Listener | CommandListener | FileSource,
        ram: GuestRam,
        vm: Vm,
        local_config: Callable[[], tuple[wire.StreamConfig, int]],
        autostart: Callable[[], bool],
        on_failed: Callable[[IncomingMigration, str], None],
        on_event: Callable[[str, dict[str, Any]], None],
        previous: IncomingMigration | None = None,
        switchover_timeout: float = wire.SWITCHOVER_TIMEOUT_S,
        *,
        setup_timeout_s: float = SETUP_TIMEOUT_S,
        report: Callable[[str], None] = lambda _msg: None,
        blocktime: Callable[[], bool] = lambda: False,
        failure_prefix: str = "",
    ) -> None:
        """``previous``: a failed attempt on the same address whose status shows until a retry;
        ``switchover_timeout``: how long to wait for the source's GO once READY is sent;
        ``report``: QEMU's error_report; ``blocktime``: the postcopy-blocktime capability."""
        super().__init__(name="incoming_migration", daemon=True)
        self._switchover_timeout = switchover_timeout
        self.listener = listener
        self.ram = ram
        self.vm = vm
        self._local_config = local_config  # (config, decompress-threads) read at connection
        self._autostart = autostart
        self._on_failed = on_failed
        self._on_event = on_event
        self._report = report  # QEMU's warn_report
        self._blocktime = blocktime
        # What the status says before a failure's reason; set, nothing else reports it.
        self.failure_prefix = failure_prefix
        self._loader: StreamLoader | None = None
        self._show_blocktime = False  # postcopy-blocktime was on at the switch
        # Postcopy recovery: migrate_recover's listener and the connection it brought.
        self._recover_cond = threading.Condition()
        self._recovery: Listener | None = None
        self._recovery_conn: socket.socket | None = None
        self._lock = threading.Lock()
        self._status = previous.status if previous else MigrationStatus.NONE
        self._error: str | None = previous._error if previous else None
        self._setup_timeout_s = setup_timeout_s
        self._closing = threading.Event()  # not ``_stop``: Thread.join calls its own _stop()
        self._done = threading.Event()
        # Every connection this migration took, and what may still break them: close() and
        # the setup deadline shut them down, under this lock, until the run thread releases
        # them (only it closes them). Adoption checks _closing under the same lock, so a close
        # can never fall between accepting a connection and owning it.
        self._conn_lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._released = False
        self._set_up = False  # header, configuration and channels are in
        self._timed_out = False
        self._deadline = threading.Timer(setup_timeout_s, self._expire)
        self._deadline.name, self._deadline.daemon = "incoming_deadline", True
        # After a failed attempt RAM holds stale data; a fresh destination's is all zero.
        self._pristine = previous is None
        # switchover-ack: what holds the ACK the source may ask for (QEMU's devices that need
        # it; here a hold() from a test), sent at once after setup when nothing does.
        self.switchover = Approval()

    @property
    def status(self) -> MigrationStatus:
        return self._status

    def info(self) -> MigrationInfo:
        """The destination side of query-migrate: status, no figures (not even total-time: QEMU
        omits it there; `info migrate` still prints ``total time: 0 ms``), the listening address."""
        with self._lock:
            status, error = self._status, self._error
        listening = status is not MigrationStatus.COMPLETED and not self.listener.one_way
        address = (self.listener.addr.uri(),) if listening else None
        if status is MigrationStatus.NONE:
            return MigrationInfo(socket_address=address)
        loader = self._loader
        present = loader.present if loader else None
        if status is MigrationStatus.COMPLETED and present and self._show_blocktime:
            # QEMU fills the blocktime figures in only once the migration has completed.
            bt = present.blocktime()
            return MigrationInfo(
                status=status, postcopy_blocktime=bt.total_ms, postcopy_vcpu_blocktime=bt.vcpu_ms
            )
        return MigrationInfo(status=status, error_desc=error, socket_address=address)

    def blocktime(self) -> postcopy.Blocktime | None:
        """What the vCPU waited for pages during postcopy (None before the switch)."""
        loader = self._loader
        return loader.present.blocktime() if loader and loader.present else None

    def close(self) -> None:
        """Abandon the incoming side (quit): stop accepting and break the stream.

        Once this returns, the migration cannot complete: a connection accepted meanwhile is
        closed on adoption, and a stream loaded meanwhile is refused at the verdict.
        """
        with self._conn_lock:
            self._closing.set()
            self._shut_owned()
        with self._recover_cond:
            shutdown(self._recovery_conn)
            self._recover_cond.notify_all()
        self.listener.close()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def _set_status(self, status: MigrationStatus, error: str | None) -> None:
        with self._lock:
            self._status = status
            self._error = error
        self._on_event("MIGRATION", {"status": str(status)})

    # -- connection ownership ----------------------------------------------------------------
    def _adopt(self, conn: socket.socket | None) -> socket.socket | None:
        """Own ``conn`` for this migration; after close() it is closed at once (None)."""
        if conn is None:
            return None
        with self._conn_lock:
            if not self._closing.is_set():
                self._conns.append(conn)
                return conn
        conn.close()
        return None

    def _drop(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._conns.remove(conn)
        conn.close()

    def _shut_owned(self) -> None:
        """Break every connection still owned, so the loader fails (caller holds _conn_lock)."""
        if not self._released:
            for conn in self._conns:
                shutdown(conn)

    def _expire(self) -> None:
        """The setup deadline passed: drop the peer unless it delivered its setup in time."""
        with self._conn_lock:
            if self._set_up or self._released:
                return
            self._timed_out = True
            self._shut_owned()
        log.warning("incoming migration: no setup within %g s", self._setup_timeout_s)
        self.listener.close()  # a channel still awaited will not come either

    def _setup_done(self) -> None:
        """Header, configuration and channels are in: no deadline, and no more connections."""
        with self._conn_lock:
            self._set_up = True
        self._deadline.cancel()
        self.listener.close()

    def _release(self) -> tuple[bool, bool]:
        """The stream is over: nothing may break the connections any more, only the run
        thread closes them. Returns (closed meanwhile, setup timed out), decided now."""
        with self._conn_lock:
            self._released = True
            return self._closing.is_set(), self._timed_out

    # -- the thread ----------------------------------------------------------------------------
    def _accept_stream(self) -> socket.socket | None:
        """The next connection that is not a leftover multifd channel of a refused migration
        (its source opened the channels before it read our refusal)."""
        while (conn := self._adopt(self.listener.accept(self._closing))) is not None:
            conn.settimeout(min(STALE_PEEK_S, self._setup_timeout_s))
            try:
                stale = conn.recv(len(HELLO_MAGIC), socket.MSG_PEEK | socket.MSG_WAITALL)
            except OSError:  # nothing yet: let the loader wait for its header
                stale = b""
            conn.settimeout(None)
            if stale != HELLO_MAGIC:
                return conn
            self._drop(conn)
        return None

    def run(self) -> None:
        conn = self._accept_stream()
        if conn is None:
            self.listener.finish()
            self._done.set()
            return
        self._set_status(MigrationStatus.ACTIVE, None)
        self._deadline.start()
        loader = self._loader = StreamLoader(
            self.ram,
            self._local_config,
            pristine=self._pristine,
            warn=self._report,
            accept=lambda: self._adopt(self.listener.accept(self._closing, CHANNEL_TIMEOUT_S)),
            on_run=self._postcopy_run,
            approval=self.switchover,
            vcpus=self.vm.vcpus,
        )
        runstate, error = RunState.INMIGRATE, None
        try:
            if isinstance(self.listener, FileSource) and (problem := self.listener.check()):
                raise wire.StreamError(problem)  # QEMU's words for a file that is no stream
            runstate = loader.load(conn, then=self._setup_done)
        except (wire.StreamError, OSError) as exc:
            error = str(exc) if isinstance(exc, wire.StreamError) else (exc.strerror or str(exc))
        except Exception as exc:  # a bug must still leave the destination consistent
            log.exception("incoming migration on %s", self.listener.addr.uri())
            error = f"internal error: {exc!r}"
        finally:
            self._deadline.cancel()
            self._deadline.join()
            closed, timed_out = self._release()
            loader.close()
            self.listener.close()  # before a retry listens on the same address
        if timed_out:  # what the broken connection made the loader say is not the news
            error = (
                "the migration stream's header and configuration did not arrive within "
                f"{self._setup_timeout_s:g} s"
            )
        elif closed and error is None:
            error = "incoming migration closed before it completed"
        how = self.listener.finish()
        if error is not None and how and not timed_out:
            error = f"{error}; {how}"  # an exec: command's exit says more than its stream
        try:
            if loader.present is not None and error is not None:
                if self._postcopy_lost(conn, error, digest=loader.verified_digest is False):
                    self._recover_loop(loader)
            elif error is None:
                self._succeed(conn, runstate)
            else:
                self._fail(conn, error)
        finally:
            conn.close()
            self._done.set()

    def _postcopy_run(self, _source_state: RunState) -> None:
        """The switch arrived: the guest runs here now, its missing pages fetched on demand.
        Whatever state the source was in (a paused or never started one too): QEMU 7.2's
        loadvm_postcopy_handle_run_bh runs the guest unless -S, ignoring its global state."""
        self._show_blocktime = self._blocktime()
        self._set_status(MigrationStatus.POSTCOPY_ACTIVE, None)
        self._take_guest(RunState.RUNNING)

    def _postcopy_lost(self, conn: socket.socket, error: str, *, digest: bool) -> bool:
        """After the switch this side runs the guest: a broken stream pauses (QEMU's
        postcopy-paused; True), never gives the guest up; a digest mismatch is a failure."""
        if digest:
            self._report(f"load of migration failed: {error}")
            self._fail(conn, error, listen=False)
            return False
        self._pause(error)
        return not self._closing.is_set()

    def _pause(self, error: str) -> None:
        log.warning("postcopy paused: %s", error)
        if not self._closing.is_set():
            self._report("check_section_footer: Read section footer failed: -5")
            self._report("Detected IO failure for postcopy. Migration paused.")
        self._set_status(MigrationStatus.POSTCOPY_PAUSED, None)

    def pause(self) -> bool:
        """migrate_pause: break the stream of an active postcopy (False when not in it)."""
        loader = self._loader
        if self._status is not MigrationStatus.POSTCOPY_ACTIVE or loader is None:
            return False
        shutdown(loader.conn)
        return True

    def recover(self, addr: Address) -> None:
        """migrate_recover: listen on ``addr`` for the source's `migrate -r` (a second call
        replaces the first listener, as QEMU's does); MigrationError if it cannot listen."""
        with self._recover_cond:
            if self._recovery is not None:
                self._recovery.close()
            self._recovery = self.listener = Listener(addr)
            self._recover_cond.notify_all()

    def _recover_loop(self, loader: StreamLoader) -> None:
        """Paused: take each recovery connection in turn until one completes the migration
        (or this side closes); a recovery that breaks pauses again."""
        while (conn := self._await_recovery()) is not None:
            try:
                runstate = self._resume(loader, conn)
            except (wire.StreamError, OSError) as exc:
                error = str(exc) if isinstance(exc, wire.StreamError) else exc.strerror or ""
                if loader.verified_digest is False:  # not a broken stream: a wrong RAM
                    self._report(f"load of migration failed: {error}")
                    self._fail(conn, error, listen=False)
                    conn.close()
                    return
                conn.close()
                self._pause(error)
                continue
            try:
                self._succeed(conn, runstate)
            finally:
                conn.close()
            return

    def _await_recovery(self) -> socket.socket | None:
        """The next connection to migrate_recover's listener; None once closing."""
        while not self._closing.is_set():
            with self._recover_cond:
                listener = self._recovery
                if listener is None or listener.closed:
                    # close() sets _closing before it notifies under this lock: checked here,
                    # no notify can be missed. Until then the guest waits for migrate_recover.
                    if not self._closing.is_set():
                        self._recover_cond.wait()
                    continue
            conn = listener.accept(self._closing)
            if conn is not None:
                listener.close()
                with self._recover_cond:
                    if self._closing.is_set():
                        conn.close()
                        return None
                    self._recovery_conn = conn
                return conn
        return None

    def _resume(self, loader: StreamLoader, conn: socket.socket) -> RunState:
        """The recovery handshake (RECOVER, RECEIVED, RESUME), then the rest of the stream."""
        conn.settimeout(self._switchover_timeout)
        head = wire.read_exact(conn, wire.HEADER.size)
        if head is None:
            raise wire.StreamError("migration stream ended before its header")
        wire.check_header(bytes(head))
        rec = wire.read_record(conn, wire.MAX_JSON)
        if rec is None or rec[0] != wire.Rec.RECOVER:
            raise wire.StreamError("expected a postcopy recovery")
        if wire.parse_json(rec[1], "recovery").get("session") != loader.session:
            raise wire.StreamError("a recovery of another migration connected")
        self._set_status(MigrationStatus.POSTCOPY_RECOVER, None)
        assert loader.present is not None
        held = postcopy.encode_bitmap(wire.Rec.RECEIVED, loader.present.present_bits())
        conn.sendall(held)
        rec = wire.read_record(conn, wire.MAX_JSON)
        if rec is None or rec[0] != wire.Rec.RESUME:
            raise wire.StreamError("the source did not resume")
        conn.settimeout(None)
        self._set_status(MigrationStatus.POSTCOPY_ACTIVE, None)
        return loader.resume(conn)

    def _take_guest(self, runstate: RunState) -> None:
        """QEMU's process_incoming_migration_bh: a running source means run here too (unless
        -S or `stop`), otherwise take over the source's state."""
        if runstate is RunState.RUNNING:
            if self._autostart():
                self.vm.start()
            else:
                self.vm.set_state(RunState.PAUSED)
        else:
            self.vm.set_state(runstate)

    def _succeed(self, conn: socket.socket, runstate: RunState) -> None:
        """The digest matched: the guest may run here only once the source has committed
        (in postcopy it did at the switch, and the guest runs already; a stream without a
        return path, exec:, has nobody to commit: its digest is all)."""
        assert self._loader is not None
        if self._loader.present is not None:
            self._set_status(MigrationStatus.COMPLETED, None)
            try:
                self._loader.send(wire.json_record(wire.Rec.ACK, {}))
            except OSError as exc:
                log.warning("could not confirm the end of postcopy to the source: %s", exc)
            return
        lost = None if self.listener.one_way else self._await_go(conn)
        if lost is not None:  # the source keeps the guest: this side gives it up for good
            self._fail(
                conn,
                f"the source did not confirm the switchover ({lost}); "
                "the guest stays on the source",
            )
            return
        self._take_guest(runstate)
        self._set_status(MigrationStatus.COMPLETED, None)
        if self.listener.one_way:
            return
        try:
            conn.sendall(wire.json_record(wire.Rec.ACK, {}))
        except OSError as exc:  # the source then says the guest may be running here: it is
            log.warning("could not confirm the switchover to the source: %s", exc)

    def _await_go(self, conn: socket.socket) -> str | None:
        """Send READY and wait for the source's GO: None once it came, else what went wrong."""
        conn.settimeout(self._switchover_timeout)
        try:
            conn.sendall(wire.json_record(wire.Rec.READY, {}))
            rec = wire.read_record(conn, wire.MAX_JSON)
        except TimeoutError:
            return f"no answer within {self._switchover_timeout:g} s"
        except (wire.StreamError, OSError) as exc:
            return str(exc) if isinstance(exc, wire.StreamError) else (exc.strerror or str(exc))
        if rec is None:
            return "the connection closed"
        if rec[0] != wire.Rec.GO:
            return f"record 0x{rec[0]:02x} instead of GO"
        return None

    def _fail(self, conn: socket.socket, reason: str, *, listen: bool = True) -> None:
        """Give the migration up; ``listen``: wait for another (not once the guest ran here)."""
        with self._lock:
            self._status, self._error = MigrationStatus.FAILED, self.failure_prefix + reason
        try:
            conn.sendall(wire.json_record(wire.Rec.NACK, {"error": reason}))
        except OSError:
            pass
        if listen and not self._closing.is_set():
            self._on_failed(self, reason)  # listens again first: whoever sees "failed" may retry
        self._on_event("MIGRATION", {"status": str(MigrationStatus.FAILED)})


class StreamLoader:
    """Parses one migration stream into guest RAM and checks its digest (no threads of its own
    but the decompress workers); raises StreamError or OSError on any fault."""

    def __init__(
        self,
        ram: GuestRam,
        local_config: Callable[[], tuple[wire.StreamConfig, int]],
        *,
        pristine: bool,
        warn: Callable[[str], None] = lambda _msg: None,
        accept: Callable[[], socket.socket | None] = lambda: None,
        on_run: Callable[[RunState], None] = lambda _state: None,
        approval: Approval | None = None,
        vcpus: int = 1,
    ) -> None:
        """``accept`` yields the next connection to the listener (for multifd channels);
        ``on_run`` starts the guest at postcopy's switch; ``vcpus``: the guest's, which may
        fault on postcopy's missing pages."""
        self.ram = ram
        self._vcpus = vcpus
        self._on_run = on_run
        self._approval = approval or Approval()
        self._switchover_ack = False  # the source waits for our SWITCHOVER_ACK
        self._postcopy = False  # the source has postcopy-ram on
        self._discard: npt.NDArray[np.bool_] | None = None
        self.present: postcopy.PresentMap | None = None  # after the switch
        self.verified_digest: bool | None = None  # the digest's verdict, once DONE came
        self._conn: socket.socket | None = None
        self.session = ""  # the source's, which a recovery must bring
        self._preempt: socket.socket | None = None  # postcopy-preempt's channel
        self._preempt_reader: threading.Thread | None = None
        self._relaxed = False  # the switch interval given back
        self._send_lock = threading.Lock()  # the vCPU's page requests and the verdict
        self._local_config = local_config
        self._accept = accept
        self._warn = warn
        self._multifd: MultifdReceiver | None = None
        self._channels: list[socket.socket] = []  # closed by close(), whatever became of them
        self._eos = 0
        self._pool: DecompressPool | None = None
        self._pending: deque[tuple[npt.NDArray[np.intp], Future[list[int]]]] = deque()
        self._digest = wire.PageDigest(ram.pages)
        # Pages that may hold data; the others are known zero and need no clearing.
        self._written = np.zeros(ram.pages, bool) if pristine else np.ones(ram.pages, bool)
        self._max_pending = 4

    @property
    def conn(self) -> socket.socket | None:
        return self._conn

    def send(self, data: bytes) -> None:
        """A record to the source on the main connection (requests come from the vCPU)."""
        assert self._conn is not None
        with self._send_lock:
            self._conn.sendall(data)

    def close(self) -> None:
        """End the workers and channel threads and close the channels (threads first).
        A paused postcopy keeps its page table: the guest still runs on it."""
        if self.present is not None and not self._relaxed:
            self._relaxed = True
            postcopy.PROMPT_THREADS.release()
        if self._preempt is not None:
            shutdown(self._preempt)
            if self._preempt_reader is not None:
                self._preempt_reader.join(wire.SWITCHOVER_TIMEOUT_S)
        if self._pool:
            self._pool.close()
        if self._multifd:
            self._multifd.close()
        for sock in self._channels:
            sock.close()

    def load(self, conn: socket.socket, then: Callable[[], None] = lambda: None) -> RunState:
        """Read the whole stream; returns the source's run state once the digest matched.

        ``then`` runs once every connection of the stream is in (QEMU closes its listener).
        """
        self._conn = conn
        head = wire.read_exact(conn, wire.HEADER.size)
        if head is None:
            raise wire.StreamError("migration stream ended before its header")
        wire.check_header(bytes(head))
        self._configure(conn)
        then()
        if self._switchover_ack:  # QEMU 11.1 acks at the return path's opening, after setup
            self._approval.armed(self.send)
        return self._records(conn)

    def resume(self, conn: socket.socket) -> RunState:
        """A recovered postcopy: the rest of the stream on a new connection; the pages the
        vCPUs wait for are asked for again (their first requests may have been lost)."""
        with self._send_lock:
            self._conn = conn
        prioritize(conn)
        assert self.present is not None
        waiting = self.present.outstanding()
        if len(waiting):
            self.send(postcopy.encode_request(waiting))
        return self._records(conn)

    def _records(self, conn: socket.socket) -> RunState:
        while True:
            # After the switch the background's batches are placed in C without the GIL,
            # which the vCPU needs to go on once its page is in.
            rec = (
                wire.read_record_head(conn)
                if self.present is None
                else self.present.serve(conn, True)
            )
            if rec is None:
                raise wire.StreamError("migration stream ended before completion")
            kind, length = rec
            if kind == wire.Rec.BATCH:
                self._receive_batch(conn, length)
            elif kind == wire.Rec.EOS:
                if length:
                    raise wire.StreamError("malformed end-of-section record")
                self._drain()
                self._eos += 1
                if self._multifd:
                    self._multifd.wait_sync(self._eos)
            elif kind == wire.Rec.DONE:
                self._approval.disarm()
                return self._verify(wire.read_body(conn, length, wire.MAX_JSON))
            elif kind == wire.Rec.COPY and self.present is None:
                self._copy_pages(conn, length)
            elif kind == wire.Rec.DISCARD and self._postcopy and self._discard is None:
                self._drain()
                body = wire.read_body(conn, length, wire.MAX_RECORD)
                self._discard = postcopy.decode_bitmap(body, self.ram.pages)
            elif kind == wire.Rec.RUN and self._discard is not None and self.present is None:
                self._switch(wire.read_body(conn, length, wire.MAX_JSON))
            else:
                raise wire.StreamError(f"unknown record type 0x{kind:02x}")

    def _configure(self, conn: socket.socket) -> None:
        rec = wire.read_record(conn, wire.MAX_JSON)
        if rec is None:
            raise wire.StreamError("migration stream ended before its configuration")
        if rec[0] != wire.Rec.CONFIG:
            raise wire.StreamError(f"expected the configuration section, got 0x{rec[0]:02x}")
        remote = wire.StreamConfig.from_json(wire.parse_json(rec[1], "configuration"))
        local, threads = self._local_config()
        problem = remote.mismatch(local)
        if problem:
            raise wire.StreamError(problem)
        if remote.uuid and not local.uuid:  # QEMU's vmstate_uuid_post_load
            log.warning("UUID is received %s, but local uuid isn't set", remote.uuid)
            self._warn(f"warning: UUID is received {remote.uuid}, but local uuid isn't set")
        self._postcopy = remote.postcopy
        self._switchover_ack = remote.switchover_ack
        self.session = remote.session
        if remote.multifd_channels:
            self._connect_channels(remote)
        if remote.preempt and local.postcopy and local.preempt:
            self._preempt = self._channel(remote, postcopy.PREEMPT_CHANNEL)
            self._preempt.sendall(wire.record(wire.Rec.READY))  # taken: the source may use it
        elif remote.preempt:
            self._decline_channel()
        if remote.compress:
            self._pool = DecompressPool(CODECS[remote.compress_method], threads, self.ram)
            self._max_pending = 4 * threads

    def _connect_channels(self, remote: wire.StreamConfig) -> None:
        if remote.multifd_compression not in METHODS:
            raise wire.StreamError(f"multifd: unknown compression {remote.multifd_compression}")
        socks: list[socket.socket | None] = [None] * remote.multifd_channels
        for _ in socks:
            sock = self._accept()
            if sock is None:
                raise wire.StreamError("multifd: a channel did not connect")
            self._channels.append(sock)
            hello = Hello.read(sock)
            if hello.session.hex() != remote.session or not 0 <= hello.channel < len(socks):
                raise wire.StreamError("multifd: a channel of another migration connected")
            socks[hello.channel] = sock
        self._multifd = MultifdReceiver(
            self.ram, self._digest, self._written, remote.multifd_compression
        )
        self._multifd.start([s for s in socks if s is not None])

    def _decline_channel(self) -> None:
        """postcopy-preempt's connection from a source that has it, without it here: closed
        unread, as QEMU 7.2 does; the source then sends requested pages on the main stream."""
        sock = self._accept()
        if sock is None:
            raise wire.StreamError("postcopy-preempt: its channel did not connect")
        self._warn(
            "socket_accept_incoming_migration: Extra incoming migration connection; ignoring"
        )
        sock.close()

    def _channel(self, remote: wire.StreamConfig, number: int) -> socket.socket:
        """postcopy-preempt's connection, which says hello with ``number``."""
        sock = self._accept()
        if sock is None:
            raise wire.StreamError("postcopy-preempt: its channel did not connect")
        self._channels.append(sock)  # closed by close(), with the others
        hello = Hello.read(sock)
        if hello.session.hex() != remote.session or hello.channel != number:
            raise wire.StreamError("postcopy-preempt: a channel of another migration connected")
        prioritize(sock)  # what it sends: none but TCP's acknowledgements of the pages
        return sock

    def _switch(self, body: bytearray) -> None:
        """Postcopy's switch: the discarded pages (and those never sent) become missing, the
        vCPU fetches them on demand, and the guest runs."""
        assert self._discard is not None
        runstate = self._runstate(wire.parse_json(body, "postcopy run"))
        present = self.present = postcopy.PresentMap(
            self.ram, ~self._discard, self._written, self._digest.crc, self._request, self._vcpus
        )
        self.ram.fault_hook = present.fault
        assert self._conn is not None
        prioritize(self._conn)  # from now on it carries page requests
        postcopy.PROMPT_THREADS.acquire()  # released by close()
        if self._preempt is not None:
            self._preempt_reader = threading.Thread(
                target=self._read_preempt, args=(self._preempt,), name="postcopy_preempt"
            )
            self._preempt_reader.daemon = True
            self._preempt_reader.start()
        self._on_run(runstate)

    def _read_preempt(self, sock: socket.socket) -> None:
        """postcopy-preempt's channel: requested pages only, placed as they come. It ends
        with its connection; a bad record ends it too (the main stream still carries all)."""
        assert self.present is not None
        try:
            self.present.serve(sock)
            log.info("postcopy preempt channel ended: closed")
        except (OSError, wire.StreamError) as exc:
            log.info("postcopy preempt channel ended: %s", exc)

    def _request(self, pages: npt.NDArray[np.intp]) -> None:
        self.send(postcopy.encode_request(pages))

    def _receive_batch(self, conn: socket.socket, length: int) -> None:
        batch = wire.read_batch_head(conn, length, self.ram.pages)
        ram = self.ram
        zero = batch.of(wire.Kind.ZERO)
        if len(zero):
            # Like QEMU, only clear pages that may hold data: a fresh page is already zero.
            touched = zero[self._written[zero]]
            if len(touched):
                ram.page_array[touched] = 0
            self._digest.set_zero(zero)
        raw = batch.of(wire.Kind.PAGE)
        if len(raw):
            ram.prepare_writes(raw[~self._written[raw]])
            for view in ram.views(raw):
                wire.recv_into(conn, view)
            self._written[raw] = True
            self._digest.crc[raw] = ram.crc_pages(raw)
        deltas = batch.of(wire.Kind.XBZRLE)
        if len(deltas):
            self._apply_deltas(conn, deltas, batch.clens)
        comp = batch.of(wire.Kind.COMPRESSED)
        if len(comp):
            if self._pool is None:
                raise wire.StreamError("Received an unexpected compressed page")
            payload = memoryview(wire.read_body(conn, int(batch.clens.sum()), wire.MAX_RECORD))
            sizes = batch.clens.tolist()
            bounds = np.concatenate(
                ([0], np.cumsum(batch.clens)[CHUNK - 1 :: CHUNK], [len(payload)])
            )
            self._written[comp] = True
            for k, i in enumerate(range(0, len(comp), CHUNK)):
                part, segments = comp[i : i + CHUNK], payload[bounds[k] : bounds[k + 1]]
                future = self._pool.decompress(part, segments, sizes[i : i + CHUNK])
                self._pending.append((part, future))
            while len(self._pending) > self._max_pending:
                self._collect()

    def _copy_pages(self, conn: socket.socket, length: int) -> None:
        """Duplicates: each page takes what its source page holds here, and its CRC (the
        source's own CRC of the page, in its digest, must agree)."""
        pages, sources = wire.read_copies(conn, length, self.ram.pages)
        self._drain()
        ram = self.ram
        ram.prepare_writes(pages[~self._written[pages]])
        ram.page_array[pages] = ram.page_array[sources]
        self._written[pages] = True
        self._digest.crc[pages] = self._digest.crc[sources]

    def _apply_deltas(
        self, conn: socket.socket, pages: npt.NDArray[np.intp], sizes: npt.NDArray[np.intp]
    ) -> None:
        """XBZRLE pages: each delta applies to the page as this side holds it, so every copy
        still with the decompressors lands first."""
        self._drain()
        payload = memoryview(wire.read_body(conn, int(sizes.sum()), wire.MAX_RECORD))
        self._digest.crc[pages] = xbzrle.decode_into(
            self.ram, pages.tolist(), payload, sizes.tolist()
        )
        self._written[pages] = True

    def _collect(self) -> None:
        indices, future = self._pending.popleft()
        self._digest.crc[indices] = future.result()  # re-raises the worker's StreamError

    def _drain(self) -> None:
        while self._pending:
            self._collect()

    @staticmethod
    def _runstate(obj: dict[str, Any]) -> RunState:
        try:
            return RunState(obj["runstate"])
        except (KeyError, ValueError) as exc:
            raise wire.StreamError("completion section is malformed") from exc

    def _verify(self, body: bytearray) -> RunState:
        self._drain()
        done = wire.parse_json(body, "completion")
        runstate = self._runstate(done)
        present = self.present
        if present is not None and not present.wait_complete(wire.SWITCHOVER_TIMEOUT_S):
            raise wire.StreamError(f"postcopy: {present.missing} pages never arrived")
        if "digest" not in done:
            raise wire.StreamError("completion section is malformed")
        self.verified_digest = str(done["digest"]) == self._digest.hexdigest()
        if not self.verified_digest:
            raise wire.StreamError(
                "RAM digest mismatch: destination memory differs from the source"
            )
        self.ram.fault_hook = None  # every page is present: writes need no check
        return runstate
