"""Workloads: spec parsing, deterministic content with realistic compressibility, writers."""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
import zlib
from collections.abc import Iterator

import numpy as np
import pytest

from engine.guest import PAGE_SIZE, GuestRam, VcpuGate
from engine.workload import (
    DEFAULT_RATE,
    Pace,
    RandomWriter,
    Workload,
    WorkloadSpec,
    throttle_nap,
)

MiB = 1024 * 1024


def digest(ram: GuestRam) -> str:
    return hashlib.sha256(ram.buf).hexdigest()


def nonzero_mask(ram: GuestRam) -> np.ndarray:
    return ram.page_array.view(np.uint64).any(axis=1)


@pytest.fixture
def ram() -> Iterator[GuestRam]:
    guest = GuestRam(32 * MiB)
    yield guest
    guest.close()


@pytest.fixture(scope="module")
def idle_ram() -> Iterator[GuestRam]:
    guest = GuestRam(128 * MiB)
    Workload("idle", 0).fill(guest)
    yield guest
    guest.close()


# -- spec ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("idle", WorkloadSpec("idle")),
        ("zero", WorkloadSpec("zero")),
        ("random", WorkloadSpec("random")),
        ("random-writer", WorkloadSpec("random-writer", DEFAULT_RATE, None)),
        ("random-writer,rate=1000", WorkloadSpec("random-writer", 1000, None)),
        ("random-writer,wss=64M,rate=5", WorkloadSpec("random-writer", 5, 64 * MiB)),
        ("random-writer,wss=1G", WorkloadSpec("random-writer", DEFAULT_RATE, 1 << 30)),
        ("random-writer,wss=8192", WorkloadSpec("random-writer", DEFAULT_RATE, 8192)),
        ("idle,rate=500,wss=8M", WorkloadSpec("idle", 500, 8 * MiB)),
    ],
)
def test_parse(text: str, spec: WorkloadSpec) -> None:
    assert WorkloadSpec.parse(text) == spec
    assert WorkloadSpec.parse(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "unknown workload '' (choose from idle, random-writer, zero, random)"),
        ("busy", "unknown workload 'busy' (choose from idle, random-writer, zero, random)"),
        ("zero,rate=5", "workload 'zero' has no option 'rate'"),
        ("idle,rate=0", "workload rate must be positive, not 0"),
        ("random-writer,speed=5", "workload 'random-writer' has no option 'speed'"),
        ("random-writer,rate", "workload option 'rate' is not key=value"),
        ("random-writer,", "workload option '' is not key=value"),
        ("random-writer,rate=1,rate=2", "workload option 'rate' given twice"),
        ("random-writer,rate=fast", "workload rate 'fast' is not an integer"),
        ("random-writer,rate=0", "workload rate must be positive, not 0"),
        ("random-writer,wss=lots", "invalid size 'lots'"),
        ("random-writer,wss=-1M", "invalid size '-1M'"),
        ("random-writer,wss=100", "workload wss must be at least 4096 bytes"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        WorkloadSpec.parse(text)
    assert str(err.value) == message


def test_wss_is_spelled_as_qemu_spells_sizes() -> None:
    """The same parser as -m and the monitor's sizes (QEMU's qemu_strtosz)."""
    for text, size in [("4096", 4096), ("64k", 64 * 1024), ("1.5G", 3 << 29), ("0x2000", 8192)]:
        assert WorkloadSpec.parse(f"idle,rate=1,wss={text}").wss == size
    with pytest.raises(ValueError, match=r"invalid size '1\.5'"):
        WorkloadSpec.parse("idle,rate=1,wss=1.5")  # a fraction needs a unit, as in QEMU


# -- content ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["idle", "random", "random-writer"])
def test_fill_is_deterministic(name: str) -> None:
    rams = [GuestRam(16 * MiB) for _ in range(3)]
    for guest, seed in zip(rams, (7, 7, 8), strict=True):
        Workload(name, seed).fill(guest)
    a, b, c = (digest(guest) for guest in rams)
    assert a == b
    assert a != c
    for guest in rams:
        guest.close()


def test_idle_layout(idle_ram: GuestRam) -> None:
    mask = nonzero_mask(idle_ram)
    assert mask.mean() == pytest.approx(0.15, abs=0.002)
    # Non-zero pages come in runs of 1-64 pages, not scattered one by one.
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    runs = edges[1::2] - edges[0::2]
    assert runs.min() >= 1
    assert runs.max() <= 64
    assert 10 <= runs.mean() <= 20
    # Every non-zero page is distinct (pool pages are stamped with their page number).
    pages = idle_ram.page_array[mask]
    assert len({hashlib.blake2b(p.tobytes(), digest_size=16).digest() for p in pages}) == len(pages)


def test_idle_compresses_like_os_memory(idle_ram: GuestRam) -> None:
    """stdlib zlib level 1, page by page, shrinks real OS memory to 42-45%."""
    pages = idle_ram.page_array[nonzero_mask(idle_ram)]
    packed = sum(len(zlib.compress(p.tobytes(), 1)) for p in pages)
    assert 0.42 <= packed / pages.nbytes <= 0.45


def test_random_is_incompressible() -> None:
    guest = GuestRam(8 * MiB)
    Workload("random", 3).fill(guest)
    assert nonzero_mask(guest).all()
    sample = [p.tobytes() for p in guest.page_array[::16]]
    assert sum(len(zlib.compress(p, 1)) for p in sample) >= len(sample) * PAGE_SIZE
    guest.close()


def test_zero_touches_nothing(ram: GuestRam) -> None:
    ram.start_dirty_log()
    ram.array.flags.writeable = False  # any store through the numpy views would raise
    ram.page_array.flags.writeable = False
    workload = Workload("zero", 1)
    workload.fill(ram)
    workload.start(ram, VcpuGate(True))
    assert workload.writer is None
    assert not ram.take_dirty().any()
    assert not nonzero_mask(ram).any()


# -- the writer ---------------------------------------------------------------------------------


def test_writer_dirties_only_its_working_set(ram: GuestRam) -> None:
    workload = Workload("random-writer,rate=20000,wss=4M", 5)
    workload.fill(ram)
    before = ram.array.copy()
    ram.start_dirty_log()
    workload.start(ram, VcpuGate(True))
    writer = workload.writer
    assert writer is not None
    ws = writer.working_set
    assert ws.size == 1024
    assert (np.diff(ws) == 1).all()  # one allocation
    assert 0 <= ws[0] and ws[-1] < ram.pages
    assert writer.wait_written(2000, timeout=10)
    workload.stop()
    assert workload.pages_written >= 2000
    dirty = np.flatnonzero(ram.take_dirty())
    assert dirty.size > 0
    assert set(dirty.tolist()) <= set(ws.tolist())
    changed = np.flatnonzero((ram.page_array != before.reshape(ram.pages, PAGE_SIZE)).any(axis=1))
    assert set(changed.tolist()) <= set(dirty.tolist())


def test_idle_background_writes_stay_in_its_own_nonzero_pages(ram: GuestRam) -> None:
    """An idle OS's writes land in pages it already uses, so they compress like the rest."""
    workload = Workload("idle,rate=20000,wss=2M", 5)
    workload.fill(ram)
    used = set(np.flatnonzero(nonzero_mask(ram)).tolist())
    ram.start_dirty_log()
    workload.start(ram, VcpuGate(True))
    writer = workload.writer
    assert writer is not None
    assert writer.working_set.size == 512
    assert set(writer.working_set.tolist()) <= used
    assert writer.wait_written(2000, timeout=10)
    workload.stop()
    dirty = set(np.flatnonzero(ram.take_dirty()).tolist())
    assert dirty and dirty <= set(writer.working_set.tolist())


def test_idle_without_a_rate_writes_nothing(ram: GuestRam) -> None:
    workload = Workload("idle", 5)
    workload.fill(ram)
    ram.start_dirty_log()
    workload.start(ram, VcpuGate(True))
    assert workload.writer is None
    assert not ram.take_dirty().any()


def test_writer_stops_while_paused_and_resumes(ram: GuestRam) -> None:
    gate = VcpuGate(True)
    writer = RandomWriter(ram, gate, 20000, 4 * MiB, (1, 1))
    writer.start()
    assert writer.wait_written(1000, timeout=10)
    gate.set_running(False)
    assert writer.parked.wait(timeout=5)
    held = writer.pages_written
    assert not writer.wait_written(held + 1, timeout=0.3)  # a paused vCPU writes nothing
    gate.set_running(True)
    assert writer.wait_written(held + 1000, timeout=10)
    writer.stop()
    assert not writer.alive


def test_stop_is_prompt_while_paused_and_throttled(ram: GuestRam) -> None:
    for gate in (VcpuGate(False), VcpuGate(True)):
        gate.set_throttle(99)  # ~1 s of throttle sleep per slice when running
        writer = RandomWriter(ram, gate, 1000, 4 * MiB, (1, 1))
        writer.start()
        if not gate.running:
            assert writer.parked.wait(timeout=5)
        begin = time.monotonic()
        writer.stop()
        assert not writer.alive
        assert time.monotonic() - begin < 0.5


def test_pace_owes_rate_per_second_of_running_time() -> None:
    """Late wakeups are made up for (a busy host); paused and throttled time is not."""
    pace = Pace(20000, now=0.0)
    assert pace.owed(0.010, lost=0.0) == 200  # one 10 ms slice
    assert pace.owed(0.035, lost=0.0) == 500  # woke 15 ms late: still owes the 25 ms
    assert pace.owed(0.045, lost=0.010) == 0  # the whole interval paused or asleep
    assert pace.missed == 0


def test_throttle_removes_its_share_of_the_dirty_rate() -> None:
    """A p% throttle sleeps p/(100-p) of each slice: the writes per second of wall time
    fall by exactly p%, at every step, from the first one."""
    slice_s = RandomWriter.SLICE_S
    for pct in (0, 20, 40, 60, 80, 99):
        pace, now, written = Pace(20000, now=0.0), 0.0, 0
        for _ in range(1000):
            nap = throttle_nap(pct, slice_s)
            now += slice_s + nap
            written += pace.owed(now, lost=nap)
        assert written / now == pytest.approx(20000 * (100 - pct) / 100, rel=1e-3)


def test_a_host_too_slow_for_the_rate_is_counted_and_reported(ram: GuestRam) -> None:
    pace = Pace(20000, now=0.0)
    assert pace.owed(1.0, lost=0.0) == 2000  # a second behind: at most 0.1 s caught up
    assert pace.missed == 18000
    reports: list[str] = []
    heard = threading.Event()
    ticks = itertools.count()

    def slow_host() -> float:
        return next(ticks) * 1.0  # a second passes between any two looks at the clock

    def report(message: str) -> None:
        reports.append(message)
        heard.set()

    writer = RandomWriter(
        ram, VcpuGate(True), 1000, 4 * MiB, (3, 1), report=report, clock=slow_host
    )
    writer.start()
    assert heard.wait(timeout=30)
    writer.stop()
    assert not writer.alive
    assert reports == [
        "warning: the guest's writer cannot keep up with 1000 pages/s on this host:"
        " its dirty rate is lower than asked"
    ]
