"""Filling guest RAM at start: fast paths that must keep the content (engine/content.py) as is.

The idle fill touches only the pages it makes non-zero, copies each run of pages from its
kind's pool, and draws from skewed distributions through a guide table; these tests hold
each of those to what it replaced, and the calibration table in the module docstring to the
bytes the generators now produce.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import re
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
import zstandard
from zlib_ng import zlib_ng

from engine import content
from engine.guest import PAGE_SIZE, GuestRam
from engine.workload import Workload

MiB = 1024 * 1024


def fill_rng(seed: int) -> np.random.Generator:
    """The generator Workload.fill seeds (checked against it below)."""
    return np.random.Generator(np.random.SFC64([seed, 0]))


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
    ram = GuestRam(8 * MiB)
    ram.use_small_pages()  # as the idle fill does (else a huge page would hold the range)
    ram.populate(100, 164)
    assert np.flatnonzero(resident(ram)).tolist() == list(range(100, 164))
    assert not ram.page_array[100:164].any()  # faulted in as zero pages, nothing written
    ram.close()


# -- the guide-table sampler --------------------------------------------------------------------


def chi2(counts: np.ndarray, weights: np.ndarray) -> tuple[float, int]:
    expected = weights / weights.sum() * counts.sum()
    big = expected > 5
    return float(((counts[big] - expected[big]) ** 2 / expected[big]).sum()), int(big.sum()) - 1


@pytest.mark.parametrize("weights", [content._zipf(6000), content._zipf(13, 1.0), np.ones(3)])
def test_dist_draws_in_proportion_to_its_weights(weights: np.ndarray) -> None:
    draws = content._Dist(weights)(np.random.Generator(np.random.SFC64(1)), 2_000_000)
    assert draws.min() >= 0 and draws.max() < weights.size
    stat, dof = chi2(np.bincount(draws, minlength=weights.size), weights)
    assert stat < dof + 5 * np.sqrt(2 * dof)  # 5 sigma: fixed seed, never by chance


def test_dist_which_picks_the_distribution_per_draw() -> None:
    prose = np.array([80, 6, 1, 7, 6, 0, 0, 0, 0, 0, 0], dtype=float)
    source = np.array([40, 8, 2, 6, 1, 10, 10, 3, 8, 6, 6], dtype=float)
    rng = np.random.Generator(np.random.SFC64(2))
    which = rng.random(1_000_000) < 0.3
    draws = content._Dist(prose, source)(rng, which.size, which)
    assert not np.isin(draws[~which], np.flatnonzero(prose == 0)).any()  # weight 0: never
    for sel, weights in ((~which, prose), (which, source)):
        stat, dof = chi2(np.bincount(draws[sel], minlength=weights.size), weights)
        assert stat < dof + 5 * np.sqrt(2 * dof)


# -- the calibration table ----------------------------------------------------------------------

TABLE_ROW = re.compile(r"^(text|binary|data|all)\s+(\d+)\s+([\d.]+)\s+([\d.]+)x\s+([\d.]+)x$")


def test_the_docstring_table_is_what_the_generators_give(
    calibrated: tuple[GuestRam, content.Layout],
) -> None:
    """Each kind's pages and per-page ratios, as printed (zlib-1 compressed/original, the
    others original/compressed), so a change to the content shows in the table."""
    ram, layout = calibrated
    kinds = page_kinds(ram, layout)
    rows = [TABLE_ROW.match(line) for line in (content.__doc__ or "").splitlines()]
    table = {m[1]: m.groups()[1:] for m in rows if m}
    assert list(table) == ["text", "binary", "data", "all"]
    zstd = zstandard.ZstdCompressor(level=1)
    for name, sel in zip(table, (kinds == 0, kinds == 1, kinds == 2, kinds >= 0), strict=True):
        pages = [p.tobytes() for p in ram.page_array[sel]]
        size = len(pages) * PAGE_SIZE
        measured = (
            str(len(pages)),
            f"{sum(len(zlib.compress(p, 1)) for p in pages) / size:.3f}",
            f"{size / sum(len(zlib_ng.compress(p, 1)) for p in pages):.2f}",
            f"{size / sum(len(zstd.compress(p)) for p in pages):.2f}",
        )
        assert measured == table[name], name
