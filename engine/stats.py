"""Source-side migration counters and QEMU 7.2's formulas over them.

The migration thread updates counters under a short lock; the monitor takes an immutable
snapshot at any time. Every figure comes from bytes and pages really moved and from clock
readings; the formulas (windows, rates, thresholds) are QEMU's (REFERENCE section 5).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.guest import PAGE_SIZE
from engine.snapshot import CompressionStats, MigrationInfo, RamStats, XbzrleCacheStats
from engine.state import STATS_STATES, MigrationStatus

WINDOW_MS = 100  # QEMU's BUFFER_DELAY: bandwidth/threshold/mbps window
RATE_PERIOD_MS = 1000  # dirty-rate and compression-rate period, at bitmap syncs


def now_ms() -> float:
    return time.monotonic() * 1000.0


@dataclass
class _Period:
    """Counters at the start of the current ≥1 s sync period (QEMU's rs->... "prev" values)."""

    start_ms: float
    dirty_pages: int = 0
    pages: int = 0
    busy: int = 0
    comp_pages: int = 0
    comp_bytes: int = 0
    xfer_bytes: int = 0
    xbzrle_pages: int = 0
    xbzrle_bytes: int = 0
    xbzrle_miss: int = 0


@dataclass(frozen=True)
class Sample:
    """One point of a migration's time series (one per ≥100 ms window, and one at the end)."""

    t_ms: int  # since `migrate`
    transferred: int  # bytes
    remaining: int  # bytes
    mbps: float
    dirty_pages_rate: int
    cpu_throttle: int


@dataclass
class SourceStats:
    total: int  # guest RAM bytes
    compress: bool
    xbzrle_cache_size: int = 0  # 0: the xbzrle capability is off
    start_ms: float = field(default_factory=now_ms)
    setup_ms: float | None = None
    end_ms: float | None = None
    downtime_start_ms: float | None = None
    downtime_ms: float | None = None
    switch_ms: float | None = None  # when postcopy's switch was sent (its downtime's end)
    postcopy: bool = False  # the vCPUs stopped for postcopy: RAM bytes count as postcopy's
    # RAM counters
    transferred: int = 0
    precopy_bytes: int = 0
    downtime_bytes: int = 0
    postcopy_bytes: int = 0
    # Postcopy's request queue (engine/postcopy.py), whose count is read live: a page counts
    # as requested before it can be sent.
    requested: Callable[[], int] = lambda: 0
    stream_bytes: int = 0  # everything written to the sockets (QEMU's migration_total_bytes)
    duplicate: int = 0
    normal: int = 0
    dirty_sync_count: int = 0
    remaining: int = 0
    multifd_bytes: int = 0
    zero_copy_fallbacks: int = 0  # channel flushes that found a copied zero-copy send
    # compression
    comp_pages: int = 0
    comp_busy: int = 0
    comp_bytes: int = 0
    busy_rate: float = 0.0
    compression_rate: float = 0.0
    # xbzrle (QEMU's xbzrle_counters)
    xbzrle_pages: int = 0
    xbzrle_sent: int = 0  # pages that went as deltas: QEMU's target pages for the rates
    xbzrle_bytes: int = 0
    xbzrle_miss: int = 0
    xbzrle_overflow: int = 0
    xbzrle_miss_rate: float = 0.0
    xbzrle_encoding_rate: float = 0.0
    # window figures
    mbps: float = 0.0
    pages_per_second: int = 0
    dirty_pages_rate: int = 0
    expected_downtime_ms: int = 0
    threshold: float = 0.0
    remaining_at_sync: int = 0
    throttle_pct: int = 0
    _win_start_ms: float = 0.0
    _win_bytes: int = 0
    _win_pages: int = 0
    _period: _Period = field(default_factory=lambda: _Period(now_ms()))
    series: list[Sample] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- updates from the migration thread ---------------------------------------------------
    def pages_total(self) -> int:
        return self.duplicate + self.normal + self.comp_pages + self.xbzrle_sent

    def add_stream(self, nbytes: int) -> None:
        """Bytes on the wire that are not RAM records (header, configuration, completion)."""
        with self._lock:
            self.stream_bytes += nbytes

    def add_ram(self, nbytes: int, vm_running: bool) -> None:
        """RAM-section bytes (page batches and EOS), split by whether the guest was running
        here, and after postcopy's switch (QEMU's precopy, downtime and postcopy bytes)."""
        with self._lock:
            self.stream_bytes += nbytes
            self.transferred += nbytes
            if self.postcopy:
                self.postcopy_bytes += nbytes
            elif vm_running:
                self.precopy_bytes += nbytes
            else:
                self.downtime_bytes += nbytes

    def add_multifd(self, nbytes: int, pages: int, zero: int = 0) -> None:
        """A multifd packet: its bytes count as transferred and multifd bytes, its pages as
        normal (or zero, found by the channel). As in QEMU 7.2, precopy and downtime bytes
        are the main stream's alone."""
        with self._lock:
            self.stream_bytes += nbytes
            self.transferred += nbytes
            self.multifd_bytes += nbytes
            self.normal += pages
            self.duplicate += zero

    def zero_copy_fallback(self) -> None:
        """QEMU's dirty_sync_missed_zero_copy: a sync whose flush saw the kernel copy."""
        with self._lock:
            self.zero_copy_fallbacks += 1

    def add_pages(
        self, *, zero: int, normal: int, compressed: int, compressed_bytes: int, busy: int
    ) -> None:
        with self._lock:
            self.duplicate += zero
            self.normal += normal
            self.comp_pages += compressed
            self.comp_bytes += compressed_bytes
            self.comp_busy += busy

    def add_xbzrle(self, *, hits: int, sent: int, nbytes: int, miss: int, overflow: int) -> None:
        """A batch through the cache: ``hits`` found there, ``sent`` of them as deltas, whose
        ``nbytes`` count as QEMU counts them (overflows as a whole page each)."""
        with self._lock:
            self.xbzrle_pages += hits
            self.xbzrle_sent += sent
            self.xbzrle_bytes += nbytes
            self.xbzrle_miss += miss
            self.xbzrle_overflow += overflow

    def set_remaining(self, dirty_pages: int) -> None:
        self.remaining = dirty_pages * PAGE_SIZE

    def setup_done(self, expected_downtime_ms: int) -> None:
        with self._lock:
            t = now_ms()
            self.setup_ms = t - self.start_ms
            self.expected_downtime_ms = expected_downtime_ms
            self._win_start_ms = t
            self._win_bytes = self.stream_bytes
            self._win_pages = self.pages_total()
            self._period = _Period(t, xfer_bytes=self.transferred)

    def update_window(self, downtime_limit_ms: int, switchover_bps: int = 0) -> None:
        """QEMU's migration_update_counters: every ≥100 ms, bandwidth → threshold, mbps, pages/s.

        ``switchover_bps`` (avail-switchover-bandwidth, QEMU 8.2+) is the bandwidth the
        switchover may use; when set, the threshold and expected downtime use it instead of
        the measured one (which a capped precopy keeps low).
        """
        t = now_ms()
        spent = t - self._win_start_ms
        if spent < WINDOW_MS:
            return
        with self._lock:
            moved = self.stream_bytes - self._win_bytes
            bandwidth = moved / spent  # bytes per ms
            expected = switchover_bps / 1000 if switchover_bps else bandwidth
            self.threshold = expected * downtime_limit_ms
            self.mbps = moved * 8 / (spent / 1000) / 1e6
            self.pages_per_second = int((self.pages_total() - self._win_pages) / (spent / 1000))
            if self.dirty_pages_rate and moved > 10000 and expected > 0:
                self.expected_downtime_ms = int(self.remaining_at_sync / expected)
            self._win_start_ms, self._win_bytes, self._win_pages = (
                t,
                self.stream_bytes,
                self.pages_total(),
            )
            self.series.append(self._sample(t))

    def bitmap_synced(self, new_dirty: int) -> tuple[int, int] | None:
        """Count a sync; every ≥1 s close the rate period.

        Returns (bytes dirtied, bytes transferred) over the closed period, for auto-converge.
        """
        t = now_ms()
        with self._lock:
            self.dirty_sync_count += 1
            self.remaining_at_sync = self.remaining
            p = self._period
            p.dirty_pages += new_dirty
            spent = t - p.start_ms
            if spent <= RATE_PERIOD_MS:
                return None
            self.dirty_pages_rate = int(p.dirty_pages * 1000 / spent)
            pages = self.pages_total() - p.pages
            if pages and self.xbzrle_cache_size:
                self._xbzrle_rates(p, pages)
            if pages:
                self.busy_rate = (self.comp_busy - p.busy) / pages
                dbytes = self.comp_bytes - p.comp_bytes
                if dbytes:
                    self.compression_rate = (self.comp_pages - p.comp_pages) * PAGE_SIZE / dbytes
            closed = (p.dirty_pages * PAGE_SIZE, self.transferred - p.xfer_bytes)
            self._period = _Period(
                t,
                pages=self.pages_total(),
                busy=self.comp_busy,
                comp_pages=self.comp_pages,
                comp_bytes=self.comp_bytes,
                xfer_bytes=self.transferred,
                xbzrle_pages=self.xbzrle_pages,
                xbzrle_bytes=self.xbzrle_bytes,
                xbzrle_miss=self.xbzrle_miss,
            )
            return closed

    def _xbzrle_rates(self, p: _Period, pages: int) -> None:
        """QEMU's migration_update_rates: misses per page sent, and the pages found in the
        cache over the bytes they cost, both over the period just closed (0 without hits)."""
        self.xbzrle_miss_rate = (self.xbzrle_miss - p.xbzrle_miss) / pages
        hits, nbytes = self.xbzrle_pages - p.xbzrle_pages, self.xbzrle_bytes - p.xbzrle_bytes
        self.xbzrle_encoding_rate = hits * PAGE_SIZE / nbytes if hits and nbytes else 0.0

    def start_downtime(self) -> None:
        self.downtime_start_ms = now_ms()

    def switched(self) -> None:
        """Postcopy's switch is sent: the downtime ends (QEMU's postcopy_start)."""
        with self._lock:
            self.switch_ms = now_ms()

    def completed(self, downtime_end_ms: float | None = None) -> None:
        """Freeze total time now, as QEMU's end time at completion, and downtime at
        ``downtime_end_ms`` (default: now). The total runs to now even when downtime ended
        earlier: a `total time` polled while the source waited for the verdict must not be
        undercut by the final one."""
        with self._lock:
            t = self.end_ms = now_ms()
            downtime_end = t if downtime_end_ms is None else downtime_end_ms
            assert self.downtime_start_ms is not None
            self.downtime_ms = downtime_end - self.downtime_start_ms
            self.remaining = 0
            self.dirty_pages_rate = 0
            active = (t - self.start_ms) - (self.setup_ms or 0.0)
            if active > 0:
                self.mbps = self.stream_bytes * 8 / active / 1000
            self.series.append(self._sample(t))

    def _sample(self, t: float) -> Sample:
        return Sample(
            t_ms=int(t - self.start_ms),
            transferred=self.transferred,
            remaining=self.remaining,
            mbps=round(self.mbps, 2),
            dirty_pages_rate=self.dirty_pages_rate,
            cpu_throttle=self.throttle_pct,
        )

    def timeseries(self) -> list[Sample]:
        with self._lock:
            return list(self.series)

    # -- the monitor's view ------------------------------------------------------------------
    def snapshot(self, status: MigrationStatus, error: str | None) -> MigrationInfo:
        with self._lock:
            if status is MigrationStatus.COMPLETED:
                assert self.end_ms is not None and self.downtime_ms is not None
                return MigrationInfo(
                    status=status,
                    total_time=int(self.end_ms - self.start_ms),
                    downtime=int(self.downtime_ms),
                    setup_time=int(self.setup_ms or 0),
                    ram=self._ram(),
                    xbzrle_cache=self._xbzrle(),
                    compression=self._compression(),
                    # QEMU stops the throttle at the end (cpu_throttle_stop): no line then.
                )
            if status in STATS_STATES:
                # Between completed() and the status switch: the frozen end, not a later now.
                end = now_ms() if self.end_ms is None else self.end_ms
                return MigrationInfo(
                    status=status,
                    total_time=int(end - self.start_ms),
                    expected_downtime=self.expected_downtime_ms,
                    setup_time=int(self.setup_ms or 0),
                    ram=self._ram(),
                    xbzrle_cache=self._xbzrle(),
                    compression=self._compression(),
                    cpu_throttle_percentage=self.throttle_pct or None,
                )
        return MigrationInfo(status=status, error_desc=error)

    def _ram(self) -> RamStats:
        return RamStats(
            transferred=self.transferred,
            remaining=self.remaining,
            total=self.total,
            duplicate=self.duplicate,
            skipped=0,
            normal=self.normal,
            normal_bytes=self.normal * PAGE_SIZE,
            dirty_sync_count=self.dirty_sync_count,
            page_size=PAGE_SIZE,
            multifd_bytes=self.multifd_bytes,
            pages_per_second=self.pages_per_second,
            mbps=self.mbps,
            dirty_pages_rate=self.dirty_pages_rate,
            precopy_bytes=self.precopy_bytes,
            downtime_bytes=self.downtime_bytes,
            dirty_sync_missed_zero_copy=self.zero_copy_fallbacks,
            postcopy_bytes=self.postcopy_bytes,
            postcopy_requests=self.requested(),
        )

    def _xbzrle(self) -> XbzrleCacheStats | None:
        if not self.xbzrle_cache_size:
            return None
        return XbzrleCacheStats(
            cache_size=self.xbzrle_cache_size,
            bytes=self.xbzrle_bytes,
            pages=self.xbzrle_pages,
            cache_miss=self.xbzrle_miss,
            cache_miss_rate=self.xbzrle_miss_rate,
            encoding_rate=self.xbzrle_encoding_rate,
            overflow=self.xbzrle_overflow,
        )

    def _compression(self) -> CompressionStats | None:
        if not self.compress:
            return None
        return CompressionStats(
            pages=self.comp_pages,
            busy=self.comp_busy,
            busy_rate=self.busy_rate,
            compressed_size=self.comp_bytes,
            compression_rate=self.compression_rate,
        )
