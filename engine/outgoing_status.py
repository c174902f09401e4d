"""What the monitor reads of an outgoing migration, the same for a socket and a file."""

from __future__ import annotations

import threading

from engine.snapshot import MigrationInfo
from engine.state import MigrationStatus
from engine.stats import SourceStats


class OutgoingStatus:
    """Read side of a migration thread that sets ``_status`` and ``_error`` under ``_lock``."""

    _lock: threading.Lock
    _status: MigrationStatus
    _error: str | None
    stats: SourceStats

    @property
    def status(self) -> MigrationStatus:
        return self._status

    def info(self) -> MigrationInfo:
        with self._lock:
            status, error = self._status, self._error
        return self.stats.snapshot(status, error)
