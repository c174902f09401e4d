"""The per-page codecs: every page decompresses on its own, and the CRCs are of what was read."""

from __future__ import annotations

import random

import pytest
from zlib_ng import zlib_ng

from engine._pagecodec import Deflater, Inflater
from engine.compression import CODECS
from engine.guest import PAGE_SIZE
from engine.wire import StreamError


def sample_pages() -> list[bytes]:
    rng = random.Random(5)
    text = b"".join(b"line %d of a config file\n" % i for i in range(400))
    return [
        bytes(PAGE_SIZE),
        rng.randbytes(PAGE_SIZE),  # incompressible: the segment falls back to a stored block
        text[:PAGE_SIZE],
        bytes(rng.choice(b"ab") for _ in range(PAGE_SIZE)),
        text[100 : 100 + PAGE_SIZE],  # repeats the previous page's text: no shared history
    ]


def guest_of(pages: list[bytes]) -> memoryview:
    return memoryview(bytearray(b"".join(pages)))


def split(payload: bytes, sizes: list[int]) -> list[bytes]:
    ends = [sum(sizes[: k + 1]) for k in range(len(sizes))]
    return [payload[end - size : end] for end, size in zip(ends, sizes, strict=True)]


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("level", [0, 1, 9])
def test_each_page_decompresses_alone_in_any_order(codec, level):
    pages = sample_pages()
    ram, numbers = guest_of(pages), list(range(len(pages)))
    compress = CODECS[codec].compressor(level)
    payload, sizes, crcs = compress(ram, numbers)
    assert compress(ram, numbers) == (payload, sizes, crcs)  # a reused stream has no history
    assert crcs == [zlib_ng.crc32(p) for p in pages]
    segments = split(payload, sizes)
    target = guest_of([bytes(PAGE_SIZE)] * len(pages))
    order = numbers[::-1]
    backwards = b"".join(segments[i] for i in order)
    got = CODECS[codec].decompressor()(target, order, memoryview(backwards), sizes[::-1])
    assert got == crcs[::-1]
    assert target == ram


@pytest.mark.parametrize("level", [0, 1, 9])
def test_zlib_segments_are_fresh_full_flush_segments(level):
    """What a new raw-deflate stream gives for the page and a full flush, as QEMU's per-page
    compress2 gives a self-contained stream."""
    pages = sample_pages()
    payload, sizes, _ = CODECS["zlib"].compressor(level)(guest_of(pages), list(range(len(pages))))
    for page, segment in zip(pages, split(payload, sizes), strict=True):
        fresh = zlib_ng.compressobj(level, zlib_ng.DEFLATED, -15)
        assert segment == fresh.compress(page) + fresh.flush(zlib_ng.Z_FULL_FLUSH)


def deflated(data: bytes) -> bytes:
    stream = zlib_ng.compressobj(9, zlib_ng.DEFLATED, -15)
    return stream.compress(data) + stream.flush(zlib_ng.Z_FULL_FLUSH)


@pytest.mark.parametrize(
    ("bad", "size"),
    [
        (b"", 0),
        (b"\xab" * 64, 64),
        (deflated(bytes(1 << 20)), None),  # a bomb
        (deflated(b"x" * 100), None),  # short
        (deflated(bytes(PAGE_SIZE))[:-4], None),  # no sync flush at the end
        (deflated(bytes(PAGE_SIZE)) + deflated(b"x"), None),  # a byte more than the page
        (deflated(bytes(PAGE_SIZE)), 10_000),  # a size beyond the payload
    ],
    ids=["empty", "garbage", "bomb", "short", "unflushed", "trailing", "oversized"],
)
def test_zlib_bad_segment_fails_and_the_stream_goes_on(bad, size):
    decompress = CODECS["zlib"].decompressor()
    ram = guest_of([bytes(PAGE_SIZE)] * 2)
    with pytest.raises(StreamError, match="decompress data failed"):
        decompress(ram, [0], memoryview(bad), [len(bad) if size is None else size])
    page = bytes(range(256)) * 16
    good, sizes, crcs = CODECS["zlib"].compressor(1)(guest_of([page]), [0])
    assert decompress(ram, [1], memoryview(good), sizes) == crcs
    assert ram[PAGE_SIZE:] == page


def test_pages_outside_guest_ram_are_refused():
    ram = guest_of([bytes(PAGE_SIZE)])
    segment = deflated(bytes(PAGE_SIZE))
    with pytest.raises(IndexError):
        CODECS["zlib"].compressor(1)(ram, [1])
    with pytest.raises(IndexError):
        CODECS["zlib"].decompressor()(ram, [-1], memoryview(segment), [len(segment)])


def test_an_uninitialised_stream_raises_instead_of_crashing():
    with pytest.raises(RuntimeError, match="not initialised"):
        Deflater.__new__(Deflater).compress(bytearray(PAGE_SIZE), [0])
    with pytest.raises(RuntimeError, match="not initialised"):
        Inflater.__new__(Inflater).decompress_into(bytearray(PAGE_SIZE), [0], b"", [0])
