"""QEMU 11.1's `info migrate` (rewritten in 10.1): grouped lines, sizes in IEC units, the
globals and XBZRLE only with ``-a``, and nothing at all before a migration. The other `info`
layouts are 7.2's (render.py)."""

from __future__ import annotations

import math

from engine.snapshot import MigrationInfo, RamStats
from engine.state import MigrationStatus

# QEMU 11.1's migration_global_dump, in its order.
GLOBALS: tuple[tuple[str, str], ...] = (
    ("store-global-state", "on"),
    ("only-migratable", "off"),
    ("send-configuration", "on"),
    ("send-section-footer", "on"),
    ("send-switchover-start", "on"),
    ("clear-bitmap-shift", "18"),
)
_PREFIXES = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")


def size_to_str(value: int) -> str:
    """QEMU's size_to_str: three significant digits, the unit moving up once a value reaches
    1000 of the one below (``900 KiB``, ``1.76 MiB``, ``129 MiB``)."""
    exponent = math.frexp(value / (1000 / 1024))[1]
    i = int((exponent - 1) / 10)  # C's division truncates toward zero (value 0: exponent 0)
    return f"{value / (1 << (i * 10)):0.3g} {_PREFIXES[i]}B"


def _time_line(info: MigrationInfo) -> list[str]:
    if not info.total_time:
        return []
    parts = [f"total={info.total_time}"]
    for label, figure in (
        ("setup", info.setup_time),
        ("exp_down", info.expected_downtime),
        ("down", info.downtime),
    ):
        if figure is not None:
            parts.append(f"{label}={figure}")
    return ["Time (ms): \t\t" + ", ".join(parts)]


def _optional(first: str, extra: tuple[tuple[str, int], ...]) -> str:
    """``first`` and each ``, label=N`` whose figure is not zero."""
    return first + "".join(f", {label}={n}" for label, n in extra if n)


def _ram_lines(ram: RamStats) -> list[str]:
    return [
        "RAM info:",
        f"  Throughput (Mbps): \t{ram.mbps:0.2f}",
        f"  Sizes: \t\tpagesize={size_to_str(ram.page_size)}, total={size_to_str(ram.total)}",
        f"  Transfers: \t\ttransferred={size_to_str(ram.transferred)}, "
        f"remain={size_to_str(ram.remaining)}",
        f"    Channels: \t\tprecopy={size_to_str(ram.precopy_bytes)}, "
        f"multifd={size_to_str(ram.multifd_bytes)}, postcopy={size_to_str(ram.postcopy_bytes)}",
        f"    Page Types: \tnormal={ram.normal}, zero={ram.duplicate}",
        _optional(
            f"  Page Rates (pps): \ttransfer={ram.pages_per_second}",
            (("dirty", ram.dirty_pages_rate),),
        ),
        _optional(
            f"  Others: \t\tdirty_syncs={ram.dirty_sync_count}",
            (
                ("postcopy_req", ram.postcopy_requests),
                ("downtime_bytes", ram.downtime_bytes),
                ("zerocopy_fallbacks", ram.dirty_sync_missed_zero_copy),
            ),
        ),
    ]


def info_migrate(info: MigrationInfo, all_: bool) -> str:
    lines: list[str] = []
    if info.status is not None:
        status = f"Status: \t\t{info.status}"
        if info.status is MigrationStatus.FAILED and info.error_desc:
            status += f" ({info.error_desc})"
        lines += [status, *_time_line(info)]
    if info.status is MigrationStatus.ACTIVE and info.ram is not None:
        lines.append(f"Remaining: \t\t{size_to_str(info.ram.remaining)}")
    if info.socket_address is not None:
        lines += ["Sockets: [", *(f"\t{addr}" for addr in info.socket_address), "]"]
    if info.ram is not None:
        lines += _ram_lines(info.ram)
    if all_:
        lines += ["Globals:", *(f"  {name}: {value}" for name, value in GLOBALS)]
        if (x := info.xbzrle_cache) is not None:
            lines += [
                f"XBZRLE: size={x.cache_size}, transferred={x.bytes}, pages={x.pages}, "
                f"miss={x.cache_miss}",
                f"  miss_rate={x.cache_miss_rate:0.2f}, encode_rate={x.encoding_rate:0.2f}, "
                f"overflow={x.overflow}",
            ]
        if info.cpu_throttle_percentage is not None:
            lines.append(f"CPU Throttle (%): {info.cpu_throttle_percentage}")
    return "".join(line + "\n" for line in lines)
