"""Immutable values the front ends read: what QMP ``query-migrate`` / ``query-status`` return.

The monitor formats these and nothing else, so `info` output is a pure function of a snapshot.
Field names follow QAPI (``MigrationInfo``, ``MigrationStats``, ``XBZRLECacheStats``,
``CompressionStats``).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.state import MigrationStatus, RunState

# QEMU's ``migration_global_dump`` values; qemu-hmp has no knob that changes them.
GLOBALS: tuple[tuple[str, bool | int], ...] = (
    ("store-global-state", True),
    ("only-migratable", False),
    ("send-configuration", True),
    ("send-section-footer", True),
    ("decompress-error-check", True),
    ("clear-bitmap-shift", 18),
)


@dataclass(frozen=True)
class RamStats:
    transferred: int  # bytes of RAM-section stream
    remaining: int  # bytes still dirty
    total: int  # bytes of guest RAM
    duplicate: int  # zero pages
    skipped: int
    normal: int  # raw pages
    normal_bytes: int
    dirty_sync_count: int
    page_size: int
    multifd_bytes: int
    pages_per_second: int
    mbps: float
    dirty_pages_rate: int = 0
    postcopy_requests: int = 0
    precopy_bytes: int = 0
    downtime_bytes: int = 0
    postcopy_bytes: int = 0
    dirty_sync_missed_zero_copy: int = 0


@dataclass(frozen=True)
class CompressionStats:
    pages: int
    busy: int
    busy_rate: float
    compressed_size: int  # bytes
    compression_rate: float


@dataclass(frozen=True)
class XbzrleCacheStats:
    """QAPI ``XBZRLECacheStats``, members in QEMU's order."""

    cache_size: int  # bytes
    bytes: int  # delta bytes sent, and a page per overflow
    pages: int  # pages found in the cache (deltas, unchanged pages and overflows)
    cache_miss: int
    cache_miss_rate: float
    encoding_rate: float
    overflow: int


@dataclass(frozen=True)
class MigrationInfo:
    """One endpoint's ``query-migrate`` answer; ``None`` means the field is absent."""

    status: MigrationStatus | None = None
    error_desc: str | None = None
    total_time: int | None = None  # ms
    expected_downtime: int | None = None  # ms
    downtime: int | None = None  # ms
    setup_time: int | None = None  # ms
    ram: RamStats | None = None
    xbzrle_cache: XbzrleCacheStats | None = None
    compression: CompressionStats | None = None
    cpu_throttle_percentage: int | None = None
    postcopy_blocktime: int | None = None  # ms the vCPUs were all blocked (destination)
    postcopy_vcpu_blocktime: tuple[int, ...] | None = None  # ms per vCPU
    socket_address: tuple[str, ...] | None = None  # e.g. ("tcp:127.0.0.1:4444",)
    globals: tuple[tuple[str, bool | int], ...] = GLOBALS


@dataclass(frozen=True)
class StatusInfo:
    """``query-status``."""

    running: bool
    status: RunState
