"""One endpoint: guest, migration configuration and migrations; all HMP and QMP talk to."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from engine import wire
from engine.command import CommandListener
from engine.destination import SETUP_TIMEOUT_S, IncomingMigration
from engine.errors import MigrationError, ReportedFailure, file_errors
from engine.events import EventBus
from engine.file_stream import FileSink, FileSource
from engine.guest import PAGE_SIZE, GuestRam
from engine.mapped_ram import FileIncoming, FileOutgoing, FileUri
from engine.params import TABLE_7_2, ConfigTable, MigrationConfig, ParamValue
from engine.policy import PolicyInfo
from engine.snapshot import MigrationInfo, StatusInfo
from engine.source import (
    STALL_WARNING_S,
    OutgoingMigration,
    OutgoingSettings,
    multifd_channels,
)
from engine.state import FOREGROUND_STATES, MigrationStatus, RunState, is_running
from engine.stats import Sample
from engine.transport import Address, Listener, UnknownProtocol, parse_uri
from engine.vm import Vm
from engine.workload import Workload, WorkloadSpec

MiB = 1024 * 1024
log = logging.getLogger(__name__)
NULL_UUID = "00000000-0000-0000-0000-000000000000"
CONNECT_WAIT_S = 1.0  # how long `migrate` waits for the connection's outcome before returning


@dataclass(frozen=True)
class Loader:
    """``-device loader,file=PATH,addr=ADDR,force-raw=on``: a file copied into guest RAM."""

    path: str
    addr: int


@dataclass(frozen=True)
class MachineOptions:
    ram_size: int = 128 * MiB
    name: str | None = None
    incoming: str | None = None  # a URI, or "defer"
    start_paused: bool = False  # -S
    workload: str | None = None  # None: `workload_name`
    seed: int = 0
    loaders: tuple[Loader, ...] = field(default=())
    uuid: str | None = None  # -uuid, in lower case; None: not set (QEMU's qemu_uuid_set)
    prealloc: bool = False  # -mem-prealloc
    smp: int = 1  # -smp: the vCPUs, each a thread running the workload
    # Each step of the completion handshake may take this long (both roles); tests shorten it.
    switchover_timeout: float = wire.SWITCHOVER_TIMEOUT_S
    # How long an incoming stream may take to deliver its header and configuration.
    setup_timeout_s: float = SETUP_TIMEOUT_S
    # How long an outgoing migration may send nothing while active before a warning.
    stall_warning_s: float = STALL_WARNING_S
    # Which QEMU release's capabilities and parameters the endpoint has.
    config_table: ConfigTable = TABLE_7_2

    def workload_name(self) -> str:
        """The workload named, else ``idle``; with a loader ``zero``: QEMU's RAM is then the
        images and zeros, and nothing writes it."""
        if self.workload is not None:
            return self.workload
        return "zero" if self.loaders else "idle"


class _Refused:
    """A `migrate` that failed before its thread started: QEMU still shows it as failed."""

    def __init__(self, error: str | None) -> None:
        self.status = MigrationStatus.FAILED
        self._error = error

    def info(self) -> MigrationInfo:
        return MigrationInfo(status=self.status, error_desc=self._error)

    def cancel(self) -> None:
        pass

    close = cancel

    def wait(self, timeout: float | None = None) -> bool:
        return True


class _Setup:
    """QEMU 11.1's incoming state after a `migrate_incoming file:` whose file would not open:
    still setup, and no other `migrate_incoming` may start."""

    status = MigrationStatus.SETUP

    def info(self) -> MigrationInfo:
        return MigrationInfo(status=self.status)

    def close(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> bool:
        return True


QUIT_WAIT_S = 10.0  # what a quit waits for its migrations to end (they end on close)


class Machine:
    """The facade of one endpoint. Thread-safe; never blocks on I/O while holding its lock."""

    def __init__(
        self, opts: MachineOptions, *, notify: Callable[[str], None] | None = None
    ) -> None:
        """Build the guest and, with ``-incoming URI``, start listening (errors raise)."""
        self.opts = opts
        self.config = MigrationConfig(opts.config_table)
        self.events = EventBus()
        self._notify = notify or (lambda _msg: None)
        self._lock = threading.Lock()
        self._status_changed = threading.Condition()  # notified at every MIGRATION event
        # A destination receives scattered pages: with huge pages, each first write would zero
        # 2 MiB (for an idle guest, all of RAM: 10x slower); 4 KiB pages cost only what arrives.
        # Preallocated RAM is touched whole anyway, and huge pages make that faster.
        huge = opts.incoming is None or opts.prealloc
        self.ram = GuestRam(opts.ram_size, prealloc=opts.prealloc, huge=huge)
        self.workload = Workload(WorkloadSpec.parse(opts.workload_name()), opts.seed)
        if opts.incoming is None:  # a destination's RAM starts empty and is filled by migration
            self.workload.fill(self.ram)
        for loader in opts.loaders:
            self._load_file(loader)
        if opts.incoming is not None:
            initial = RunState.INMIGRATE
        else:
            initial = RunState.PRELAUNCH if opts.start_paused else RunState.RUNNING
        self.vm = Vm(initial, self.events, opts.smp)
        self._autostart = not opts.start_paused
        self._outgoing: OutgoingMigration | FileOutgoing | _Refused | None = None
        self._incoming: IncomingMigration | FileIncoming | _Setup | None = None
        self._closing = False
        # Every migration thread started and maybe not ended: a quit joins them all (a failed
        # incoming attempt's thread, say, still ends after its retry took its place).
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()
        self.workload.start(self.ram, self.vm.gate, self._notify, opts.smp)
        if opts.incoming not in (None, "defer"):
            try:
                self._start_incoming(opts.incoming, deferred=False)
            except MigrationError:
                self.workload.stop()  # no Machine to close() comes out of a failed __init__
                raise

    def _load_file(self, loader: Loader) -> None:
        room = max(0, self.ram.size - loader.addr)
        # Read straight into guest RAM: a copy in between would double the peak RSS.
        view = self.ram.buf[loader.addr : loader.addr + room]
        try:
            with open(loader.path, "rb") as f:
                got = 0
                while got < room and (k := f.readinto(view[got:])):
                    got += k
                more = f.read(1)  # a byte more than fits is enough to refuse (/dev/zero)
                size = max(os.fstat(f.fileno()).st_size, got + len(more))
        except OSError as exc:
            raise MigrationError(f"could not load '{loader.path}': {exc.strerror}") from exc
        finally:
            view.release()
        if more:
            raise MigrationError(
                f"Cannot load '{loader.path}' ({size} bytes) at {loader.addr:#x}: "
                "it does not fit in guest RAM"
            )
        self.ram.mark_dirty(slice(loader.addr // PAGE_SIZE, -(-(loader.addr + got) // PAGE_SIZE)))

    # -- queries ------------------------------------------------------------------------------
    @property
    def uuid(self) -> str:
        """`info uuid`: -uuid, or QEMU's all-zero UUID."""
        return self.opts.uuid or NULL_UUID

    def query_status(self) -> StatusInfo:
        state = self.vm.state
        return StatusInfo(running=state is RunState.RUNNING, status=state)

    def query_migrate(self) -> MigrationInfo:
        """QEMU's order: the destination's view, overridden by an outgoing migration's."""
        with self._lock:
            incoming, outgoing = self._incoming, self._outgoing
        base = incoming.info() if incoming else MigrationInfo()
        if base.status is None and base.socket_address and self.config.table.listening_is_setup:
            base = replace(base, status=MigrationStatus.SETUP)
        if outgoing is None:
            return base
        return replace(outgoing.info(), socket_address=base.socket_address)

    def _outgoing_status(self) -> MigrationStatus:
        return self._outgoing.status if self._outgoing else MigrationStatus.NONE

    # -- configuration ------------------------------------------------------------------------
    def set_capabilities(self, caps: Mapping[str, bool]) -> None:
        with self._lock:
            if is_running(self._outgoing_status()):
                raise MigrationError("There's a migration process in progress")
            self.config.set_capabilities(
                caps,
                incoming=self.vm.state is RunState.INMIGRATE,
                started=self._incoming is not None,
            )

    def set_parameters(self, values: Mapping[str, ParamValue]) -> None:
        self.config.set_parameters(values)
        outgoing = self._outgoing
        if isinstance(outgoing, OutgoingMigration | FileOutgoing):
            outgoing.parameters_changed()  # rate waits re-time now, not when they run out

    # -- outgoing -----------------------------------------------------------------------------
    def migrate(
        self, uri: str, *, blk: bool = False, inc: bool = False, resume: bool = False
    ) -> None:
        """Start an outgoing migration; prepare-time errors raise, later ones go to the status.

        QEMU's checks come in QEMU's order (migrate_prepare, then the URI); qemu-hmp's own
        refusals of what QEMU would run come last, so wherever QEMU fails, its error shows.
        """
        c = self.config
        with self._lock:
            if resume:
                self._resume(uri)
                return
            if is_running(self._outgoing_status()):
                raise MigrationError("There's a migration process in progress")
            if self.vm.state is RunState.INMIGRATE:
                raise MigrationError("Guest is waiting for an incoming migration")
            if self.vm.state is RunState.POSTMIGRATE:
                raise MigrationError(
                    "Can't migrate the vm that was paused due to previous migration"
                )
            if blk or inc:
                if c.capability("x-colo"):
                    raise MigrationError("No disk migration is required in COLO mode")
                if c.capability("block") or c.param("block-incremental"):
                    raise MigrationError(
                        "Command options are incompatible with current migration capabilities"
                    )
            if c.table.file_uris and uri.startswith("file:"):
                self._migrate_to_file(FileUri.parse(uri))
                return
            try:
                addr = parse_uri(uri, incoming=False)
            except MigrationError as exc:
                # QEMU records no reason for an unknown protocol
                self._refuse(None if isinstance(exc, UnknownProtocol) else exc.desc)
                raise
            if blk or inc:
                raise MigrationError("Block migration (-b, -i) is not supported by qemu-hmp")
            if addr.kind == "exec" and c.capability("multifd"):
                # QEMU's multifd_save_setup fails inside migrate_fd_connect: reported, no reason
                self._refuse(None)
                raise ReportedFailure("multifd is not supported by current protocol")
            if addr.kind != "exec" and c.capability("background-snapshot"):
                raise MigrationError(  # ours: a live destination would run a second guest
                    "background-snapshot saves to an exec: command only here "
                    "(a destination that loads it would run a second copy of the guest)"
                )
            if c.capability("mapped-ram"):
                raise MigrationError("Migration requires seekable transport (e.g. file)")
            self._refuse_unsupported()
            self._migration_event("MIGRATION", {"status": str(MigrationStatus.SETUP)})
            mig = self._outgoing_migration(addr)
        self._start(mig)
        # Like QEMU, a local connect that fails at once is reported before `migrate` returns.
        mig.wait_connected(CONNECT_WAIT_S)

    def _outgoing_migration(self, addr: Address, sink: FileSink | None = None) -> OutgoingMigration:
        """The migration thread for ``addr`` with the settings as they are now (not started)."""
        c = self.config
        settings = OutgoingSettings.from_config(c)
        if settings.validate_uuid and self.opts.uuid:  # QEMU's vmstate_uuid_needed
            settings = replace(settings, uuid=self.opts.uuid)
        mig = OutgoingMigration(
            addr,
            self.ram,
            self.vm,
            settings,
            lambda n: int(c.param(n)),
            self._notify,
            self._migration_event,
            self.opts.switchover_timeout,
            stall_warning_s=self.opts.stall_warning_s,
            sink=sink,
        )
        self._outgoing = mig
        return mig

    def _refuse_unsupported(self) -> None:
        """qemu-hmp's own refusal, after QEMU's checks: a capability the engine lacks is on."""
        for spec in self.config.table.capabilities:
            if not spec.supported and self.config.capability(spec.name):
                raise MigrationError(
                    f"capability '{spec.name}' is not supported by qemu-hmp; "
                    f"run 'migrate_set_capability {spec.name} off'"
                )

    def _migrate_to_file(self, uri: FileUri) -> None:
        """`migrate file:PATH` (11.1): a mapped-ram file written by its own thread, or without
        mapped-ram the plain stream, written by the migration thread (engine/file_stream.py).
        The file is opened before `migrate` returns, and QEMU keeps its error in the status."""
        c = self.config
        if c.capability("multifd") and not c.capability("mapped-ram"):  # before migrate_init
            raise MigrationError("Migration requires multi-channel URIs (e.g. tcp)")
        self._refuse_unsupported()
        self._migration_event("MIGRATION", {"status": str(MigrationStatus.SETUP)})
        mig: FileOutgoing | OutgoingMigration
        try:
            if not c.capability("mapped-ram"):
                mig = self._outgoing_migration(Address("file", path=uri.path), FileSink(uri))
                self._start(mig)
                mig.wait_connected(CONNECT_WAIT_S)  # a failure at its start is reported first
                return
            mig = FileOutgoing(
                uri,
                self.ram,
                self.vm,
                lambda n: int(c.param(n)),
                multifd_channels(c),
                self._migration_event,
            )
        except MigrationError as exc:  # QEMU keeps the failure in the status
            self._outgoing = _Refused(exc.desc)
            self._failed_at_start()
            raise
        self._outgoing = mig
        self._start(mig)

    def migrate_start_postcopy(self) -> None:
        """QEMU's qmp_migrate_start_postcopy: its checks, then the switch at the migration
        thread's next step (at once while it runs; never, once it has ended)."""
        if not self.config.capability("postcopy-ram"):
            raise MigrationError(
                "Enable postcopy with migrate_set_capability before the start of migration"
            )
        outgoing = self._outgoing
        if outgoing is None:
            raise MigrationError("Postcopy must be started after migration has been started")
        if isinstance(outgoing, OutgoingMigration):
            outgoing.start_postcopy()

    def _resume(self, uri: str) -> None:
        """`migrate -r`: QEMU's migrate_prepare checks, then reconnect the paused postcopy."""
        outgoing = self._outgoing
        if self._outgoing_status() is not MigrationStatus.POSTCOPY_PAUSED:
            raise MigrationError("Cannot resume if there is no paused migration")
        if self.config.capability("release-ram"):
            raise MigrationError("Postcopy recovery cannot work when release-ram capability is set")
        addr = parse_uri(uri, incoming=False)
        if not isinstance(outgoing, OutgoingMigration) or not outgoing.resume(addr):
            raise MigrationError("Cannot resume if there is no paused migration")
        # Like QEMU, a local connect that fails at once is reported before `migrate` returns.
        outgoing.wait_attempt(CONNECT_WAIT_S)

    def migrate_pause(self) -> None:
        """QEMU's qmp_migrate_pause: break the stream of an active postcopy, source first."""
        outgoing, incoming = self._outgoing, self._incoming
        if isinstance(outgoing, OutgoingMigration) and outgoing.pause():
            return
        if isinstance(incoming, IncomingMigration) and incoming.pause():
            return
        raise MigrationError(
            "migrate-pause is currently only supported during postcopy-active state"
        )

    def migrate_recover(self, uri: str) -> None:
        """QEMU's qmp_migrate_recover: listen on ``uri`` for the source's `migrate -r`."""
        incoming = self._incoming
        if (
            not isinstance(incoming, IncomingMigration)
            or incoming.status is not MigrationStatus.POSTCOPY_PAUSED
        ):
            raise MigrationError("Migrate recover can only be run when postcopy is paused.")
        if self.config.table.incoming_setup_event:  # 7.2's qemu_start_incoming_migration
            self._announce_incoming_setup()
        incoming.recover(parse_uri(uri, incoming=True))

    def query_postcopy_faults(self) -> dict[str, Any]:
        """What the destination's vCPU waited for pages in postcopy (``x-query-postcopy-faults``):
        the number of faults, each wait and when it began (since the switch), in ms, in order;
        empty before a switch."""
        incoming = self._incoming
        bt = incoming.blocktime() if isinstance(incoming, IncomingMigration) else None
        if bt is None:
            return {}
        return {
            "faults": bt.faults,
            "blocktime": bt.total_ms,
            "waits-ms": list(bt.latencies_ms),
            "at-ms": list(bt.at_ms),
        }

    def _refuse(self, error: str | None) -> None:
        """A URI QEMU cannot use: its migrate_init announced setup before looking at it."""
        self._outgoing = _Refused(error)
        self._migration_event("MIGRATION", {"status": str(MigrationStatus.SETUP)})
        self._failed_at_start()

    def _failed_at_start(self) -> None:
        """The events of a migration that failed before its thread ran (11.1: via failing)."""
        if self.config.table.failing_state:
            self._migration_event("MIGRATION", {"status": "failing"})
        self._migration_event("MIGRATION", {"status": str(MigrationStatus.FAILED)})

    def query_compress_policy(self) -> PolicyInfo:
        """The adaptive compression policy's last decision (`info x_compress_policy`)."""
        outgoing = self._outgoing
        if isinstance(outgoing, OutgoingMigration):
            return outgoing.policy_info()
        return PolicyInfo(enabled=self.config.capability("x-compress-auto"))

    def migration_timeseries(self) -> list[Sample]:
        """The last outgoing migration's samples (every ≥100 ms), for charts and exports."""
        outgoing = self._outgoing
        return outgoing.stats.timeseries() if isinstance(outgoing, OutgoingMigration) else []

    def wait_migration(self, timeout: float | None = None) -> MigrationInfo:
        """Block until the outgoing migration ends (what `migrate` without -d does)."""
        outgoing = self._outgoing
        if outgoing is not None:
            outgoing.wait(timeout)
        return self.query_migrate()

    def wait_foreground(self, timeout: float | None = None) -> MigrationInfo:
        """What HMP's blocking `migrate` waits for (QEMU's hmp_migrate_status_cb): only while
        the outgoing migration is in setup or active, so `migrate -r` returns at once and a
        postcopy or a pause-before-switchover gives the prompt back."""
        with self._status_changed:
            self._status_changed.wait_for(
                lambda: self._outgoing_status() not in FOREGROUND_STATES, timeout
            )
        return self.query_migrate()

    def migrate_cancel(self) -> None:
        """Cancel a running outgoing migration; a no-op when none runs (and on a destination)."""
        outgoing = self._outgoing
        if outgoing is not None:
            outgoing.cancel()

    def migrate_continue(self, state: MigrationStatus) -> None:
        """QEMU's migrate-continue: only in the named state, which pause-before-switchover's
        pre-switchover is the one to leave (a continue in another state changes nothing)."""
        outgoing = self._outgoing
        current = self._outgoing_status()
        if current is not state:
            raise MigrationError(f"Migration not in expected state: {current}")
        if isinstance(outgoing, OutgoingMigration) and state is MigrationStatus.PRE_SWITCHOVER:
            outgoing.continue_switchover()

    # -- incoming -----------------------------------------------------------------------------
    def migrate_incoming(self, uri: str) -> None:
        with self._lock:
            if isinstance(self._incoming, _Setup):
                raise MigrationError("Illegal migration incoming state: setup")
            if self._incoming is not None:
                raise MigrationError("The incoming migration has already been started")
            if self.vm.state is not RunState.INMIGRATE:
                raise MigrationError("'-incoming' was not specified on the command line")
            self._start_incoming(uri, deferred=True)

    def _start_incoming(self, uri: str, *, deferred: bool) -> None:
        """``deferred``: `migrate_incoming` (else ``-incoming`` on the command line)."""
        if self.config.table.file_uris and uri.startswith("file:"):
            file_uri = FileUri.parse(uri)
            if not self.config.capability("mapped-ram"):
                self._restore_stream(file_uri, deferred=deferred)
                return
            self._migration_event("MIGRATION", {"status": str(MigrationStatus.SETUP)})
            incoming = FileIncoming(
                file_uri,
                self.ram,
                self.vm,
                multifd_channels(self.config),
                lambda: self._autostart,
                lambda reason: self._notify(f"load of migration failed: {reason}"),
                self._migration_event,
            )
            self._incoming = incoming
            self._start(incoming)
            return
        self._announce_incoming_setup()
        self._listen(parse_uri(uri, incoming=True))

    def _announce_incoming_setup(self) -> None:
        """QEMU announces setup before it looks at the URI (7.2 whether `events` is on or not,
        also for migrate_recover, whose status stays postcopy-paused)."""
        setup = {"status": str(MigrationStatus.SETUP)}
        if self.config.table.incoming_setup_event:
            self.events.emit("MIGRATION", setup)
        else:
            self._migration_event("MIGRATION", setup)

    def _restore_stream(self, uri: FileUri, *, deferred: bool) -> None:
        """`-incoming` or `migrate_incoming file:PATH` without mapped-ram (11.1): the plain
        stream read back from the file. A file that cannot be opened is the command's error
        (`migrate_incoming` leaves the incoming migration in setup, as QEMU 11.1's); a failed
        load after `migrate_incoming` stays in the status as QEMU 11.1's `load of migration
        failed: ...`, with nothing on stderr (after `-incoming`, QEMU reports it and exits)."""
        self._migration_event("MIGRATION", {"status": str(MigrationStatus.SETUP)})
        try:
            source = FileSource(uri)
        except MigrationError:
            if deferred:
                self._incoming = _Setup()
            raise
        self._listen(source.addr, listener=source, kept=deferred)

    def _listen(
        self,
        addr: Address,
        failed: IncomingMigration | None = None,
        listener: FileSource | None = None,
        kept: bool = False,
    ) -> None:
        """``kept``: a failure stays in the status, QEMU 11.1's `migrate_incoming` way."""
        incoming = IncomingMigration(
            listener or (CommandListener(addr) if addr.kind == "exec" else Listener(addr)),
            self.ram,
            self.vm,
            self._incoming_config,
            lambda: self._autostart,
            self._incoming_failed,
            self._migration_event,
            failed,
            self.opts.switchover_timeout,
            setup_timeout_s=self.opts.setup_timeout_s,
            failure_prefix="load of migration failed: " if kept else "",
            report=self._notify,
            blocktime=lambda: self.config.capability("postcopy-blocktime"),
        )
        self._incoming = incoming
        self._start(incoming)

    def _migration_event(self, name: str, data: dict[str, Any]) -> None:
        """QEMU sends MIGRATION and MIGRATION_PASS only while the events capability is on."""
        log.info("%s %s", name, data)
        with self._status_changed:
            self._status_changed.notify_all()
        if self.config.capability("events"):
            self.events.emit(name, data)

    def _incoming_config(self) -> tuple[wire.StreamConfig, int]:
        c = self.config
        if creds := c.param("tls-creds"):  # a plain-text stream is refused when TLS is asked for
            raise wire.StreamError(f"No TLS credentials with id '{creds}'")
        local = wire.StreamConfig(
            page_size=PAGE_SIZE,
            ram_size=self.ram.size,
            compress=c.capability("compress"),
            compress_method=str(c.param("x-compress-method")),
            # The source says how many channels it opens; the destination only has to agree
            # that multifd is on (QEMU would hang on a channel-count mismatch).
            multifd_channels=multifd_channels(c),
            uuid=self.opts.uuid or "",
            postcopy=c.capability("postcopy-ram"),
            preempt=c.capability("postcopy-preempt"),
        )
        return local, int(c.param("decompress-threads"))

    def _incoming_failed(self, mig: IncomingMigration, reason: str) -> None:
        """QEMU would exit here; qemu-hmp reports, keeps the guest waiting and listens again."""
        if mig.failure_prefix:  # its status says it (_restore_stream)
            return
        self._notify(f"load of migration failed: {reason}")
        if mig.listener.one_way:  # an exec: command ran once; QEMU exits here
            return
        with self._lock:
            if self._incoming is mig and not self._closing:
                try:
                    self._listen(mig.listener.addr, failed=mig)
                except MigrationError as exc:  # the address was taken meanwhile
                    self._notify(f"cannot listen again on {mig.listener.addr.uri()}: {exc.desc}")

    # -- memory -------------------------------------------------------------------------------
    def pmemsave(self, addr: int, size: int, path: str) -> None:
        """Write guest-physical memory to ``path``; beyond RAM reads as zeros, as QEMU's does."""
        with file_errors(path), open(path, "wb") as f:
            start, end = min(addr, self.ram.size), min(addr + size, self.ram.size)
            f.write(self.ram.buf[start:end])
            f.write(bytes(size - (end - start)))

    # -- vCPUs --------------------------------------------------------------------------------
    def stop(self) -> None:
        if self.vm.state is RunState.INMIGRATE:
            self._autostart = False  # QEMU: a destination told `stop` stays paused after
        else:
            self.vm.stop()

    def cont(self) -> None:
        if self.vm.state is RunState.INMIGRATE:
            self._autostart = True
        else:
            self.vm.start(cont=True)

    def _start(self, thread: threading.Thread) -> None:
        with self._threads_lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def close(self) -> None:
        """Stop every thread and socket of this endpoint (quit); once it returns, nothing of
        the endpoint runs (each migration's last steps follow the status change too)."""
        with self._lock:
            self._closing = True
            outgoing, incoming = self._outgoing, self._incoming
        for part in (outgoing, incoming):
            if part is not None:
                part.close()
        # Joining the threads covers waiting for the parts: each thread ends after its status.
        deadline = time.monotonic() + QUIT_WAIT_S
        with self._threads_lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.workload.stop()
