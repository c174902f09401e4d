"""QEMU 7.2's `info` layouts: pure functions from engine snapshots to the exact text."""

from __future__ import annotations

from collections.abc import Mapping

from engine.params import PARAMETERS, Kind, ParamSpec, ParamValue, value_words
from engine.policy import PolicyInfo
from engine.snapshot import MigrationInfo, RamStats, StatusInfo
from engine.state import MigrationStatus, RunState


def _onoff(value: bool) -> str:
    return "on" if value else "off"


def info_status(info: StatusInfo) -> str:
    text = "VM status: " + ("running" if info.running else "paused")
    if not info.running and info.status is not RunState.PAUSED:
        text += f" ({info.status})"
    return text + "\n"


def info_migrate_capabilities(caps: Mapping[str, bool]) -> str:
    return "".join(f"{name}: {_onoff(on)}\n" for name, on in caps.items())


def info_migrate_parameters(
    params: Mapping[str, ParamValue], specs: tuple[ParamSpec, ...] = PARAMETERS
) -> str:
    lines = []
    for spec in specs:
        if not spec.printed:
            continue
        value = params[spec.name]
        if spec.kind is Kind.WORDS:  # QEMU 11.1's cpr-exec-command: a space before each word
            lines.append(f"{spec.name}:{''.join(' ' + w for w in value_words(value))}\n")
            continue
        if spec.kind is Kind.BOOL:
            text = _onoff(bool(value))
        elif spec.kind is Kind.STR:
            text = f"'{value}'"
        else:
            text = str(value)
        unit = f" {spec.unit}" if spec.unit else ""
        lines.append(f"{spec.name}: {text}{unit}\n")
    return "".join(lines)


def _ram_lines(ram: RamStats) -> list[str]:
    lines = [
        f"transferred ram: {ram.transferred >> 10} kbytes",
        f"throughput: {ram.mbps:0.2f} mbps",
        f"remaining ram: {ram.remaining >> 10} kbytes",
        f"total ram: {ram.total >> 10} kbytes",
        f"duplicate: {ram.duplicate} pages",
        f"skipped: {ram.skipped} pages",
        f"normal: {ram.normal} pages",
        f"normal bytes: {ram.normal_bytes >> 10} kbytes",
        f"dirty sync count: {ram.dirty_sync_count}",
        f"page size: {ram.page_size >> 10} kbytes",
        f"multifd bytes: {ram.multifd_bytes >> 10} kbytes",
        f"pages-per-second: {ram.pages_per_second}",
    ]
    # Lines QEMU prints only when their figure is non-zero.
    optional = (
        (ram.dirty_pages_rate, f"dirty pages rate: {ram.dirty_pages_rate} pages"),
        (ram.postcopy_requests, f"postcopy request count: {ram.postcopy_requests}"),
        (ram.precopy_bytes, f"precopy ram: {ram.precopy_bytes >> 10} kbytes"),
        (ram.downtime_bytes, f"downtime ram: {ram.downtime_bytes >> 10} kbytes"),
        (ram.postcopy_bytes, f"postcopy ram: {ram.postcopy_bytes >> 10} kbytes"),
        (
            ram.dirty_sync_missed_zero_copy,
            f"Zero-copy-send fallbacks happened: {ram.dirty_sync_missed_zero_copy} times",
        ),
    )
    return lines + [line for figure, line in optional if figure]


def info_migrate(info: MigrationInfo) -> str:
    lines = ["globals:"]
    lines += [
        f"{name}: {_onoff(value) if isinstance(value, bool) else value}"
        for name, value in info.globals
    ]
    if info.status is not None:
        status = f"Migration status: {info.status}"
        if info.status is MigrationStatus.FAILED and info.error_desc:
            status += f" ({info.error_desc})"
        lines.append(status)
        lines.append(f"total time: {info.total_time or 0} ms")
        if info.expected_downtime is not None:
            lines.append(f"expected downtime: {info.expected_downtime} ms")
        if info.downtime is not None:
            lines.append(f"downtime: {info.downtime} ms")
        if info.setup_time is not None:
            lines.append(f"setup: {info.setup_time} ms")
    if info.ram is not None:
        lines += _ram_lines(info.ram)
    if info.xbzrle_cache is not None:
        x = info.xbzrle_cache
        lines += [
            f"cache size: {x.cache_size} bytes",
            f"xbzrle transferred: {x.bytes >> 10} kbytes",
            f"xbzrle pages: {x.pages} pages",
            f"xbzrle cache miss: {x.cache_miss} pages",
            f"xbzrle cache miss rate: {x.cache_miss_rate:0.2f}",
            f"xbzrle encoding rate: {x.encoding_rate:0.2f}",
            f"xbzrle overflow: {x.overflow}",
        ]
    if info.compression is not None:
        c = info.compression
        lines += [
            f"compression pages: {c.pages} pages",
            f"compression busy: {c.busy}",
            f"compression busy rate: {c.busy_rate:0.2f}",
            f"compressed size: {c.compressed_size >> 10} kbytes",
            f"compression rate: {c.compression_rate:0.2f}",
        ]
    if info.cpu_throttle_percentage is not None:
        lines.append(f"cpu throttle percentage: {info.cpu_throttle_percentage}")
    if info.postcopy_blocktime is not None:
        lines.append(f"postcopy blocktime: {info.postcopy_blocktime}")
    if info.postcopy_vcpu_blocktime is not None:
        lines.append(f"postcopy vcpu blocktime: {int_list(info.postcopy_vcpu_blocktime)}")
    if info.socket_address is not None:
        lines += ["socket address: [", *(f"\t{addr}" for addr in info.socket_address), "]"]
    return "".join(line + "\n" for line in lines)


def info_compress_policy(info: PolicyInfo) -> str:
    """`info x_compress_policy` (ours): the adaptive policy's measurements and choice."""
    if not info.enabled:
        return "policy: off (migrate_set_capability x-compress-auto on)\n"
    choice = f"compress, level {info.level}" if info.compress else "send pages uncompressed"
    link = f"{info.link_bps / 1e6:.1f} MB/s ({info.link_source})" if info.link_bps else "-"
    return (
        f"policy: adaptive\n"
        f"choice: {choice}\n"
        f"link: {link}\n"
        f"compressors: {info.compress_bps / 1e6:.1f} MB/s of RAM, ratio {info.ratio:.2f}\n"
        f"expected throughput raw: {info.raw_estimate / 1e6:.1f} MB/s of RAM\n"
        f"expected throughput compressed: {info.compressed_estimate / 1e6:.1f} MB/s of RAM\n"
        f"changes: {info.switches}\n"
    )


def int_list(values: tuple[int, ...]) -> str:
    """QEMU's string output visitor on a list of integers: the set of values, in order, each
    run of consecutive ones as ``first-last`` (``0,404``; two zeros are ``0``)."""
    runs: list[list[int]] = []
    for value in sorted(set(values)):
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
