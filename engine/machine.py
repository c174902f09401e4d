"""One endpoint: guest, migration configuration and migrations; all HMP and QMP talk to."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from engine import wire
from engine.destination import IncomingMigration
from engine.errors import MigrationError, file_errors
from engine.events import EventBus
from engine.guest import PAGE_SIZE, GuestRam
from engine.params import CAPABILITIES, MigrationConfig, ParamValue
from engine.policy import PolicyInfo
from engine.snapshot import MigrationInfo, StatusInfo
from engine.source import OutgoingMigration, OutgoingSettings
from engine.state import MigrationStatus, RunState, is_running
from engine.stats import Sample
from engine.transport import Address, Listener, UnknownProtocol, parse_uri
from engine.vm import Vm
from engine.workload import Workload, WorkloadSpec

MiB = 1024 * 1024
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
    workload: str = "idle"
    seed: int = 0
    loaders: tuple[Loader, ...] = field(default=())
    prealloc: bool = False  # -mem-prealloc


class _Refused:
    """A `migrate` that failed before its thread started: QEMU still shows it as failed."""

    def __init__(self, error: str | None) -> None:
        self.status = MigrationStatus.FAILED
        self._error = error

    def info(self) -> MigrationInfo:
        return MigrationInfo(status=self.status, error_desc=self._error)

    def cancel(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> bool:
        return True


class Machine:
    """The facade of one endpoint. Thread-safe; never blocks on I/O while holding its lock."""

    def __init__(
        self, opts: MachineOptions, *, notify: Callable[[str], None] | None = None
    ) -> None:
        """Build the guest and, with ``-incoming URI``, start listening (errors raise)."""
        self.opts = opts
        self.config = MigrationConfig()
        self.events = EventBus()
        self._notify = notify or (lambda _msg: None)
        self._lock = threading.Lock()
        # A destination receives scattered pages: with huge pages, each first write would zero
        # 2 MiB (for an idle guest, all of RAM: 10x slower); 4 KiB pages cost only what arrives.
        # Preallocated RAM is touched whole anyway, and huge pages make that faster.
        huge = opts.incoming is None or opts.prealloc
        self.ram = GuestRam(opts.ram_size, prealloc=opts.prealloc, huge=huge)
        self.workload = Workload(WorkloadSpec.parse(opts.workload), opts.seed)
        if opts.incoming is None:  # a destination's RAM starts empty and is filled by migration
            self.workload.fill(self.ram)
        for loader in opts.loaders:
            self._load_file(loader)
        if opts.incoming is not None:
            initial = RunState.INMIGRATE
        else:
            initial = RunState.PRELAUNCH if opts.start_paused else RunState.RUNNING
        self.vm = Vm(initial, self.events)
        self._autostart = not opts.start_paused
        self._outgoing: OutgoingMigration | _Refused | None = None
        self._incoming: IncomingMigration | None = None
        self._closing = False
        self.workload.start(self.ram, self.vm.gate)
        if opts.incoming not in (None, "defer"):
            self._start_incoming(opts.incoming)

    def _load_file(self, loader: Loader) -> None:
        try:
            with open(loader.path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise MigrationError(f"could not load '{loader.path}': {exc.strerror}") from exc
        if loader.addr + len(data) > self.ram.size:
            raise MigrationError(
                f"Cannot load '{loader.path}' ({len(data)} bytes) at {loader.addr:#x}: "
                "it does not fit in guest RAM"
            )
        self.ram.write(loader.addr, data)

    # -- queries ------------------------------------------------------------------------------
    def query_status(self) -> StatusInfo:
        state = self.vm.state
        return StatusInfo(running=state is RunState.RUNNING, status=state)

    def query_migrate(self) -> MigrationInfo:
        """QEMU's order: the destination's view, overridden by an outgoing migration's."""
        with self._lock:
            incoming, outgoing = self._incoming, self._outgoing
        base = incoming.info() if incoming else MigrationInfo()
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
            self.config.set_capabilities(caps, incoming=self.vm.state is RunState.INMIGRATE)

    def set_parameters(self, values: Mapping[str, ParamValue]) -> None:
        self.config.set_parameters(values)

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
                # Only a postcopy-paused migration resumes, and qemu-hmp has no postcopy (so
                # QEMU's next resume check, release-ram, never applies).
                raise MigrationError("Cannot resume if there is no paused migration")
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
            try:
                addr = parse_uri(uri, incoming=False)
            except MigrationError as exc:
                # QEMU records no reason for an unknown protocol
                self._refuse(None if isinstance(exc, UnknownProtocol) else exc.desc)
                raise
            if blk or inc:
                raise MigrationError("Block migration (-b, -i) is not supported by qemu-hmp")
            for spec in CAPABILITIES:
                if not spec.supported and c.capability(spec.name):
                    raise MigrationError(
                        f"capability '{spec.name}' is not supported by qemu-hmp; "
                        f"run 'migrate_set_capability {spec.name} off'"
                    )
            settings = OutgoingSettings(
                compress=c.capability("compress"),
                compress_method=str(c.param("x-compress-method")),
                compress_level=int(c.param("compress-level")),
                compress_threads=int(c.param("compress-threads")),
                compress_wait_thread=bool(c.param("compress-wait-thread")),
                auto_converge=c.capability("auto-converge"),
                throttle_trigger_threshold=int(c.param("throttle-trigger-threshold")),
                cpu_throttle_initial=int(c.param("cpu-throttle-initial")),
                cpu_throttle_increment=int(c.param("cpu-throttle-increment")),
                max_cpu_throttle=int(c.param("max-cpu-throttle")),
                return_path=c.capability("return-path"),
                compress_auto=c.capability("x-compress-auto"),
                multifd_channels=self._multifd_channels(),
                multifd_compression=str(c.param("multifd-compression")),
                multifd_level=int(
                    c.param("multifd-zstd-level")
                    if c.param("multifd-compression") == "zstd"
                    else c.param("multifd-zlib-level")
                ),
            )
            self._migration_event("MIGRATION", {"status": str(MigrationStatus.SETUP)})
            mig = OutgoingMigration(
                addr,
                self.ram,
                self.vm,
                settings,
                lambda n: int(c.param(n)),
                self._notify,
                self._migration_event,
            )
            self._outgoing = mig
        mig.start()
        # Like QEMU, a local connect that fails at once is reported before `migrate` returns.
        mig.wait_connected(CONNECT_WAIT_S)

    def _refuse(self, error: str | None) -> None:
        """A URI QEMU cannot use: its migrate_init announced setup before looking at it."""
        self._outgoing = _Refused(error)
        for status in (MigrationStatus.SETUP, MigrationStatus.FAILED):
            self._migration_event("MIGRATION", {"status": str(status)})

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

    def migrate_cancel(self) -> None:
        """Cancel a running outgoing migration; a no-op when none runs (and on a destination)."""
        outgoing = self._outgoing
        if outgoing is not None:
            outgoing.cancel()

    # -- incoming -----------------------------------------------------------------------------
    def migrate_incoming(self, uri: str) -> None:
        with self._lock:
            if self._incoming is not None:
                raise MigrationError("The incoming migration has already been started")
            if self.vm.state is not RunState.INMIGRATE:
                raise MigrationError("'-incoming' was not specified on the command line")
            self._start_incoming(uri)

    def _start_incoming(self, uri: str) -> None:
        # QEMU announces setup before it looks at the URI, whether `events` is on or not.
        self.events.emit("MIGRATION", {"status": str(MigrationStatus.SETUP)})
        self._listen(parse_uri(uri, incoming=True))

    def _listen(self, addr: Address, failed: IncomingMigration | None = None) -> None:
        incoming = IncomingMigration(
            Listener(addr),
            self.ram,
            self.vm,
            self._incoming_config,
            lambda: self._autostart,
            self._incoming_failed,
            self._migration_event,
            failed,
        )
        self._incoming = incoming
        incoming.start()

    def _migration_event(self, name: str, data: dict[str, Any]) -> None:
        """QEMU sends MIGRATION and MIGRATION_PASS only while the events capability is on."""
        if self.config.capability("events"):
            self.events.emit(name, data)

    def _multifd_channels(self) -> int:
        """multifd-channels while the multifd capability is on; 0 (no channels) otherwise."""
        c = self.config
        return int(c.param("multifd-channels")) if c.capability("multifd") else 0

    def _incoming_config(self) -> tuple[wire.StreamConfig, int]:
        c = self.config
        local = wire.StreamConfig(
            page_size=PAGE_SIZE,
            ram_size=self.ram.size,
            compress=c.capability("compress"),
            compress_method=str(c.param("x-compress-method")),
            # The source says how many channels it opens; the destination only has to agree
            # that multifd is on (QEMU would hang on a channel-count mismatch).
            multifd_channels=self._multifd_channels(),
        )
        return local, int(c.param("decompress-threads"))

    def _incoming_failed(self, mig: IncomingMigration, reason: str) -> None:
        """QEMU would exit here; qemu-hmp reports, keeps the guest waiting and listens again."""
        self._notify(f"load of migration failed: {reason}")
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
            self.vm.start()

    def close(self) -> None:
        """Stop every thread and socket of this endpoint (quit)."""
        with self._lock:
            self._closing = True
            outgoing, incoming = self._outgoing, self._incoming
        if outgoing is not None:
            outgoing.cancel()
            outgoing.wait(10)
        if incoming is not None:
            incoming.close()
            incoming.wait(10)
        self.workload.stop()
