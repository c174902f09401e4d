"""multifd zstd: one stream per channel, flushed after each packet, decoded straight into guest
RAM (engine/_pagecodec.c), and what a hostile packet gets."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

from engine import wire
from engine.guest import PAGE_SIZE, GuestRam
from engine.multifd import METHODS, ZSTD_MAX_WINDOW_LOG, zstd_window_log

PACKER, UNPACKER = METHODS["zstd"].packer, METHODS["zstd"].unpacker
assert PACKER is not None and UNPACKER is not None
PACKET = np.array([1, 2])  # a two-page packet in a four-page guest
SENTINEL = 0xEE  # what the pages around the packet hold: a decoder must never touch them


def text_pages(seed: int, count: int) -> bytes:
    """Compressible, distinct pages (words drawn from a small vocabulary)."""
    words = np.random.default_rng(seed).integers(0, 64, count * PAGE_SIZE // 8)
    return (words.astype(np.uint64) * 0x0101010101010101).tobytes()


def source_with(data: bytes) -> GuestRam:
    ram = GuestRam(4 * PAGE_SIZE)
    ram.buf[PAGE_SIZE : 3 * PAGE_SIZE] = data
    return ram


def fenced() -> GuestRam:
    ram = GuestRam(4 * PAGE_SIZE)
    ram.array[:] = SENTINEL
    return ram


def test_one_stream_per_channel_keeps_its_history_across_packets():
    rng = np.random.default_rng(5)
    first, second = rng.bytes(2 * PAGE_SIZE), text_pages(2, 2)  # incompressible, then text
    pack = PACKER(1, 2)
    unpack = UNPACKER(2)
    dst = fenced()
    sizes = []
    for data in (first, second, first):
        src = source_with(data)
        payload, crcs = pack(src, PACKET)
        assert (crcs == src.crc_pages(PACKET)).all()
        assert (unpack(dst, PACKET, bytearray(payload)) == crcs).all()
        assert dst.buf[PAGE_SIZE : 3 * PAGE_SIZE] == data
        sizes.append(len(payload))
    # The third packet repeats the first: the stream still holds it, so it costs little.
    assert sizes[0] > 2 * PAGE_SIZE and sizes[2] * 20 < sizes[0]
    assert set(dst.array[:PAGE_SIZE]) == set(dst.array[3 * PAGE_SIZE :]) == {SENTINEL}


@pytest.mark.parametrize("channels", [1, 16, 255])
@pytest.mark.parametrize("level", [1, 19])
def test_the_source_window_fits_the_destination_bound(channels, level):
    data = text_pages(3, 2)
    payload, _ = PACKER(level, channels)(source_with(data), PACKET)
    dst = fenced()
    UNPACKER(channels)(dst, PACKET, bytearray(payload))
    assert dst.buf[PAGE_SIZE : 3 * PAGE_SIZE] == data
    # Every channel's window together stays within the budget, whatever the channel count.
    assert zstd_window_log(channels) <= ZSTD_MAX_WINDOW_LOG
    assert channels << zstd_window_log(channels) <= max(64 << 20, channels << 10)


def streamed(data: bytes, **params: int) -> bytes:
    """``data`` as the start of a zstd stream, flushed, as another encoder would send it."""
    cparams = zstandard.ZstdCompressionParameters.from_level(1, **params)
    stream = zstandard.ZstdCompressor(compression_params=cparams).compressobj()
    return stream.compress(data) + stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


GOOD = text_pages(4, 2)
HOSTILE = {
    "empty": b"",
    "garbage": b"\xab" * 64,
    "short": streamed(GOOD[:PAGE_SIZE]),  # one page for a two-page packet
    "bomb": zstandard.ZstdCompressor(level=1).compress(bytes(1 << 20)),  # 1 MiB in ~40 bytes
    "trailing": streamed(GOOD) + b"more",
    "one-byte-more": streamed(GOOD + b"x"),
    "huge-window": streamed(GOOD, window_log=27),  # would make this side hold 128 MiB
    "truncated": streamed(GOOD)[:-5],
}


@pytest.mark.parametrize("payload", list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_hostile_packet_fails_and_nothing_outside_its_pages_is_written(payload):
    dst = fenced()
    with pytest.raises(wire.StreamError, match=r"^multifd: decompress data failed$"):
        UNPACKER(2)(dst, PACKET, bytearray(payload))
    assert set(dst.array[:PAGE_SIZE]) == set(dst.array[3 * PAGE_SIZE :]) == {SENTINEL}


def test_the_well_formed_control_case_decodes():
    # The hostile cases above differ from this one by their fault alone.
    dst = fenced()
    UNPACKER(2)(dst, PACKET, bytearray(streamed(GOOD)))
    assert dst.buf[PAGE_SIZE : 3 * PAGE_SIZE] == GOOD
