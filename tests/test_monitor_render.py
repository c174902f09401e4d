"""`info` renderers: hand-built snapshots must print exactly what QEMU 7.2 printed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from engine.params import CAPS_BY_NAME, PARAMETERS, MigrationConfig
from engine.snapshot import CompressionStats, MigrationInfo, RamStats, StatusInfo
from engine.state import MigrationStatus, RunState
from hmp.monitor import render

ORACLE = Path(__file__).parent / "data" / "qemu-7.2"
# Sessions recorded on real QEMU 7.2 by the reference study (copied here with its notes).
REFERENCE = ORACLE / "reference"
KiB = 1024


def recorded(path: Path, command: str, nth: int = 0) -> str:
    """The output of the ``nth`` ``(qemu) command`` in a transcript (annotations dropped)."""
    blocks, current = [], None
    for line in path.read_text().splitlines():
        if line.startswith("(qemu) "):
            current = [] if line == f"(qemu) {command}" else None
            if current is not None:
                blocks.append(current)
        elif current is not None and not line.startswith("# "):
            current.append(line + "\n")
    return "".join(blocks[nth])


def transcript(name: str) -> Path:
    return REFERENCE / name


def ram(**overrides: int | float) -> RamStats:
    """Figures of the 32M-capped blob migration; ``+ 1023`` checks QEMU's truncating >> 10."""
    figures: dict[str, int | float] = dict(
        transferred=49172 * KiB + 1023,
        remaining=453484 * KiB,
        total=524808 * KiB,
        duplicate=5574,
        skipped=0,
        normal=12257,
        normal_bytes=12257 * 4096,
        dirty_sync_count=1,
        page_size=4096,
        multifd_bytes=0,
        pages_per_second=11514,
        mbps=265.83,
        downtime_bytes=49172 * KiB + 7,
    )
    figures.update(overrides)
    return RamStats(**figures)  # type: ignore[arg-type]


def test_active_and_cancelling() -> None:
    path = transcript("migrate_cancel.txt")
    active = MigrationInfo(
        status=MigrationStatus.ACTIVE,
        total_time=1501,
        expected_downtime=300,
        setup_time=1,
        ram=ram(),
    )
    assert render.info_migrate(active) == recorded(path, "info migrate", 0)
    cancelling = replace(active, status=MigrationStatus.CANCELLING, total_time=1503)
    assert render.info_migrate(cancelling) == recorded(path, "info migrate", 1)


def test_cancelled_prints_zero_total_time() -> None:
    path = transcript("migrate_cancel.txt")
    info = MigrationInfo(status=MigrationStatus.CANCELLED)
    assert render.info_migrate(info) == recorded(path, "info migrate", 2)


def test_failed_with_error() -> None:
    path = transcript("migrate_kill_destination.txt")
    info = MigrationInfo(
        status=MigrationStatus.FAILED, error_desc="Unable to write to socket: Broken pipe"
    )
    assert render.info_migrate(info) == recorded(path, "info migrate", 1)


def test_failed_without_error_has_no_suffix() -> None:
    text = render.info_migrate(MigrationInfo(status=MigrationStatus.FAILED))
    assert text.endswith("Migration status: failed\ntotal time: 0 ms\n")
    assert recorded(ORACLE / "migrate_errors.txt", "info migrate", 0) == text


def completed(
    total_time: int, kbytes: int, mbps: float, zero: int, normal: int, pps: int
) -> MigrationInfo:
    """A finished source: downtime and setup 1 ms, three syncs, everything sent in downtime."""
    figures = dict(transferred=kbytes * KiB, remaining=0, downtime_bytes=kbytes * KiB + 100)
    return MigrationInfo(
        status=MigrationStatus.COMPLETED,
        total_time=total_time,
        downtime=1,
        setup_time=1,
        ram=ram(**figures, mbps=mbps, duplicate=zero, normal=normal, normal_bytes=normal * 4096,
                dirty_sync_count=3, pages_per_second=pps),
    )  # fmt: skip


def test_completed() -> None:
    path = transcript("raw_hmp_socket_blocking_migrate.txt")
    info = completed(2116, 276434, 1071.13, 62365, 68837, 47010)
    assert render.info_migrate(info) == recorded(path, "info migrate", 0)


