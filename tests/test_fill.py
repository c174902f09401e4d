"""Filling guest RAM at start: fast paths that must keep the content (engine/content.py) as is.

The idle fill touches only the pages it makes non-zero and copies each run of pages from its
kind's pool; these tests hold each of those to what it replaced.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
from collections.abc import Iterator

import numpy as np
import pytest

from engine import content
from engine.guest import GuestRam
from engine.workload import Workload

MiB = 1024 * 1024


def fill_rng(seed: int) -> np.random.Generator:
    """The generator Workload.fill seeds (checked against it below)."""
    return np.random.Generator(np.random.PCG64([seed, 0]))


@pytest.fixture(scope="module")
def calibrated() -> Iterator[tuple[GuestRam, content.Layout]]:
    """The docstring's guest: 128 MiB, idle, seed 0."""
    ram = GuestRam(128 * MiB)
    layout = content.fill_idle(ram, fill_rng(0))
    yield ram, layout
    ram.close()


def page_kinds(ram: GuestRam, layout: content.Layout) -> np.ndarray:
    kinds = np.full(ram.pages, -1)
    for start, length, kind in zip(*(a.tolist() for a in layout), strict=True):
        kinds[start : start + length] = kind
    return kinds


def test_workload_fill_is_fill_idle_with_its_seeded_generator(
    calibrated: tuple[GuestRam, content.Layout],
) -> None:
    ram = GuestRam(128 * MiB)
    Workload("idle", 0).fill(ram)
    assert np.array_equal(ram.array, calibrated[0].array)
    ram.close()


def test_layout_is_what_is_in_ram(calibrated: tuple[GuestRam, content.Layout]) -> None:
    ram, layout = calibrated
    nonzero = ram.page_array.view(np.uint64).any(axis=1)
    assert np.array_equal(nonzero, page_kinds(ram, layout) >= 0)
    assert int(layout.lens.sum()) == round(ram.pages * content.IDLE_NONZERO)


def test_pool_pages_recur_round_robin_per_kind(
    calibrated: tuple[GuestRam, content.Layout],
) -> None:
    """Page i of a kind (in address order) is pool page i mod the pool's size: a run is slices
    of the pool, wrapping at its end, never the same pool page twice in a row."""
    ram, layout = calibrated
    kinds = page_kinds(ram, layout)
    for k, (_gen, share) in enumerate(content._KINDS):
        pages = np.flatnonzero(kinds == k)
        npool = min(pages.size, round(content.POOL_PAGES * share))
        assert pages.size > npool  # this guest holds each pool more than once
        body = ram.page_array[pages, :-8]  # all but the page-number stamp
        assert np.array_equal(body[npool:], body[: pages.size - npool])
        digests = {hashlib.blake2b(p.tobytes(), digest_size=16).digest() for p in body[:npool]}
        assert len(digests) == npool  # the pool's pages are distinct


def resident(ram: GuestRam) -> np.ndarray:
    """Which pages of guest RAM are in memory (mincore(2))."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    vec = np.zeros(ram.pages, dtype=np.uint8)
    size, out = ctypes.c_size_t(ram.size), vec.ctypes.data_as(ctypes.c_char_p)
    assert libc.mincore(ctypes.c_void_p(ram.array.ctypes.data), size, out) == 0
    return vec & 1 == 1


def test_the_idle_fill_touches_only_the_pages_it_writes() -> None:
    """4 KiB pages: the RAM left zero is never faulted in (with huge pages, each write into
    an untouched 2 MiB region made all of it resident: for an idle guest, all of RAM)."""
    ram = GuestRam(64 * MiB)
    Workload("idle", 3).fill(ram)
    assert np.array_equal(resident(ram), ram.page_array.view(np.uint64).any(axis=1))
    ram.close()


def test_populate_faults_in_the_range_and_no_more() -> None:
    ram = GuestRam(8 * MiB, huge=False)
    ram.populate(100, 164)
    assert np.flatnonzero(resident(ram)).tolist() == list(range(100, 164))
    assert not ram.page_array[100:164].any()  # faulted in as zero pages, nothing written
    ram.close()
