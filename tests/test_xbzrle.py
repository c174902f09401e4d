"""XBZRLE: the C codec, QEMU's page-cache policy, the stream's checks and real migrations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streams import guest, record_stream
from test_machine import SIZE, MiB, dest, make, migrate
from test_stream import batch_record, expect_failure, inject

from engine import wire
from engine.errors import MigrationError
from engine.guest import PAGE_SIZE, GuestRam
from engine.machine import Machine
from engine.xbzrle import MISS, OVERFLOW, PageCache, decode_into

PAGES = 8


def reference_decode(delta: bytes, page: bytes) -> bytes | None:
    """docs/xbzrle.txt read literally: the page ``delta`` makes of ``page``, or None when the
    delta is malformed (a run past the page, an empty run, a ULEB128 longer than two bytes)."""
    out, i, d = bytearray(page), 0, 0

    def uleb() -> int | None:
        nonlocal i
        if i < len(delta) and delta[i] < 0x80:
            i += 1
            return delta[i - 1]
        if i + 1 < len(delta) and delta[i + 1] < 0x80:
            i += 2
            return (delta[i - 2] & 0x7F) | delta[i - 1] << 7
        return None

    while i < len(delta):
        first = i == 0
        zrun = uleb()
        if zrun is None or (zrun == 0 and not first):
            return None
        nzrun = uleb()
        if not nzrun or d + zrun + nzrun > PAGE_SIZE or i + nzrun > len(delta):
            return None
        d += zrun
        out[d : d + nzrun] = delta[i : i + nzrun]
        d += nzrun
        i += nzrun
    return bytes(out)


@pytest.fixture
def ram() -> GuestRam:
    ram = GuestRam(PAGES * PAGE_SIZE, huge=False)
    rng = np.random.default_rng(11)
    ram.array[:] = rng.integers(0, 256, ram.size, dtype=np.uint8)
    return ram


def pages(*numbers: int) -> np.ndarray:
    return np.asarray(numbers, dtype=np.intp)


def test_first_send_is_a_miss_then_sparse_change_is_a_delta(ram):
    cache = PageCache(PAGES * PAGE_SIZE)
    first = cache.encode(ram, pages(0, 1), age=1, last=False)
    assert first.status == [MISS, MISS]
    assert first.raw == bytes(ram.buf[: 2 * PAGE_SIZE]) and first.deltas == b""
    before = bytes(ram.buf[:PAGE_SIZE])
    ram.array[5] ^= 0xFF
    ram.array[200:203] ^= 0x01
    enc = cache.encode(ram, pages(0, 1), age=2, last=False)
    # zero run 5, one byte; zero run 194 (ULEB128 0xc2 0x01), three bytes; page 1 unchanged.
    assert enc.deltas == b"\x05\x01" + bytes(ram.buf[5:6]) + b"\xc2\x01\x03" + bytes(
        ram.buf[200:203]
    )
    assert enc.status == [len(enc.deltas), 0]
    assert enc.crcs == ram.crc_pages(pages(0, 1)).tolist()
    target = GuestRam(PAGES * PAGE_SIZE, huge=False)
    target.buf[:PAGE_SIZE] = before
    assert decode_into(target, [0], memoryview(enc.deltas), [len(enc.deltas)]) == enc.crcs[:1]
    assert bytes(target.buf[:PAGE_SIZE]) == bytes(ram.buf[:PAGE_SIZE])


def test_identical_page_encodes_to_nothing_and_a_rewritten_one_overflows(ram):
    cache = PageCache(PAGES * PAGE_SIZE)
    cache.encode(ram, pages(2, 3), age=1, last=False)
    ram.array[3 * PAGE_SIZE : 4 * PAGE_SIZE] ^= 0x5A  # every byte differs
    enc = cache.encode(ram, pages(2, 3), age=2, last=False)
    assert enc.status == [0, OVERFLOW]
    assert enc.raw == bytes(ram.buf[3 * PAGE_SIZE : 4 * PAGE_SIZE]) and enc.deltas == b""
    # The cache took the overflowing page's new contents: the next change is small again.
    ram.array[3 * PAGE_SIZE] ^= 1
    assert cache.encode(ram, pages(3), age=3, last=False).status == [3]


def test_random_round_trips_against_the_reference_decoder(ram):
    rng = np.random.default_rng(5)
    cache = PageCache(PAGES * PAGE_SIZE)
    all_pages = pages(*range(PAGES))
    held = GuestRam(PAGES * PAGE_SIZE, huge=False)  # what the destination holds
    held.buf[:] = ram.buf
    cache.encode(ram, all_pages, age=1, last=False)
    for age in range(2, 40):
        for _ in range(int(rng.integers(1, 200))):  # scattered runs of changed bytes
            at = int(rng.integers(0, ram.size - 64))
            ram.array[at : at + int(rng.integers(1, 64))] = rng.integers(0, 256, 1)
        enc = cache.encode(ram, all_pages, age=age, last=False)
        status = np.asarray(enc.status)
        at, whole = 0, 0
        for k, s in enumerate(enc.status):
            page = slice(k * PAGE_SIZE, (k + 1) * PAGE_SIZE)
            if s > 0:
                delta = enc.deltas[at : at + s]
                assert reference_decode(delta, bytes(held.buf[page])) == bytes(ram.buf[page])
                at += s
            elif s == OVERFLOW:
                held.buf[page] = enc.raw[whole * PAGE_SIZE : (whole + 1) * PAGE_SIZE]
                whole += 1
        hits = all_pages[status > 0]
        sizes = status[status > 0].tolist()
        decode_into(held, hits.tolist(), memoryview(enc.deltas), sizes)
        assert bytes(held.buf) == bytes(ram.buf)


def test_cache_keeps_a_fresh_page_and_evicts_an_old_one(ram):
    """One slot, two pages: QEMU's page_cache.c keeps an entry used within two syncs."""
    cache = PageCache(PAGE_SIZE)
    assert cache.encode(ram, pages(0), age=1, last=False).status == [MISS]
    assert cache.encode(ram, pages(4), age=2, last=False).status == [MISS]  # 0 stays
    assert cache.encode(ram, pages(0), age=2, last=False).status == [0]  # a hit; age 2 now
    assert cache.encode(ram, pages(4), age=4, last=False).status == [MISS]  # 0 evicted
    assert cache.encode(ram, pages(4), age=4, last=False).status == [0]
    assert cache.encode(ram, pages(0), age=5, last=False).status == [MISS]


