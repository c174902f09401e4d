"""One endpoint: guest + migration configuration + current migration (the only thing HMP/QMP use)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from engine.errors import MigrationError
from engine.params import MigrationConfig, ParamValue
from engine.snapshot import MigrationInfo, StatusInfo
from engine.state import MigrationStatus, RunState, is_running

MiB = 1024 * 1024


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


class Machine:
    """The facade of one endpoint. Thread-safe; never blocks on I/O while holding its lock."""

    def __init__(self, opts: MachineOptions, *, notify: Callable[[str], None] | None = None) -> None:
        self.opts = opts
        self.config = MigrationConfig()
        self._notify = notify or (lambda _msg: None)
        self._lock = threading.Lock()
        self._incoming = opts.incoming is not None
        if self._incoming:
            self._run_state = RunState.INMIGRATE
        elif opts.start_paused:
            self._run_state = RunState.PRELAUNCH
        else:
            self._run_state = RunState.RUNNING
        self._status = MigrationStatus.NONE

    # -- queries ------------------------------------------------------------------------------
    def query_status(self) -> StatusInfo:
        with self._lock:
            state = self._run_state
        return StatusInfo(running=state is RunState.RUNNING, status=state)

    def query_migrate(self) -> MigrationInfo:
        with self._lock:
            status = self._status
        if status is MigrationStatus.NONE:
            return MigrationInfo()
        return MigrationInfo(status=status)

    # -- configuration ------------------------------------------------------------------------
    def set_capabilities(self, caps: Mapping[str, bool]) -> None:
        with self._lock:
            if is_running(self._status):
                raise MigrationError("There's a migration process in progress")
            self.config.set_capabilities(caps, incoming=self._incoming)

    def set_parameters(self, values: Mapping[str, ParamValue]) -> None:
        self.config.set_parameters(values)

    # -- migration ----------------------------------------------------------------------------
    def migrate(self, uri: str) -> None:
        """Start an outgoing migration; prepare-time errors raise, later ones go to the status."""
        raise MigrationError("migration is not implemented yet")

    def wait_migration(self, timeout: float | None = None) -> MigrationInfo:
        """Block until the outgoing migration leaves setup/active (what `migrate` without -d does)."""
        return self.query_migrate()

    def migrate_cancel(self) -> None:
        """Cancel a running migration; a no-op when none runs."""

    def migrate_incoming(self, uri: str) -> None:
        raise MigrationError("incoming migration is not implemented yet")

    # -- vCPUs --------------------------------------------------------------------------------
    def stop(self) -> None:
        with self._lock:
            if self._run_state is RunState.RUNNING:
                self._run_state = RunState.PAUSED

    def cont(self) -> None:
        with self._lock:
            if self._run_state is not RunState.INMIGRATE:
                self._run_state = RunState.RUNNING

    def close(self) -> None:
        """Stop every thread and socket of this endpoint (quit)."""
