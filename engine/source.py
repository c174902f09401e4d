"""The outgoing migration thread: QEMU's precopy algorithm over a real socket.

setup → active: connect, send header and configuration, mark every page dirty, start the
  dirty log. Iterate: send dirty pages in batches for ≤50 ms or until the 100 ms window's
  byte budget is spent, then EOS; every ≥100 ms re-measure bandwidth and the threshold
  (bandwidth × downtime-limit); sync the dirty log only when what is left fits the threshold.
  When, after a sync, it still fits: stop the VM, send the rest unthrottled and the digest
  (the downtime, as QEMU counts it), then the completion handshake before reporting
  completed (also downtime with return-path). Cancel and errors restart the VM until the
  source commits the switchover (GO); after that it never restarts by itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt
from zlib_ng import zlib_ng

from engine import postcopy, wire
from engine.background import CopyBeforeWrite
from engine.command import CommandChannel
from engine.compression import CHUNK, CODECS, CompressedChunk, CompressPool
from engine.dedupe import Dedupe
from engine.errors import MigrationError
from engine.file_stream import FileSink
from engine.guest import PAGE_SIZE, GuestRam
from engine.multifd import METHODS, Hello, MultifdSender
from engine.outgoing_status import OutgoingStatus
from engine.params import MigrationConfig
from engine.policy import PERIOD_S as POLICY_PERIOD_S
from engine.policy import AdaptivePolicy, PolicyInfo
from engine.state import MigrationStatus, RunState
from engine.stats import SourceStats, now_ms
from engine.switchover_ack import AckReader
from engine.transport import (
    Address,
    Link,
    RateLimiter,
    connect,
    prioritize,
    send_buffers,
    shutdown,
)
from engine.vm import Vm
from engine.xbzrle import MISS, OVERFLOW, PageCache

log = logging.getLogger(__name__)
# Pages per record without compression: 1 MiB, or 4 MiB (the wire's limit) when nothing caps
# the stream below BIG_BATCH_RATE, since 1 MiB records cost the destination ~30% more CPU per
# byte (Python per record); a capped stream keeps the finer pace of 1 MiB records.
RAW_BATCH = 256
BIG_BATCH_RATE = 40 * wire.MAX_BATCH * PAGE_SIZE  # bytes/s: 4 such records per 100 ms window
# Pages scanned per step when only non-zero ones cost much (compress, multifd): zero pages go
# in one record; fewer steps keep the migration thread ahead of the workers on sparse guests.
SCAN_BATCH = wire.MAX_BATCH
SCAN_WINDOW = 32768  # bitmap bits searched per step
MAX_WAIT_S = 0.050  # QEMU's MAX_WAIT: one iteration sends for at most this long
# What QEMU's savevm reports when the RAM section's iteration fails on a broken stream
# (RAM is section 2 in 7.2's pc machine, 1 in 11.1's; -5 is the -EIO its stream errors become).
RAM_ITERATE_FAILED = "failed to save SaveStateEntry with id(name): {}(ram): -5"
# A file: stream (11.1, no mapped-ram) with return-path or postcopy-ram: QEMU's return-path
# reader fails on the write-only file.
RETURN_PATH_ON_FILE = "Unable to read from file: Bad file descriptor"
# No byte sent for this long while active: a warning, once per stall (QEMU has no stall status).
STALL_WARNING_S = 30.0
# QEMU's migrate_fd_cancel acts in every running state; ours until GO is sent.
CANCELLABLE = frozenset(
    {
        MigrationStatus.SETUP,
        MigrationStatus.ACTIVE,
        MigrationStatus.PRE_SWITCHOVER,
        MigrationStatus.DEVICE,
    }
)
# How long an idle source waits for the switchover ACK before it syncs again (QEMU's rate
# period, BUFFER_DELAY).
ACK_WAIT_S = 0.1
CANCEL_WAIT_S = 5.0  # how long a cancel in postcopy waits for the migration thread's end
NACK_WAIT_S = 0.5  # after a broken stream, how long the destination's reason may take
# What a source in postcopy-paused has and has not (logged: QEMU's stderr has one line).
PAUSED_SOURCE = (
    "the guest runs on the destination and what it wrote there is not here, so it cannot "
    "restart on this side; resume with migrate_recover on the destination, then migrate -r "
    "here (if the destination died, the guest is lost)"
)

log = logging.getLogger(__name__)


def _entry(name: str) -> Any:
    """A setting read from the capability or parameter ``name`` of engine/params.py."""
    return field(metadata={"entry": name})


@dataclass(frozen=True)
class OutgoingSettings:
    """Parameters and capabilities as they were when `migrate` ran (QEMU snapshots these too)."""

    compress: bool = _entry("compress")
    compress_method: str = _entry("x-compress-method")
    compress_level: int = _entry("compress-level")
    compress_threads: int = _entry("compress-threads")
    compress_wait_thread: bool = _entry("compress-wait-thread")
    auto_converge: bool = _entry("auto-converge")
    throttle_trigger_threshold: int = _entry("throttle-trigger-threshold")
    cpu_throttle_initial: int = _entry("cpu-throttle-initial")
    cpu_throttle_increment: int = _entry("cpu-throttle-increment")
    max_cpu_throttle: int = _entry("max-cpu-throttle")
    return_path: bool = _entry("return-path")
    pause_before_switchover: bool = _entry("pause-before-switchover")
    compress_auto: bool = _entry("x-compress-auto")  # engine/policy.py steers compression
    xbzrle: bool = _entry("xbzrle")
    multifd_compression: str = _entry("multifd-compression")
    tls_creds: str = _entry("tls-creds")  # qemu-hmp has no TLS objects: any id is refused
    validate_uuid: bool = _entry("validate-uuid")
    zero_copy_send: bool = _entry("zero-copy-send")
    background_snapshot: bool = _entry("background-snapshot")
    zero_page_detection: str = _entry("zero-page-detection")  # none, legacy or multifd
    postcopy: bool = _entry("postcopy-ram")
    preempt: bool = _entry("postcopy-preempt")  # requested pages on a channel of their own
    release_ram: bool = _entry("release-ram")
    switchover_ack: bool = _entry("switchover-ack")  # 11.1: wait for the destination's ACK
    multifd_channels: int = 0  # 0: the multifd capability is off
    uuid: str = ""  # sent for the destination to check: -uuid, with validate-uuid on
    multifd_level: int = 1  # multifd-zlib-level or multifd-zstd-level, by the compression
    report_failure: bool = True  # the release writes a failure's error to stderr
    failing_state: bool = False  # the release announces `failing` before `failed`
    announce_every_sync: bool = True  # the setup's and the final sync are MIGRATION_PASS too
    device_at_switchover: bool = False  # the stop for the switchover goes active → device
    report_stream_failure: bool = False  # ... and the error of a stream that broke once open
    ram_section_id: int = 2  # in savevm's line for a RAM iteration that failed
    ram_setup_failed: str = ""  # the error of a RAM setup that failed ("": the write's)

    @classmethod
    def from_config(cls, config: MigrationConfig) -> OutgoingSettings:
        values: dict[str, Any] = {
            f.name: config.value(f.metadata["entry"]) for f in fields(cls) if f.metadata
        }
        level = METHODS[values["multifd_compression"]].level
        return cls(
            **values,
            multifd_channels=multifd_channels(config),
            multifd_level=int(config.param(level)) if level else 1,
            report_failure=config.table.report_failures,
            failing_state=config.table.failing_state,
            announce_every_sync=config.table.announce_every_sync,
            device_at_switchover=config.table.device_at_switchover,
            report_stream_failure=config.table.report_stream_failures,
            ram_section_id=config.table.ram_section_id,
            ram_setup_failed=config.table.ram_setup_failed,
        )


def _dedupes(s: OutgoingSettings) -> bool:
    """Whether duplicates go as COPY records (engine/dedupe.py): with multifd compression,
    where a copy spares compressing the page at both ends. Uncompressed on loopback the scan
    cost the source more CPU (~+100 ms for the bench image) than the 30 MB it spared; 7.2's
    zero-page detection and neither postcopy nor a background snapshot (their streams have
    no barrier of the kind a COPY needs)."""
    return (
        s.multifd_compression != "none"
        and s.zero_page_detection == "legacy"
        and not (s.postcopy or s.background_snapshot)
    )


def multifd_channels(config: MigrationConfig) -> int:
    """multifd-channels while the multifd capability is on; 0 (no channels) otherwise."""
    return int(config.param("multifd-channels")) if config.capability("multifd") else 0


class Cancelled(Exception):
    pass


class Quit(Exception):
    """The endpoint quits while a postcopy migration is paused: nothing more to report."""


class StallWatch(threading.Thread):
    """Reports a stall once: no byte sent for ``after_s`` while the migration is active.

    QEMU has no stall status (``info migrate`` keeps its layout), so the warning goes where
    QEMU's warn_report would, the machine's report path, and to the log. It looks CHECKS
    times per ``after_s``, so a stall is reported between ``after_s`` and 1.25 × ``after_s``
    into it, and again only once bytes have moved in between.
    """

    CHECKS = 4

    def __init__(
        self,
        progress: Callable[[], int],
        active: Callable[[], bool],
        after_s: float,
        report: Callable[[str], None],
    ) -> None:
        super().__init__(name="migration_watch", daemon=True)
        self._progress = progress  # bytes sent so far
        self._active = active
        self._after = after_s
        self._report = report
        self._ended = threading.Event()

    def run(self) -> None:
        seen, since, warned = self._progress(), time.monotonic(), False
        while not self._ended.wait(self._after / self.CHECKS):
            now, sent = time.monotonic(), self._progress()
            if sent != seen or not self._active():
                seen, since, warned = sent, now, False
            elif not warned and now - since >= self._after:
                warned = True
                log.warning("migration: no progress for %g s", self._after)
                self._report(f"warning: migration: no progress for {self._after:g} s")

    def end(self) -> None:
        self._ended.set()
        self.join()


@dataclass
class _InFlight:
    """Non-zero pages with the compress workers, to be sent as one record when done."""

    indices: npt.NDArray[np.intp]
    future: Future[CompressedChunk]


class OutgoingMigration(OutgoingStatus, threading.Thread):
    def __init__(
        self,
        addr: Address,
        ram: GuestRam,
        vm: Vm,
        settings: OutgoingSettings,
        param: Callable[[str], int],
        report: Callable[[str], None],
        on_event: Callable[[str, dict[str, Any]], None],
        switchover_timeout: float = wire.SWITCHOVER_TIMEOUT_S,
        *,
        stall_warning_s: float = STALL_WARNING_S,
        sink: FileSink | None = None,
    ) -> None:
        """``sink``: a `file:` URI's, opened by the machine (its errors are migrate's)."""
        super().__init__(name="live_migration", daemon=True)
        self._switchover_timeout = switchover_timeout
        self._on_event = on_event  # MIGRATION / MIGRATION_PASS, filtered by the machine
        self.addr = addr
        self.ram = ram
        self.vm = vm
        self.settings = settings
        self._param = param  # live parameter reads: max-bandwidth, downtime-limit
        self._report = report
        self._stall_warning_s = stall_warning_s
        self._lock = threading.Lock()
        self._status = MigrationStatus.SETUP
        self._error: str | None = None
        self._cancel = threading.Event()  # not ``_stop``: Thread.join calls its own _stop()
        self._quitting = False
        self._done = threading.Event()
        # pause-before-switchover: set by `migrate_continue pre-switchover`, a cancel or quit.
        self._continue = threading.Event()
        self._phase = MigrationStatus.ACTIVE  # QEMU's current_active_state: active, then device
        self._connected = threading.Event()  # set once the connection is up or has failed
        self._sock: socket.socket | None = None
        # The thread waits on the socket (a full send buffer, a reply): only a shutdown ends
        # that wait. Otherwise a cancel leaves the socket to the thread, which stops at the
        # next record, so the destination sees the stream end between two records.
        self._blocked = False
        # exec: the command the stream goes to; file: (11.1, no mapped-ram) the file's sink
        self._command: CommandChannel | FileSink | None = sink
        self.stats = SourceStats(total=ram.size, compress=settings.compress)
        self._rate_param = "max-bandwidth"  # max-postcopy-bandwidth once postcopy runs
        self._limiter = RateLimiter(lambda: param(self._rate_param))
        self._link = Link(lambda: param("x-link-bandwidth"))
        self._bitmap = np.ones(ram.pages, dtype=bool)
        self._dirty_pages = ram.pages
        self._cursor = 0
        self._pool: CompressPool | None = None
        self._multifd: MultifdSender | None = None
        self._dedupe: Dedupe | None = None  # duplicate pages go as COPY (multifd)
        self._policy: AdaptivePolicy | None = None
        self._policy_due = 0.0
        self._inflight: deque[_InFlight] = deque()
        self._cache: PageCache | None = None  # the xbzrle capability's page cache
        self._round_done = False  # the first pass over RAM is over: xbzrle may start
        self._last_stage = False  # the vCPUs are stopped: the cache is read, not updated
        self._digest = wire.PageDigest(ram.pages)
        self._vm_was_running = False
        # True once GO may have reached the destination: only its NACK lets the guest run here.
        self._handed_over = False
        self._dirty_rate_high = 0
        self._start_postcopy = threading.Event()  # migrate_start_postcopy
        self._in_postcopy = False  # the destination runs the guest; pages go on demand
        self._resumed = threading.Event()  # a postcopy-paused migration may go on (or quit)
        self._attempted = threading.Event()  # migrate -r's connect succeeded or was reported
        self._return_path: postcopy.ReturnPath | None = None
        self._ack: AckReader | None = None  # switchover-ack's reader of the destination's ACK
        self._ack_wait = threading.Event()  # ends an idle wait for it: the ACK, a cancel
        self._requests = postcopy.PageRequests(ram.pages, self._limiter.wake)
        self._prior = RunState.RUNNING  # the run state the destination takes over
        self._resume_addr = addr
        self._session = ""
        self._preempt: socket.socket | None = None  # postcopy-preempt's channel
        self._bitmap_lock = threading.Lock()
        # postcopy-preempt: the pages the preempt channel may still carry (the switch's
        # DISCARD, each once), whether or not the background stream has them in flight.
        self._urgent_once = np.zeros(0, dtype=bool)
        # Cleared, postcopy's background scan waits (requests still go): tests hold it to see
        # requested pages overtake it. Set by default.
        self.background = threading.Event()
        self.background.set()

    # -- the monitor's side ------------------------------------------------------------------
    def cancel(self) -> None:
        """QEMU's migrate_cancel: → cancelling, and shut the streams so nothing blocks.

        Once the switchover is committed there is nothing to cancel: the guest may already run
        on the destination, so it must not restart here. Postcopy is QEMU 7.2's exception: it
        cancels (the guest stays paused here, the destination pauses with what it has).
        """
        with self._lock:
            in_postcopy = self._status is MigrationStatus.POSTCOPY_ACTIVE
            paused = self._status is MigrationStatus.POSTCOPY_PAUSED
            if not (in_postcopy or paused) and (
                self._handed_over or self._status not in CANCELLABLE
            ):
                return
            self._status = MigrationStatus.CANCELLING
        self._on_event("MIGRATION", {"status": str(MigrationStatus.CANCELLING)})
        if paused:  # QEMU 7.2 stays in cancelling: nothing runs to end the paused migration
            return
        with self._lock:
            self._cancel.set()
            blocked = self._blocked
        self._continue.set()  # QEMU's cancel posts the pause semaphore too
        self._ack_wait.set()
        self._end_pacing()
        if blocked or in_postcopy:  # postcopy's return path reads the socket: it must end too
            shutdown(self._sock)
        shutdown(self._preempt)
        if self._multifd:
            self._multifd.hang_up()
        if in_postcopy:  # QEMU's ends at once there: `info migrate` next says cancelled
            self._done.wait(CANCEL_WAIT_S)

    def start_postcopy(self) -> None:
        """migrate_start_postcopy: switch at the migration thread's next step (QEMU's
        start_postcopy flag); a migration that converges first completes as precopy."""
        self._start_postcopy.set()
        self._limiter.wake()

    def continue_switchover(self) -> None:
        """`migrate_continue pre-switchover` (the machine checked the state)."""
        self._continue.set()

    def parameters_changed(self) -> None:
        """A live `migrate_set_parameter`: waits on the old rates re-time at the new ones, and
        a new xbzrle-cache-size shows at once (the migration thread swaps the cache itself)."""
        self._limiter.wake()
        self._link.wake()
        if self._cache is not None:
            self.stats.xbzrle_cache_size = self._param("xbzrle-cache-size")

    def close(self) -> None:
        """Quit: cancel, or end the wait for the destination's ACK (the guest stays paused).
        A quitting QEMU just exits: no cancel, so nothing to report."""
        self._quitting = True
        self.cancel()
        shutdown(self._sock)
        self._resumed.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # -- the thread --------------------------------------------------------------------------
    def run(self) -> None:
        watch = StallWatch(
            lambda: self.stats.stream_bytes,
            lambda: self._status is MigrationStatus.ACTIVE,
            self._stall_warning_s,
            self._report,
        )
        watch.start()
        # The machine announced setup before it started this thread, as QEMU's migrate_init.
        try:
            self._sock = self._open()
            if self.settings.tls_creds:  # never fall back to plain text when TLS is asked for
                raise MigrationError(f"No TLS credentials with id '{self.settings.tls_creds}'")
            if isinstance(self._command, FileSink) and (
                self.settings.return_path or self.settings.postcopy
            ):  # QEMU 11.1 opens a return path on the file, which its reader cannot read
                self._report(RETURN_PATH_ON_FILE)
                raise MigrationError(RETURN_PATH_ON_FILE)
            self._connected.set()
            if self._cancel.is_set():
                raise Cancelled
            self._setup()
            if self.settings.background_snapshot:
                self._background()
            elif self._precopy():
                self._postcopy()
            else:
                self._complete()
        except Cancelled:
            self._finish(MigrationStatus.CANCELLED, None)
        except Quit:
            self._finish(self._status, None)
        except MigrationError as exc:
            self._finish(MigrationStatus.FAILED, exc.desc, exc.report())
        except OSError as exc:
            if self._cancel.is_set():  # the cancel broke a blocked send: QEMU says so too
                # (in postcopy its threads part on the cancel before any send fails)
                if not self._quitting and not self._in_postcopy:
                    self._report(self._write_error(exc))
                self._finish(MigrationStatus.CANCELLED, None)
            else:
                self._finish(
                    MigrationStatus.FAILED, self._io_error(exc), broke=self._connected.is_set()
                )
        except Exception as exc:  # a bug must still leave the VM running and the status sane
            log.exception("outgoing migration to %s", self.addr.uri())
            self._finish(MigrationStatus.FAILED, f"internal error: {exc!r}")
        else:
            self._finish(MigrationStatus.COMPLETED, None)
        watch.end()

    def _io_error(self, exc: OSError) -> str:
        """QEMU's text for a broken stream: errno as the kernel gave it. A peer that died with
        nothing unread sent FIN, so our next write met its reset in CLOSE_WAIT: EPIPE, "Broken
        pipe"; one that died with bytes unread sent RST at once: "Connection reset by peer"."""
        verdict = None if self._command else self._read_nack()  # a command cannot answer
        if verdict:
            return verdict
        if self._status is MigrationStatus.ACTIVE and self.vm.state is not RunState.FINISH_MIGRATE:
            # In QEMU the RAM iteration fails first, with the stream's -EIO, and savevm says so.
            self._report(RAM_ITERATE_FAILED.format(self.settings.ram_section_id))
        elif self._status is MigrationStatus.SETUP and self.settings.ram_setup_failed:
            # 11.1: RAM setup's error is the migration's, and its thread still goes active
            # before it looks at the stream's error (recorded: setup, active, failing, failed)
            self._set_status(MigrationStatus.SETUP, MigrationStatus.ACTIVE)
            return self.settings.ram_setup_failed
        return self._write_error(exc)

    def _write_error(self, exc: OSError) -> str:
        """QEMU's text for a write that failed, naming its channel."""
        return (
            f"Unable to write to {self._command.name if self._command else 'socket'}: "
            f"{exc.strerror or exc}"
        )

    def _open(self) -> socket.socket:
        """The stream's socket: connected to the destination, or an exec: command's."""
        if self._command is not None:  # a file's sink
            return self._command.sock
        if self.addr.kind != "exec":
            return connect(self.addr)
        self._command = CommandChannel(self.addr.command, outgoing=True)
        return self._command.sock

    def _set_status(self, old: MigrationStatus, new: MigrationStatus) -> None:
        """QEMU's migrate_set_state: change only from ``old`` (a cancel may have won)."""
        with self._lock:
            if self._status is not old:
                return
            self._status = new
        self._on_event("MIGRATION", {"status": str(new)})

    def _setup(self) -> None:
        s = self.settings
        if s.compress:
            self._pool = CompressPool(
                CODECS[s.compress_method], s.compress_level, s.compress_threads, self.ram
            )
            if s.compress_auto:
                self._policy = AdaptivePolicy(max(1, s.compress_level), 9, self._pool.active)
        if s.xbzrle:
            self._cache = PageCache(self._param("xbzrle-cache-size"))
            self.stats.xbzrle_cache_size = self._cache.size
        config = wire.StreamConfig(
            page_size=PAGE_SIZE,
            ram_size=self.ram.size,
            compress=s.compress,
            compress_method=s.compress_method,
            multifd_channels=s.multifd_channels,
            multifd_compression=s.multifd_compression,
            session=os.urandom(16).hex(),
            uuid=s.uuid,
            postcopy=s.postcopy,
            preempt=s.postcopy and s.preempt,
            switchover_ack=s.switchover_ack and s.return_path,
        )
        self._session = config.session
        self.stats.add_stream(
            self._send([wire.header(), wire.json_record(wire.Rec.CONFIG, config.to_json())])
        )
        if s.multifd_channels:
            socks: list[socket.socket] = []
            try:
                for i in range(s.multifd_channels):
                    socks.append(self._open_channel(i, config.session))
            except MigrationError as exc:  # the destination may have said why it hung up
                for sock in socks:
                    sock.close()
                raise MigrationError(self._read_nack() or exc.desc) from exc
            if _dedupes(s):
                self._dedupe = Dedupe(self.ram, self._bitmap)
            self._multifd = MultifdSender(
                self.ram,
                self._digest,
                socks,
                s.multifd_compression,
                s.multifd_level,
                self._multifd_sent,
                detect_zero=s.zero_page_detection == "multifd",
                zero_copy=s.zero_copy_send,
                fallback=self.stats.zero_copy_fallback,
                confirm=self._dedupe.confirm if self._dedupe else None,
            )
        if config.preempt:  # after the multifd channels: the destination takes them in order
            self._preempt = self._preempt_channel(config.session)
        if config.switchover_ack:  # after the channels' setup, which may read a NACK itself
            assert self._sock is not None
            self._ack = AckReader(self._sock, self._ack_wait.set)
            self._ack.start()
        if not s.background_snapshot:  # a snapshot takes each page once: no dirty log
            self.ram.start_dirty_log()
            # QEMU's first sync at setup: the bitmap starts all-ones
            self._sync(announce=s.announce_every_sync)
        self.stats.setup_done(self._param("downtime-limit"))
        if not s.background_snapshot:  # a snapshot goes active as it starts tracking
            self._set_status(MigrationStatus.SETUP, MigrationStatus.ACTIVE)

    def _preempt_channel(self, session: str) -> socket.socket | None:
        """postcopy-preempt's connection, once the destination said it takes it (READY); None
        when it closed it (it has no postcopy-preempt: requested pages use the main stream)."""
        sock = self._open_channel(postcopy.PREEMPT_CHANNEL, session)
        sock.settimeout(self._switchover_timeout)
        try:
            rec = wire.read_record(sock, 0)
        except TimeoutError:
            sock.close()
            raise MigrationError(
                "postcopy-preempt: the destination did not take its channel"
            ) from None
        except OSError:  # closed unread: a reset
            rec = None
        if rec is not None and rec[0] == wire.Rec.READY:
            sock.settimeout(None)
            prioritize(sock)
            return sock
        sock.close()
        if rec is not None:
            raise MigrationError(f"postcopy-preempt: unexpected record 0x{rec[0]:02x}")
        log.info("the destination has no postcopy-preempt: requested pages use the main stream")
        return None

    def _open_channel(self, index: int, session: str) -> socket.socket:
        sock = connect(self.addr)
        sock.sendall(Hello(index, bytes.fromhex(session)).encode())
        return sock

    def _multifd_sent(self, nbytes: int, pages: int, zero: int) -> None:
        """A channel thread sent a packet (or a SYNC): transferred and multifd bytes, as QEMU's."""
        self.stats.add_multifd(nbytes, pages, zero)
        self._limiter.charge(nbytes)
        self._link.pace(nbytes)

    def _precopy(self) -> bool:
        """Iterate until what is left fits the downtime (False) or postcopy was asked for
        while it does not (True), as QEMU's migration_iteration_run decides."""
        while True:
            self._check_stop()
            pending = self._dirty_pages * PAGE_SIZE
            if pending < self.stats.threshold:
                self._sync()
                pending = self._dirty_pages * PAGE_SIZE
            if pending and pending >= self.stats.threshold:
                # Postcopy switches over too: with switchover-ack only once the ACK came (its
                # reader has then left the socket to postcopy's return path).
                if self._start_postcopy.is_set() and (
                    self._ack is None or self._ack.acked.is_set()
                ):
                    return True
                self._iterate()
            elif self._can_switchover():
                return False
            elif pending:  # it fits, but the destination has not acknowledged yet
                self._iterate()
            else:
                self._await_ack()
            self.stats.update_window(
                self._param("downtime-limit"), self._param("avail-switchover-bandwidth")
            )
            self._steer()

    def _can_switchover(self) -> bool:
        """QEMU 11.1's migration_can_switchover: no switchover-ack, its ACK came, or the
        guest is stopped (nothing then to wait for); a reader that ended without it fails."""
        ack = self._ack
        if ack is None or ack.acked.is_set() or not self.vm.running:
            return True
        if ack.failure is not None:
            self._check_stop()
            raise MigrationError(ack.failure)
        return False

    def _await_ack(self) -> None:
        """Nothing to send and no ACK yet: wait one rate period for it (or a cancel), then
        sync again, as QEMU's migration thread keeps iterating."""
        self._ack_wait.wait(ACK_WAIT_S)

    def _steer(self) -> None:
        """Every policy period, hand the adaptive policy the cap that bounds the stream."""
        policy, now = self._policy, time.monotonic()
        if policy is None or now < self._policy_due:
            return
        self._policy_due = now + POLICY_PERIOD_S
        policy.update(*self._stream_cap())

    def _stream_cap(self) -> tuple[int, str]:
        """What bounds the stream (bytes/s, 0: nothing) and its name, for the policy."""
        link = self._param("x-link-bandwidth")
        cap = 0 if self._limiter.unlimited else self._param("max-bandwidth")
        if link and (not cap or link < cap):
            return link, "x-link-bandwidth"
        return cap, "max-bandwidth" if cap else ""

    def policy_info(self) -> PolicyInfo:
        return self._policy.info() if self._policy else PolicyInfo(enabled=False)

    def _complete(self) -> None:
        self.stats.start_downtime()
        prior = self.vm.force_stop(RunState.FINISH_MIGRATE)
        self._vm_was_running = prior is RunState.RUNNING
        if self.settings.pause_before_switchover:
            self._pause_before_switchover()
        elif self.settings.device_at_switchover:
            self._set_status(MigrationStatus.ACTIVE, MigrationStatus.DEVICE)
            self._phase = MigrationStatus.DEVICE
        self._limiter.unlimited = True
        self._last_stage = True
        if self._policy:
            self._policy.stop_and_copy(*self._stream_cap())
        self._sync(announce=self.settings.announce_every_sync)
        while self._dirty_pages:
            self._send_batch()
        self._drain()
        # The destination resumes in the state the source was in (QEMU's global state).
        done = {"runstate": str(prior), "digest": self._digest.hexdigest()}
        self._send_eos()
        self.stats.add_stream(self._send([wire.json_record(wire.Rec.DONE, done)]))
        sent_all = now_ms()
        if self._command:  # a saved stream: no return path, no handshake (engine/command.py)
            self._command.finish(self._switchover_timeout)
        else:
            self._switch_over()
        # QEMU's downtime ends once everything is sent, unless the return path makes the source
        # wait for the destination; qemu-hmp always waits for the handshake's ACK, but only
        # counts that wait as downtime when return-path is on.
        self.stats.completed(None if self.settings.return_path else sent_all)

    def _background(self) -> None:
        """background-snapshot (QEMU's bg_migration_thread): stop the vCPUs just long enough
        to start copy-before-write (engine/background.py), then save every page once while
        the guest runs on; the stream holds RAM as it was at that stop. The guest keeps
        running here afterwards: a snapshot hands nothing over."""
        # As QEMU's thread holds its big lock from the stop to the restart: a cont typed once
        # the migration is active comes after tracking started, so the snapshot's instant is
        # before it (a cont in between would let stores through untracked).
        with self.vm.held():
            self._set_status(MigrationStatus.SETUP, MigrationStatus.ACTIVE)
            prior = self.vm.state
            self.stats.start_downtime()
            was_running = self.vm.stop()
            tracker = CopyBeforeWrite(self.ram)
            if was_running:
                self.vm.start()
        resumed = now_ms()
        try:
            while (batch := tracker.next_batch(RAW_BATCH)) is not None:
                self._check_stop()
                self._send_saved(*batch)
                self.stats.set_remaining(tracker.left)
                if self._limiter.exhausted():
                    self._limiter.wait_window()
        finally:
            tracker.close()
        log.info("background snapshot: %d pages copied ahead of guest stores", tracker.copied_pages)
        self._send_eos()
        done = {"runstate": str(prior), "digest": self._digest.hexdigest()}
        self.stats.add_stream(self._send([wire.json_record(wire.Rec.DONE, done)]))
        assert self._command is not None  # the machine allows snapshots to exec: only
        self._command.finish(self._switchover_timeout)
        self.stats.completed(resumed)

    def _send_saved(self, indices: npt.NDArray[np.intp], data: npt.NDArray[np.uint8]) -> None:
        """Pages as they were saved (``data``: one row per page), not as RAM holds them now."""
        zero = ~data.view(np.uint64).any(axis=1)
        raw = data[~zero]
        kinds = np.where(zero, np.uint8(wire.Kind.ZERO), np.uint8(wire.Kind.PAGE)).astype(np.uint8)
        self._digest.set_zero(indices[zero])
        self._digest.crc[indices[~zero]] = [zlib_ng.crc32(row) for row in raw]
        batch = wire.encode_batch(indices, kinds, [], [raw.reshape(-1).data])
        self.stats.add_ram(self._send(batch), self.vm.running)
        self.stats.add_pages(
            zero=int(zero.sum()), normal=len(raw), compressed=0, compressed_bytes=0, busy=0
        )

    def _pause_before_switchover(self) -> None:
        """QEMU's migration_maybe_pause: the vCPUs are stopped and nothing of the final pass
        is sent yet; wait in pre-switchover for `migrate_continue`, then go on in device.
        The destination cannot run the guest before GO, so it waits with it."""
        self._set_status(MigrationStatus.ACTIVE, MigrationStatus.PRE_SWITCHOVER)
        self._continue.wait()  # the user's to end, as in QEMU: continue, cancel or quit do
        self._check_stop()
        self._set_status(MigrationStatus.PRE_SWITCHOVER, MigrationStatus.DEVICE)
        self._phase = MigrationStatus.DEVICE

    # -- postcopy (docs/ARCHITECTURE.md, Postcopy) ---------------------------------------------
    def _postcopy(self) -> None:
        """QEMU's postcopy_start, then pages on demand and in the background until none is
        left, the digest, and the destination's verdict (its guest runs meanwhile). A broken
        stream pauses (postcopy-paused) until `migrate -r` brings a new one."""
        self._set_status(MigrationStatus.ACTIVE, MigrationStatus.POSTCOPY_ACTIVE)
        if self._status is not MigrationStatus.POSTCOPY_ACTIVE:  # a cancel came first
            raise Cancelled
        self.stats.start_downtime()
        self._prior = self.vm.force_stop(RunState.FINISH_MIGRATE)
        self._vm_was_running = self._prior is RunState.RUNNING
        self.stats.postcopy = True
        self._sync()
        self._drain()
        self._send_eos()
        # From the switch on the destination's guest may run: it never restarts here.
        postcopy.PROMPT_THREADS.acquire()  # released in _finish, as _in_postcopy says
        self._handed_over = self._in_postcopy = True
        self._urgent_once = self._bitmap.copy()
        run = wire.json_record(wire.Rec.RUN, {"runstate": str(self._prior)})
        self.stats.add_stream(
            self._send([postcopy.encode_bitmap(wire.Rec.DISCARD, self._bitmap), run])
        )
        self.stats.switched()
        self._rate_param = "max-postcopy-bandwidth"
        requests = self._requests = postcopy.PageRequests(self.ram.pages, self._limiter.wake)
        self.stats.requested = lambda: requests.count
        while True:
            try:
                self._serve()
                return
            except OSError as exc:
                if self._cancel.is_set():
                    raise
                self._pause(exc.strerror or str(exc))

    def _serve(self) -> None:
        """Requested pages first, the background scan when none waits, then DONE and the
        destination's verdict, over the current connection."""
        requests = self._requests
        assert self._sock is not None
        # postcopy-preempt: the return path's thread sends requested pages itself, on their
        # channel, at once; without it they wait for the migration thread's next step.
        urgent = self._send_requested if self._preempt else None
        rp = self._return_path = postcopy.ReturnPath(
            self._sock, self.ram.pages, requests, self._report, urgent
        )
        rp.start()
        while self._dirty_pages:
            if rp.ended.is_set():
                raise OSError(rp.error or "the return path closed")
            queued = requests.take(wire.MAX_BATCH)
            if len(queued):
                self._send_requested(queued)
            elif not self.background.is_set():
                requests.wait(postcopy.FAULT_SLICE_S)
            elif self._limiter.exhausted():
                self._limiter.wait_window(requests.pending)
            else:
                self._send_batch()
            self.stats.update_window(
                self._param("downtime-limit"), self._param("avail-switchover-bandwidth")
            )
        self._drain()  # multifd's channels sync at every EOS, though postcopy left them idle
        self._send_eos()
        with self._bitmap_lock:  # a requested page being sent on the preempt channel has its CRC
            done = {"runstate": str(self._prior), "digest": self._digest.hexdigest()}
        self.stats.add_stream(self._send([wire.json_record(wire.Rec.DONE, done)]))
        if not rp.ended.wait(self._switchover_timeout) or rp.verdict is None:
            raise OSError(rp.error or f"no answer within {self._switchover_timeout:g} s")
        if rp.verdict.kind is wire.Rec.NACK:
            raise MigrationError(rp.verdict.error)
        self.stats.completed(self.stats.switch_ms)

    def _send_requested(self, pages: npt.NDArray[np.intp]) -> None:
        """Requested pages that are still to send (others are on their way or arrived). With
        postcopy-preempt this runs on the return path's thread: the lock covers the claim and
        the CRC, so the digest at DONE includes them."""
        with self._bitmap_lock:
            pages = postcopy.distinct(pages)
            fresh = self._bitmap[pages]
            again = np.zeros(len(pages), dtype=bool)
            self._bitmap[pages[fresh]] = False
            self._dirty_pages -= int(np.count_nonzero(fresh))
            self.stats.set_remaining(self._dirty_pages)
            if self._preempt is not None and not self.settings.release_ram:
                # A page the background scan took may wait behind megabytes of the main
                # stream's buffers: it goes again, once, on the preempt channel. The guest is
                # stopped here, so both copies hold the same bytes (the destination places
                # the first); with release-ram the first send may have freed it already.
                again = self._urgent_once[pages] & ~fresh
                self._urgent_once[pages] = False
            if fresh.any():
                self._send_now(pages[fresh])
            if again.any():
                try:
                    self._send_now(pages[again])
                except OSError as exc:
                    # The main stream carries them too; a destination that got them there may
                    # be done and gone. A broken channel fails the next fresh page's send.
                    log.info("postcopy: pages sent again were not: %s", exc.strerror or exc)

    def _send_now(self, pages: npt.NDArray[np.intp]) -> None:
        """On their own channel with preempt: they do not queue behind the background."""
        self._send_plain(pages, self.ram.zero_mask(pages), busy=0, sock=self._preempt)

    def pause(self) -> bool:
        """migrate_pause: break the stream of an active postcopy (False when not in it)."""
        if self._status is not MigrationStatus.POSTCOPY_ACTIVE:
            return False
        shutdown(self._sock)
        return True

    def resume(self, addr: Address) -> bool:
        """migrate -r: reconnect a paused postcopy to ``addr`` (False when not paused)."""
        with self._lock:
            if self._status is not MigrationStatus.POSTCOPY_PAUSED:
                return False
            self._resume_addr = addr
            self._attempted.clear()
        self._resumed.set()
        return True

    def wait_attempt(self, timeout: float) -> bool:
        """Until the connect of the last `migrate -r` succeeded or its failure was reported."""
        return self._attempted.wait(timeout)

    def _pause(self, cause: str) -> None:
        """QEMU's postcopy_pause: the stream broke after the switch. Neither side holds the
        whole guest, so nothing may fail or restart here: wait for `migrate -r` (then
        reconnect, learn what the destination holds, resend the rest) or a quit."""
        log.warning("postcopy paused: %s; %s", cause, PAUSED_SOURCE)
        shutdown(self._sock)  # the return path's reader returns, then the sockets may close
        shutdown(self._preempt)
        if self._return_path:
            self._return_path.join(self._switchover_timeout)
        if self._preempt:  # a recovered stream carries requested pages itself
            self._preempt.close()
            self._preempt = None
        if self._sock:
            self._sock.close()
            self._sock = None
        with self._lock:
            paused = self._status in (
                MigrationStatus.POSTCOPY_ACTIVE,
                MigrationStatus.POSTCOPY_RECOVER,
            )
            if paused:
                self._status = MigrationStatus.POSTCOPY_PAUSED
        if paused:
            self._on_event("MIGRATION", {"status": str(MigrationStatus.POSTCOPY_PAUSED)})
            if not self._quitting:
                self._report("Detected IO failure for postcopy. Migration paused.")
        while True:
            self._resumed.wait()
            self._resumed.clear()
            if self._quitting:
                raise Quit
            try:
                self._reconnect(self._resume_addr)
                return
            except MigrationError as exc:  # no connection: still paused, as in QEMU
                self._report(exc.desc)
            except (OSError, wire.StreamError) as exc:
                log.warning("postcopy recovery failed: %s", exc)
                if self._sock:
                    self._sock.close()
                    self._sock = None
                self._set_status(MigrationStatus.POSTCOPY_RECOVER, MigrationStatus.POSTCOPY_PAUSED)
            finally:
                self._attempted.set()

    def _reconnect(self, addr: Address) -> None:
        """The recovery handshake: RECOVER with the session, the destination's bitmap of the
        pages it holds (everything else is sent again), RESUME."""
        sock = connect(addr)
        self._sock = sock
        self._set_status(MigrationStatus.POSTCOPY_PAUSED, MigrationStatus.POSTCOPY_RECOVER)
        self._attempted.set()  # connected: the handshake goes on while `migrate -r` returns
        recover = wire.json_record(wire.Rec.RECOVER, {"session": self._session})
        self.stats.add_stream(self._send([wire.header(), recover]))
        sock.settimeout(self._switchover_timeout)
        rec = wire.read_record(sock, wire.MAX_RECORD)
        sock.settimeout(None)
        if rec is None or rec[0] != wire.Rec.RECEIVED:
            raise wire.StreamError("the destination did not say which pages it holds")
        held = postcopy.decode_bitmap(rec[1], self.ram.pages)
        self._bitmap = ~held
        self._dirty_pages = int(np.count_nonzero(self._bitmap))
        self.stats.set_remaining(self._dirty_pages)
        self._cursor = 0
        self.stats.add_stream(self._send([wire.json_record(wire.Rec.RESUME, {})]))
        self._set_status(MigrationStatus.POSTCOPY_RECOVER, MigrationStatus.POSTCOPY_ACTIVE)

    def _finish(
        self, status: MigrationStatus, error: str | None, report: str = "", broke: bool = False
    ) -> None:
        """End in ``status``; ``error`` is the status text, ``report`` what stderr gets (with
        QEMU's hint lines) when it is more; ``broke``: the stream failed once open."""
        self._end_pacing()  # before joining the channels: none may stay in a rate wait
        if self._in_postcopy:
            postcopy.PROMPT_THREADS.release()
        self.ram.stop_dirty_log()
        if self._pool:
            self._pool.close()
        if self._multifd:
            self._multifd.close()
        if self._sock:
            if self._ack is not None and self._ack.is_alive():  # it may still wait for the ACK
                shutdown(self._sock)
                self._ack.join(self._switchover_timeout)
            self._sock.close()
        if self._preempt:
            self._preempt.close()
        if self._command:
            self._command.end(0)  # a command still running is killed: the stream is over
        if self._handed_over or (
            status is MigrationStatus.COMPLETED and not self.settings.background_snapshot
        ):
            self.vm.set_state(RunState.POSTMIGRATE)
        elif self._vm_was_running:
            self.vm.start()
        elif self.vm.state is RunState.FINISH_MIGRATE:
            self.vm.set_state(RunState.POSTMIGRATE)
        self.vm.gate.set_throttle(0)
        if status is MigrationStatus.FAILED and self.settings.failing_state:
            self._on_event("MIGRATION", {"status": "failing"})
        with self._lock:
            changed = self._status is not status
            self._status = status
            self._error = error
        if changed:
            self._on_event("MIGRATION", {"status": str(status)})
        stream_broke = broke and self.settings.report_stream_failure
        if error and (self.settings.report_failure or stream_broke):
            self._report(report or error)
        self._connected.set()
        self._done.set()

    # -- iterations --------------------------------------------------------------------------
    def _sync(self, *, announce: bool = True) -> None:
        """QEMU's migration_bitmap_sync: fold the guest's dirty log into the bitmap
        (``announce``: a MIGRATION_PASS event, when the release sends one for this sync).

        The sync lets pages already sent be found dirty again, so compressed pages still in
        flight go out first, ended by an EOS at which the destination drains its workers:
        a newer copy of a page then never shares a section with a stale one.
        """
        if self._inflight:
            self._drain()
            self._send_eos()
        if self._multifd:  # right after an EOS: what came before it is sent, and confirmed
            self._multifd.wait_sent()
        taken = self.ram.take_dirty()
        new = int(np.count_nonzero(taken & ~self._bitmap))
        self._bitmap |= taken
        self._dirty_pages = int(np.count_nonzero(self._bitmap))
        self.stats.set_remaining(self._dirty_pages)
        closed = self.stats.bitmap_synced(new)
        if announce:
            self._on_event("MIGRATION_PASS", {"pass": self.stats.dirty_sync_count})
        if closed and self.settings.auto_converge and self.vm.running:
            self._maybe_throttle(*closed)

    def _maybe_throttle(self, dirtied: int, transferred: int) -> None:
        """QEMU's migration_trigger_throttle: twice too dirty → throttle harder."""
        s = self.settings
        if dirtied <= transferred * s.throttle_trigger_threshold / 100:
            return
        self._dirty_rate_high += 1
        if self._dirty_rate_high < 2:
            return
        self._dirty_rate_high = 0
        current = self.vm.gate.throttle_pct
        pct = s.cpu_throttle_initial if not current else current + s.cpu_throttle_increment
        pct = min(pct, s.max_cpu_throttle)
        self.vm.gate.set_throttle(pct)
        self.stats.throttle_pct = pct

    def _iterate(self) -> None:
        """One ram_save_iterate: ≤50 ms of batches while the window has budget, then EOS.

        Compressed pages stay in flight across the EOS, as in QEMU 7.2 (3.1 dropped the
        per-iteration flush for one before each sync), so the workers never run dry here;
        multifd channels do sync at every EOS, as QEMU's do (without waiting for them here:
        the destination's barrier orders the packets).
        """
        t0 = time.monotonic()
        while self._dirty_pages and not self._limiter.exhausted():
            self._send_batch()
            if time.monotonic() - t0 > MAX_WAIT_S:
                break
        if self._multifd:
            self._multifd.sync(wait=False)
        self._send_eos()
        self._limiter.wait_window()

    def _next_pages(self, limit: int) -> npt.NDArray[np.intp]:
        """Up to ``limit`` dirty pages from the cursor on, wrapping; their bits are cleared.

        The bitmap is searched a window at a time so a batch costs O(window), not O(RAM); the
        window starts at ``limit`` bits (a dense bitmap, as in the first pass, needs no more)
        and grows up to SCAN_WINDOW where dirty pages are sparse.
        """
        pages = self.ram.pages
        found: list[npt.NDArray[np.intp]] = []
        count, scanned, cur, window = 0, 0, self._cursor, limit
        while count < limit and scanned < pages and self._dirty_pages:
            end = min(cur + window, pages)
            self._round_done |= end == pages  # QEMU enables xbzrle once its scan wraps
            window = min(window * 8, SCAN_WINDOW)
            hits = np.flatnonzero(self._bitmap[cur:end])[: limit - count] + cur
            self._bitmap[hits] = False  # at once: a wrapped scan must not find them twice
            found.append(hits)
            count += len(hits)
            scanned += end - cur
            cur = end % pages
            if len(hits) and count >= limit:
                cur = (int(hits[-1]) + 1) % pages
        self._cursor = cur
        batch = np.concatenate(found) if found else np.empty(0, dtype=np.intp)
        self._dirty_pages -= len(batch)
        self.stats.set_remaining(self._dirty_pages)
        return batch

    def _send_batch(self) -> None:
        """Scan a step of dirty pages: zero ones go at once, the rest raw or compressed."""
        self._check_stop()
        pool = self._pool
        # Postcopy sends raw and zero pages only, on the main stream (or the request channel).
        plain = (pool is None and self._multifd is None) or self._in_postcopy
        # Decided before the scan: the step that ends the first pass still belongs to it.
        cache = self._xbzrle_cache()
        step = self._within_budget(self._raw_batch() if plain else SCAN_BATCH)
        with self._bitmap_lock:  # postcopy-preempt's sender claims pages too
            indices = self._next_pages(step)
        if not len(indices):
            return
        detect = self.settings.zero_page_detection
        if self._multifd and not self._in_postcopy and detect == "multifd" and cache is None:
            self._multifd.queue(indices)  # the channels find the zero pages themselves
            return
        if detect == "none":  # every page is sent as it is, zero or not
            zero = np.zeros(len(indices), dtype=bool)
        elif plain and cache is None:  # zero detection and the CRCs of the others in one pass
            zero, crcs = self.ram.scan(indices)
            self._send_plain(indices, zero, busy=0, crcs=crcs[~zero])
            return
        else:
            zero = self.ram.zero_mask(indices)
        if cache is not None:
            self._send_xbzrle(cache, indices, zero)
            return
        if plain:  # zero-page-detection none
            self._send_plain(indices, zero, busy=0)
            return
        # QEMU checks for zero pages first; only the others are compressed or go to channels.
        if zero.any():
            self._send_plain(indices[zero], zero[zero], busy=0)
        nonzero = indices[~zero]
        if self._multifd:
            if self._dedupe:
                self._dedupe.forget(indices[zero])
                send, crcs = self._send_copies(self._dedupe, nonzero)
                self._multifd.queue(send, crcs, self._dedupe.generation)
            else:
                self._multifd.queue(nonzero)
            return
        assert pool is not None
        for start in range(0, len(nonzero), CHUNK):
            chunk = nonzero[start : start + CHUNK]
            level = None
            if self._policy:
                compress, level = self._policy.use_compression()
                if not compress:  # the link is faster than compressing: send as they are
                    self._send_plain(chunk, np.zeros(len(chunk), dtype=bool), busy=0)
                    continue
            if len(self._inflight) >= 2 * pool.active:
                if not self.settings.compress_wait_thread:
                    # Every worker is busy: QEMU sends the pages itself and counts them "busy".
                    none = np.zeros(len(chunk), dtype=bool)
                    self._send_plain(chunk, none, busy=len(chunk))
                    continue
                self._emit_oldest()
            self._inflight.append(_InFlight(chunk, pool.compress(chunk, level)))
            while self._inflight and self._inflight[0].future.done():
                self._emit_oldest()

    def _within_budget(self, pages: int) -> int:
        """A step of at most ``pages`` that the rate limit's window can carry, one page at
        least: no window, the first included, goes more than a page past its budget."""
        left = self._limiter.left()
        return pages if left is None else max(1, min(pages, -(-left // PAGE_SIZE)))

    def _send_copies(
        self, dedupe: Dedupe, pages: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.uint32]]:
        """Duplicates of pages the destination holds go as one COPY record; the rest is
        returned for the channels, with the CRCs the same pass took."""
        send, send_crcs, dups, sources, crcs = dedupe.split(pages)
        if len(dups):
            self._digest.crc[dups] = crcs
            self.stats.add_ram(self._send(wire.encode_copies(dups, sources)), self.vm.running)
            self.stats.add_pages(zero=0, normal=len(dups), compressed=0, compressed_bytes=0, busy=0)
        return send, send_crcs

    def _raw_batch(self) -> int:
        cap, _ = self._stream_cap()
        return wire.MAX_BATCH if not cap or cap >= BIG_BATCH_RATE else RAW_BATCH

    def _send_plain(
        self,
        indices: npt.NDArray[np.intp],
        zero: npt.NDArray[np.bool_],
        busy: int,
        crcs: npt.NDArray[np.uint32] | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        """Zero and raw pages; raw ones go from guest RAM to the socket without a copy.
        ``crcs``: of the raw pages, when the zero scan took them already.

        A page the guest rewrites between its CRC and the send was re-dirtied after we
        cleared its bit, so it is sent again with a fresh CRC before the digest is final.
        """
        nonzero = indices[~zero]
        kinds = np.where(zero, np.uint8(wire.Kind.ZERO), np.uint8(wire.Kind.PAGE)).astype(np.uint8)
        self._digest.set_zero(indices[zero])
        self._digest.crc[nonzero] = self.ram.crc_pages(nonzero) if crcs is None else crcs
        batch = wire.encode_batch(indices, kinds, [], self.ram.views(nonzero))
        self.stats.add_ram(self._send(batch, sock), self.vm.running)
        if self._in_postcopy and self.settings.release_ram:
            # QEMU's ram_release_page: the socket has its copy, the guest cannot run here.
            self.ram.release(nonzero)
        self.stats.add_pages(
            zero=len(indices) - len(nonzero),
            normal=len(nonzero),
            compressed=0,
            compressed_bytes=0,
            busy=busy,
        )

    def _xbzrle_cache(self) -> PageCache | None:
        """The page cache once xbzrle is in use, resized to xbzrle-cache-size (emptied, as
        QEMU's resize does); None before the first pass is over, or under multifd, whose
        channels take every non-zero page in QEMU 7.2."""
        cache = self._cache
        if cache is None or not self._round_done or self._multifd is not None:
            return None
        if self._in_postcopy:  # the destination places whole pages only
            return None
        size = self._param("xbzrle-cache-size")
        if size != cache.size:
            log.info("xbzrle cache resized from %d to %d bytes", cache.size, size)
            cache = self._cache = PageCache(size)
        return cache

    def _send_xbzrle(
        self, cache: PageCache, indices: npt.NDArray[np.intp], zero: npt.NDArray[np.bool_]
    ) -> None:
        """A step of dirty pages through the xbzrle cache (it replaces compression, as in
        QEMU 7.2): zero pages as they are, cached pages as deltas, the others whole; an
        unchanged cached page is not sent at all."""
        age = self.stats.dirty_sync_count
        if zero.any():
            self._send_plain(indices[zero], zero[zero], busy=0)
            cache.cache_zero(indices[zero], age)
        pages = indices[~zero]
        if not len(pages):
            return
        enc = cache.encode(self.ram, pages, age, self._last_stage)
        status = np.asarray(enc.status)
        self._digest.crc[pages] = enc.crcs
        sent, whole = status != 0, status < 0
        clens = status[status > 0]
        if sent.any():
            kinds = np.where(whole, np.uint8(wire.Kind.PAGE), np.uint8(wire.Kind.XBZRLE))
            batch = wire.encode_batch(
                pages[sent], kinds[sent].astype(np.uint8), clens.tolist(), [enc.raw, enc.deltas]
            )
            self.stats.add_ram(self._send(batch), self.vm.running)
        overflow = int(np.count_nonzero(status == OVERFLOW))
        self.stats.add_pages(
            zero=0, normal=int(whole.sum()), compressed=0, compressed_bytes=0, busy=0
        )
        self.stats.add_xbzrle(
            hits=int(np.count_nonzero(status != MISS)),
            sent=len(clens),
            # QEMU counts a delta and its framing (ours: a kind byte and a u32 length), and a
            # whole page per overflow.
            nbytes=int(clens.sum()) + 5 * len(clens) + overflow * PAGE_SIZE,
            miss=int(np.count_nonzero(status == MISS)),
            overflow=overflow,
        )

    def _emit_oldest(self) -> None:
        item = self._inflight.popleft()
        chunk = item.future.result()
        kinds = np.full(len(item.indices), wire.Kind.COMPRESSED, dtype=np.uint8)
        self._digest.crc[item.indices] = chunk.crcs
        clens = chunk.sizes
        if self._policy:
            self._policy.compressed(len(clens) * PAGE_SIZE, len(chunk.data), chunk.seconds)
        batch = wire.encode_batch(item.indices, kinds, clens, [chunk.data])
        self.stats.add_ram(self._send(batch), self.vm.running)
        self.stats.add_pages(
            zero=0,
            normal=0,
            compressed=len(clens),
            compressed_bytes=sum(clens) + 4 * len(clens),
            busy=0,
        )

    def _drain(self) -> None:
        """Everything queued before an EOS is sent before it (compressed pages, channels)."""
        while self._inflight:
            self._check_stop()
            self._emit_oldest()
        if self._multifd:
            self._multifd.sync()

    # -- I/O ---------------------------------------------------------------------------------
    def _send(self, buffers: list[bytes | memoryview], sock: socket.socket | None = None) -> int:
        """Write whole records (on the main stream, or ``sock``: postcopy-preempt's channel,
        from the return path's thread); the caller accounts them. Returns the bytes written."""
        t0 = time.monotonic()
        if sock is not None:
            nbytes = send_buffers(sock, buffers)
        else:
            assert self._sock is not None
            self._check_stop()  # a cancel that came ends the stream here, between two records
            nbytes = send_buffers(self._sock, buffers, self._wait_writable)
        if self._policy:
            self._policy.sent(nbytes, time.monotonic() - t0)
        self._limiter.charge(nbytes)
        self._link.pace(nbytes)
        return nbytes

    def _wait_writable(self) -> None:
        """The destination does not drain the stream: a write is in progress, which a cancel
        breaks (QEMU reports the socket's error then, as its blocked writev gets it)."""
        assert self._sock is not None
        with self._breakable():
            poll = select.poll()
            poll.register(self._sock, select.POLLOUT)
            poll.poll()

    @contextlib.contextmanager
    def _breakable(self) -> Iterator[None]:
        """A wait on the socket that only a shutdown ends: a cancel, now or already come,
        shuts the socket down."""
        with self._lock:
            cancelled = self._cancel.is_set()
            self._blocked = True
        try:
            if cancelled:
                shutdown(self._sock)
            yield
        finally:
            with self._lock:
                self._blocked = False

    def _send_eos(self) -> None:
        self.stats.add_ram(self._send([wire.record(wire.Rec.EOS)]), self.vm.running)
        if self._dedupe:  # what was sent before this EOS is placed before the next COPY
            self._dedupe.generation += 1

    def _check_stop(self) -> None:
        if self._cancel.is_set():
            raise Cancelled

    def _end_pacing(self) -> None:
        self._limiter.end()
        self._link.end()

    # -- the completion handshake (docs/ARCHITECTURE.md) ---------------------------------------
    def _switch_over(self) -> None:
        """DONE is sent: wait for READY, commit, send GO, wait for ACK.

        Until GO leaves, the destination cannot run the guest, so a failure restarts it here;
        from then on only the destination's NACK may, and a lost ACK leaves it paused here
        with a failure that says the destination may be running it.
        """
        self._expect(wire.Rec.READY)
        with self._lock:
            if self._status is not self._phase:  # a cancel came first
                raise Cancelled
            self._handed_over = True
        try:
            self.stats.add_stream(self._send([wire.json_record(wire.Rec.GO, {})]))
        except OSError as exc:
            raise MigrationError(self._lost(exc.strerror or str(exc))) from exc
        self._expect(wire.Rec.ACK)

    def _expect(self, kind: wire.Rec) -> None:
        """The destination's next reply must be ``kind``; a NACK, a loss or any other reply
        raises MigrationError (or Cancelled, when a cancel shut the socket)."""
        assert self._sock is not None
        self._sock.settimeout(self._switchover_timeout)
        try:
            with self._breakable():
                reply = self._next_reply()
        except TimeoutError:
            raise MigrationError(
                self._lost(f"no answer within {self._switchover_timeout:g} s")
            ) from None
        except wire.ForeignPeer as exc:
            raise MigrationError(self._lost(str(exc)) if self._handed_over else str(exc)) from exc
        except OSError as exc:
            self._check_cancelled()
            raise MigrationError(self._lost(exc.strerror or str(exc))) from exc
        if reply is None:
            self._check_cancelled()
            raise MigrationError(self._lost("the connection closed"))
        if reply.kind is wire.Rec.NACK:
            self._handed_over = False  # the destination will not run it: the guest is ours again
            raise MigrationError(reply.error)
        if reply.kind is not kind:
            raise MigrationError(self._lost(f"it answered {reply.kind.name} out of turn"))

    def _next_reply(self) -> wire.Reply | None:
        """The destination's next reply: first what switchover-ack's reader took instead of
        the ACK (a stopped source does not wait for it), then the socket's."""
        assert self._sock is not None
        if self._ack is not None:
            took, reply = self._ack.take(self._switchover_timeout)
            if took:
                return reply
        return wire.read_reply(self._sock)

    def _check_cancelled(self) -> None:
        if self._cancel.is_set() and not self._handed_over:
            raise Cancelled

    def _lost(self, cause: str) -> str:
        """The failure of a handshake that lost its peer, saying which side holds the guest."""
        if self._handed_over:
            return (
                f"lost contact with the destination after the switchover ({cause}): "
                "the destination may be running the guest; check it before 'cont' here"
            )
        return (
            f"lost contact with the destination before it confirmed the migration ({cause}); "
            "the guest stays on the source"
        )

    def _read_nack(self) -> str | None:
        """After a broken stream: did the destination say why before it closed?"""
        sock = self._sock
        if sock is None:
            return None
        if self._ack is not None and not self._ack.acked.is_set():  # it reads the socket
            self._ack.join(NACK_WAIT_S)
            return self._ack.nack
        try:
            sock.settimeout(NACK_WAIT_S)
            reply = wire.read_reply(sock)
        except wire.ForeignPeer as exc:
            return str(exc)
        except OSError:
            return None
        return reply.error if reply and reply.kind is wire.Rec.NACK else None