def test_last_stage_reads_the_cache_only(ram):
    cache = PageCache(PAGES * PAGE_SIZE)
    assert cache.encode(ram, pages(1), age=1, last=True).status == [MISS]
    assert cache.encode(ram, pages(1), age=2, last=True).status == [MISS]  # never inserted
    cache.encode(ram, pages(1), age=3, last=False)
    ram.array[PAGE_SIZE] ^= 1
    assert cache.encode(ram, pages(1), age=4, last=True).status == [3]
    assert cache.encode(ram, pages(1), age=5, last=True).status == [3]  # cache unchanged


def test_zero_page_replaces_the_cached_copy(ram):
    cache = PageCache(PAGES * PAGE_SIZE)
    cache.encode(ram, pages(6), age=1, last=False)
    cache.cache_zero(pages(6), age=2)
    ram.array[6 * PAGE_SIZE : 7 * PAGE_SIZE] = 0
    ram.array[6 * PAGE_SIZE + 10] = 7
    assert cache.encode(ram, pages(6), age=3, last=False).status == [3]  # against zeros


@settings(max_examples=400, derandomize=True, deadline=None)
@given(
    delta=st.one_of(
        st.binary(min_size=1, max_size=64),
        st.lists(
            st.tuples(st.integers(0, 5000), st.binary(min_size=0, max_size=300)), max_size=8
        ).map(lambda runs: b"".join(_uleb(z) + _uleb(len(b)) + b for z, b in runs)),
    )
)
def test_hostile_delta_never_writes_past_its_page(delta: bytes) -> None:
    """Three pages, the delta applied to the middle one: the guards never change, and the
    page is either untouched with a StreamError or exactly what the format says."""
    if not delta or len(delta) > PAGE_SIZE:
        return  # the batch header refuses these before a delta is read
    ram = GuestRam(3 * PAGE_SIZE, huge=False)
    ram.array[:] = 0xEE
    before = bytes(ram.buf)
    expected = reference_decode(delta, before[PAGE_SIZE : 2 * PAGE_SIZE])
    try:
        decode_into(ram, [1], memoryview(delta), [len(delta)])
    except wire.StreamError as exc:
        assert str(exc) == "Failed to load XBZRLE page - decode error!"
        assert expected is None and bytes(ram.buf) == before
    else:
        assert expected is not None
        assert bytes(ram.buf[PAGE_SIZE : 2 * PAGE_SIZE]) == expected
    assert bytes(ram.buf[:PAGE_SIZE]) == before[:PAGE_SIZE]
    assert bytes(ram.buf[2 * PAGE_SIZE :]) == before[2 * PAGE_SIZE :]


