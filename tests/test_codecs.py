"""The per-page codecs: every page decompresses on its own, and the CRCs are of what was read."""

from __future__ import annotations

import random

import pytest
from zlib_ng import zlib_ng

from engine.compression import CODECS
from engine.guest import PAGE_SIZE


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


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("level", [0, 1, 9])
def test_each_page_decompresses_alone_in_any_order(codec, level):
    pages = sample_pages()
    compress = CODECS[codec].compressor(level)
    blobs, crcs = compress([memoryview(p) for p in pages])
    again, _ = compress([memoryview(p) for p in pages])  # a reused stream carries no history
    assert blobs == again
    assert crcs == [zlib_ng.crc32(p) for p in pages]
    decompress = CODECS[codec].decompressor()
    for i in reversed(range(len(pages))):
        assert decompress(memoryview(blobs[i])) == pages[i]


@pytest.mark.parametrize("level", [0, 1, 9])
def test_zlib_segments_are_fresh_full_flush_segments(level):
    """What a new raw-deflate stream gives for the page and a full flush, as QEMU's per-page
    compress2 gives a self-contained stream."""
    pages = sample_pages()
    blobs, _ = CODECS["zlib"].compressor(level)([memoryview(p) for p in pages])
    for page, blob in zip(pages, blobs, strict=True):
        fresh = zlib_ng.compressobj(level, zlib_ng.DEFLATED, -15)
        assert blob == fresh.compress(page) + fresh.flush(zlib_ng.Z_FULL_FLUSH)