def test_active_and_completed_with_compression() -> None:
    path = transcript("migrate_ok_blob_32M_compress_on_t2_d1_polled.txt")
    active = MigrationInfo(
        status=MigrationStatus.ACTIVE,
        total_time=209,
        expected_downtime=300,
        setup_time=1,
        ram=ram(
            transferred=2594 * KiB,
            mbps=106.65,
            remaining=514864 * KiB,
            duplicate=814,
            normal=0,
            normal_bytes=0,
            pages_per_second=13402,
            downtime_bytes=2594 * KiB,
        ),
        compression=CompressionStats(1673, 0, 0.0, 2574 * KiB + 1000, 0.0),
    )
    assert render.info_migrate(active) == recorded(path, "info migrate", 0)
    done = replace(
        completed(7104, 117194, 135.29, 62377, 3, 119862),
        compression=CompressionStats(68840, 0, 0.0, 116095 * KiB, 2.372),
    )
    assert render.info_migrate(done) == recorded(path, "info migrate", -2)
    dst = MigrationInfo(status=MigrationStatus.COMPLETED)
    assert render.info_migrate(dst) == recorded(path, "info migrate", -1)


def test_destination_listening_and_defer() -> None:
    path = transcript("dst_incoming_defer.txt")
    assert render.info_migrate(MigrationInfo()) == recorded(path, "info migrate", 0)
    listening = MigrationInfo(socket_address=("tcp:127.0.0.1:44463",))
    assert render.info_migrate(listening) == recorded(path, "info migrate", 1)


def test_conditional_ram_lines_and_throttle() -> None:
    info = MigrationInfo(
        status=MigrationStatus.ACTIVE,
        total_time=5,
        expected_downtime=300,
        setup_time=1,
        ram=ram(
            dirty_pages_rate=1234,
            postcopy_requests=2,
            precopy_bytes=10 * KiB,
            postcopy_bytes=3 * KiB,
            dirty_sync_missed_zero_copy=4,
        ),
        cpu_throttle_percentage=30,
    )
    tail = render.info_migrate(info).split("pages-per-second: 11514\n")[1]
    assert tail == (
        "dirty pages rate: 1234 pages\n"
        "postcopy request count: 2\n"
        "precopy ram: 10 kbytes\n"
        "downtime ram: 49172 kbytes\n"
        "postcopy ram: 3 kbytes\n"
        "Zero-copy-send fallbacks happened: 4 times\n"
        "cpu throttle percentage: 30\n"
    )


def test_setup_prints_only_status_and_time() -> None:
    text = render.info_migrate(MigrationInfo(status=MigrationStatus.SETUP))
    assert text.endswith("clear-bitmap-shift: 18\nMigration status: setup\ntotal time: 0 ms\n")


@pytest.mark.parametrize(
    ("info", "line"),
    [
        (StatusInfo(True, RunState.RUNNING), "VM status: running\n"),
        (StatusInfo(False, RunState.PAUSED), "VM status: paused\n"),
        (StatusInfo(False, RunState.PRELAUNCH), "VM status: paused (prelaunch)\n"),
        (StatusInfo(False, RunState.INMIGRATE), "VM status: paused (inmigrate)\n"),
        (StatusInfo(False, RunState.POSTMIGRATE), "VM status: paused (postmigrate)\n"),
        (StatusInfo(False, RunState.FINISH_MIGRATE), "VM status: paused (finish-migrate)\n"),
    ],
)
def test_info_status(info: StatusInfo, line: str) -> None:
    assert render.info_status(info) == line


def test_default_capabilities_and_parameters() -> None:
    config = MigrationConfig()
    expected = recorded(ORACLE / "defaults_prelaunch.txt", "info migrate_capabilities")
    qemus = {n: on for n, on in config.capabilities().items() if not CAPS_BY_NAME[n].extension}
    assert render.info_migrate_capabilities(qemus) == expected
    expected = recorded(ORACLE / "defaults_prelaunch.txt", "info migrate_parameters")
    assert render.info_migrate_parameters(config.params()) == expected
    assert len(qemus) == 21
    assert not any(p.printed for p in PARAMETERS if p.extension)