def _uleb(n: int) -> bytes:
    return bytes([n]) if n < 0x80 else bytes([(n & 0x7F) | 0x80, (n >> 7) & 0xFF])


# -- the stream --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain() -> bytes:
    return record_stream(guest(8 * MiB, "idle", seed=3))


def test_stream_refuses_a_delta_longer_than_a_page(plain):
    rec = batch_record([0], [wire.Kind.XBZRLE], [PAGE_SIZE + 1], b"\1" * (PAGE_SIZE + 1))
    expect_failure(inject(plain, rec), "Failed to load XBZRLE page - len overflow!")


def test_stream_refuses_an_empty_delta(plain):
    rec = batch_record([0], [wire.Kind.XBZRLE], [0])
    expect_failure(inject(plain, rec), "Failed to load XBZRLE page - decode error!")


def test_stream_refuses_a_run_past_the_page(plain):
    delta = _uleb(4000) + _uleb(200) + b"\xaa" * 200
    rec = batch_record([0], [wire.Kind.XBZRLE], [len(delta)], delta)
    expect_failure(inject(plain, rec), "Failed to load XBZRLE page - decode error!")


def test_stream_refuses_a_batch_mixing_blob_kinds(plain):
    rec = batch_record([0, 1], [wire.Kind.XBZRLE, wire.Kind.COMPRESSED], [3, 8], b"\0" * 11)
    expect_failure(inject(plain, rec), "page batch mixes compressed and XBZRLE pages")


def test_a_valid_delta_changes_the_page_and_the_digest_catches_it(plain):
    """A well-formed delta the source never sent is applied: then the digest disagrees."""
    delta = _uleb(0) + _uleb(1) + b"\x01"
    rec = batch_record([0], [wire.Kind.XBZRLE], [3], delta)
    expect_failure(inject(plain, rec), "RAM digest mismatch")


