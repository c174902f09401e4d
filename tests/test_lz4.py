"""LZ4 (an extension): `x-compress-method lz4` per page and `multifd-compression x-lz4` per
packet, real migrations, and what a hostile stream gets."""

from __future__ import annotations

import lz4.block
import numpy as np
import pytest
from streams import guest, load_stream, record_stream, settings
from test_machine import dest, make, migrate
from test_stream import SIZE, batch_record, expect_failure, inject

from engine import wire
from engine.compression import CODECS, CompressPool, DecompressPool
from engine.guest import PAGE_SIZE, GuestRam
from engine.multifd import METHODS


@pytest.mark.parametrize("level", [1, 4])
def test_pages_round_trip_through_the_pools(level: int) -> None:
    src = guest(SIZE, "idle", seed=11)
    src.page_array[7] = np.frombuffer(np.random.default_rng(1).bytes(PAGE_SIZE), np.uint8)
    pages = np.arange(src.pages)
    pages = pages[~src.zero_mask(pages)]
    pool = CompressPool(CODECS["lz4"], level, 2, src)
    dst = GuestRam(SIZE)
    workers = DecompressPool(CODECS["lz4"], 2, dst)
    try:
        chunk = pool.compress(pages).result()
        crcs = workers.decompress(pages, memoryview(chunk.data), chunk.sizes).result()
    finally:
        pool.close()
        workers.close()
    assert crcs == chunk.crcs == src.crc_pages(pages).tolist()
    assert bytes(dst.buf) == bytes(src.buf)
    assert len(chunk.data) < len(pages) * PAGE_SIZE * 0.7  # the idle guest's text shrinks
    assert max(chunk.sizes) > PAGE_SIZE  # the random page grew a little, and still decodes


@pytest.fixture(scope="module")
def lz4_stream() -> bytes:
    return record_stream(guest(SIZE, "idle", seed=3), settings(compress=True, method="lz4"))


def test_an_lz4_stream_loads(lz4_stream: bytes) -> None:
    outcome, _ = load_stream(lz4_stream, SIZE, compress=True, method="lz4")
    assert not isinstance(outcome, Exception), outcome


@pytest.mark.parametrize(
    "block",
    [
        b"\xab" * 64,  # garbage
        lz4.block.compress(b"x" * 100, store_size=False),  # decodes to less than a page
        lz4.block.compress(bytes(1 << 20), store_size=False),  # a bomb: more than a page
    ],
    ids=["garbage", "short", "bomb"],
)
def test_a_bad_lz4_block_fails_the_stream(lz4_stream: bytes, block: bytes) -> None:
    assert len(block) <= wire.MAX_COMPRESSED
    rec = batch_record([0], [wire.Kind.COMPRESSED], [len(block)], block)
    expect_failure(inject(lz4_stream, rec), "decompress data failed", compress=True, method="lz4")


def test_the_method_must_match() -> None:
    stream = record_stream(guest(SIZE, "idle", seed=3), settings(compress=True, method="lz4"))
    expect_failure(stream, "compress method mismatch: source lz4, destination zlib", compress=True)


@pytest.mark.parametrize("level", [1, 5])
def test_multifd_lz4_packets_round_trip_and_refuse_bad_ones(level: int) -> None:
    codec = METHODS["x-lz4"]
    assert codec.packer is not None and codec.unpacker is not None
    data = bytes(range(256)) * 32 + bytes(PAGE_SIZE)  # three pages
    src, dst, pages = GuestRam(4 * PAGE_SIZE), GuestRam(4 * PAGE_SIZE), np.array([1, 2, 3])
    src.buf[PAGE_SIZE:] = data
    unpack = codec.unpacker(1)
    payload, crcs = codec.packer(level, 1)(src, pages)
    assert (unpack(dst, pages, bytearray(payload)) == crcs).all()
    assert dst.buf[PAGE_SIZE:] == data
    with pytest.raises(wire.StreamError, match="decompress data failed"):
        unpack(dst, pages, bytearray(lz4.block.compress(data[:100], store_size=False)))
    with pytest.raises(wire.StreamError, match="decompress data failed"):
        unpack(dst, pages, bytearray(b"\xff\x00garbage"))


@pytest.mark.parametrize("multifd", [False, True])
def test_lz4_migrations(machines, multifd: bool) -> None:
    dst, uri = dest(machines)
    src = make(machines, workload="random-writer,rate=2000,wss=8M", seed=9)
    for m in (src, dst):
        if multifd:
            m.set_capabilities({"multifd": True})
            m.set_parameters({"multifd-channels": 2, "multifd-compression": "x-lz4"})
        else:
            m.set_capabilities({"compress": True})
            m.set_parameters({"x-compress-method": "lz4"})
    migrate(src, dst, uri)
    info = src.query_migrate()
    assert info.status == "completed" and info.ram is not None
    if multifd:
        assert 0 < info.ram.multifd_bytes < info.ram.normal * PAGE_SIZE
    else:
        assert info.compression is not None and info.compression.pages > 0
        assert info.compression.compressed_size < info.compression.pages * PAGE_SIZE