# -- real migrations ----------------------------------------------------------------------------
class Dirtier:
    """Rewrites a word in each of ``count`` non-zero pages at each of the first ``passes``
    bitmap syncs, from the migration thread's MIGRATION_PASS event: the pages are dirty for
    the next sync, whatever the timing, so each pass after the first resends them."""

    def __init__(
        self, src: Machine, count: int, passes: int, on_pass: Callable[[int], None] | None = None
    ) -> None:
        nonzero = np.flatnonzero(~src.ram.zero_mask(np.arange(src.ram.pages)))
        self.pages = nonzero[:: max(1, len(nonzero) // count)][:count]
        self.passes = passes
        self.on_pass = on_pass or (lambda n: None)
        src.events.subscribe(self._on)
        self.src = src

    def _on(self, name: str, data: dict[str, Any]) -> None:
        if name != "MIGRATION_PASS" or data["pass"] > self.passes:
            return
        word = np.uint64(data["pass"] * 0x0101010101010101)
        for page in self.pages.tolist():
            at = page * PAGE_SIZE + 64
            self.src.ram.write(at, word.tobytes())
        self.on_pass(data["pass"])


def xbzrle_pair(machines, **caps: bool) -> tuple[Machine, Machine, str]:
    dst, uri = dest(machines)
    dst.set_capabilities({"xbzrle": True, **caps})
    src = make(machines, workload="idle", seed=21, start_paused=True)
    src.set_capabilities({"xbzrle": True, **caps})
    # A threshold of a few pages: every pass the dirtier made must be sent before completion.
    # The limiter makes the first pass (~5 MiB raw, ~2 MiB compressed) span several 100 ms
    # windows, so a threshold is measured before it ends: a few pages at 1 ms of downtime.
    src.set_parameters({"downtime-limit": 1, "max-bandwidth": 4 * MiB})
    return src, dst, uri


def test_dirtying_guest_migrates_with_deltas(machines):
    src, dst, uri = xbzrle_pair(machines)
    dirtier = Dirtier(src, count=256, passes=5)
    migrate(src, dst, uri)  # RAM equal on both sides, digest verified
    info = src.query_migrate()
    x = info.xbzrle_cache
    assert x is not None and info.ram is not None
    assert x.cache_size == 64 * MiB
    # The dirtier writes pass n's word before pass n's pages go. Pass 2 sends them whole
    # (misses: they enter the cache); passes 3-5 as deltas of one word; pass 6 finds them as
    # pass 5 left them: cache hits that are not sent at all.
    assert x.cache_miss == len(dirtier.pages)
    assert x.pages == 4 * len(dirtier.pages)
    assert x.overflow == 0
    # Each delta: a zero run, a run, the word; our framing: a kind byte and a u32 length.
    assert x.bytes == 3 * len(dirtier.pages) * (1 + 1 + 8 + 5)
    assert info.ram.dirty_sync_count >= 6


def test_resize_during_migration_empties_the_cache(machines):
    src, dst, uri = xbzrle_pair(machines)

    def resize(n: int) -> None:
        if n == 3:  # the pages of pass 3 are found dirty but not sent yet
            src.set_parameters({"xbzrle-cache-size": SIZE})  # a slot per page: no collision
            seen.append(src.query_migrate().xbzrle_cache)

    seen: list[Any] = []
    dirtier = Dirtier(src, count=64, passes=5, on_pass=resize)
    migrate(src, dst, uri)
    x = src.query_migrate().xbzrle_cache
    assert x is not None and x.cache_size == SIZE
    assert seen[0].cache_size == SIZE  # shown at once, as QEMU's resize is
    # Pass 2 misses; the cache resized before pass 3 is sent is empty: pass 3 misses again,
    # and passes 4-6 hit the new cache (6 unchanged, see above).
    assert x.cache_miss == 2 * len(dirtier.pages)
    assert x.pages == 3 * len(dirtier.pages)


def test_resize_refuses_what_qemu_refuses(machines):
    src = make(machines)
    with pytest.raises(MigrationError, match="expects a power of two no less than the target"):
        src.set_parameters({"xbzrle-cache-size": 3 * MiB})


def test_compress_takes_the_first_pass_and_xbzrle_the_rest(machines):
    """QEMU 7.2 stops compressing once xbzrle starts (save_page_use_compression)."""
    src, dst, uri = xbzrle_pair(machines, compress=True)
    dirtier = Dirtier(src, count=128, passes=4)
    migrate(src, dst, uri)
    info = src.query_migrate()
    assert info.compression is not None and info.xbzrle_cache is not None and info.ram
    first_pass = SIZE // PAGE_SIZE - info.ram.duplicate
    assert info.compression.pages == first_pass
    assert info.xbzrle_cache.pages == 3 * len(dirtier.pages)
    assert info.ram.normal == len(dirtier.pages)  # the misses of pass 2


def test_a_cache_that_cannot_be_allocated_fails_the_migration_clearly():
    with pytest.raises(MigrationError, match="xbzrle: cannot allocate a page cache of"):
        PageCache(1 << 62)
