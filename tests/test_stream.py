"""The destination's stream reader against real streams and hostile variations of them."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from streams import MiB, guest, load_stream, record_stream, settings
from zlib_ng import zlib_ng

from engine import wire
from engine.state import RunState

SIZE = 8 * MiB


def digest(buf: memoryview) -> str:
    return hashlib.sha256(buf).hexdigest()


@pytest.fixture(scope="module")
def src():
    return guest(SIZE, "idle", seed=3)


@pytest.fixture(scope="module")
def plain(src) -> bytes:
    return record_stream(src)


@pytest.fixture(scope="module")
def compressed(src) -> bytes:
    return record_stream(src, settings(compress=True))


def records(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, kind, length) of every record after the header."""
    out, pos = [], wire.HEADER.size
    while pos < len(data):
        kind, length = wire.RECORD.unpack_from(data, pos)
        out.append((pos, kind, length))
        pos += wire.RECORD.size + length
    return out


def first(data: bytes, kind: wire.Rec) -> tuple[int, int]:
    return next((pos, length) for pos, k, length in records(data) if k == kind)


def raw_page_offset(data: bytes) -> int:
    """Offset in ``data`` of the first raw page payload."""
    for pos, kind, _length in records(data):
        if kind != wire.Rec.BATCH:
            continue
        body = pos + wire.RECORD.size
        (n,) = struct.unpack_from(">I", data, body)
        kinds = np.frombuffer(data, np.uint8, n, body + 4 + 4 * n)
        if (kinds == wire.Kind.PAGE).any():
            return body + 4 + 5 * n
    raise AssertionError("no raw page in the stream")


@pytest.mark.parametrize("which", ["plain", "compressed"])
def test_real_stream_loads_and_ram_matches(which, src, request):
    outcome, ram = load_stream(request.getfixturevalue(which), SIZE, compress=which != "plain")
    assert outcome is RunState.PRELAUNCH
    assert digest(ram.buf) == digest(src.buf)


def expect_failure(data: bytes, text: str, **kw) -> None:
    outcome, _ = load_stream(data, SIZE, **kw)
    assert isinstance(outcome, wire.StreamError), outcome
    assert text in str(outcome)


def test_bad_magic(plain):
    expect_failure(b"QEVM" + plain[4:], "not a qemu-hmp migration stream")


def test_bad_version(plain):
    expect_failure(plain[:4] + struct.pack(">I", 99) + plain[8:], "unsupported stream version 99")


@pytest.mark.parametrize("cut", [0, 5, 20, 200, 5000, -3])
def test_truncated_stream(plain, cut):
    outcome, _ = load_stream(plain[:cut] if cut else b"", SIZE)
    assert isinstance(outcome, wire.StreamError)
    assert "ended" in str(outcome) or "truncated" in str(outcome)


def test_flipped_byte_in_a_page_fails_the_digest(plain):
    data = bytearray(plain)
    data[raw_page_offset(plain) + 100] ^= 0x40
    expect_failure(bytes(data), "RAM digest mismatch")


def test_ram_size_mismatch(plain):
    outcome, _ = load_stream(plain, SIZE * 2)
    assert isinstance(outcome, wire.StreamError)
    assert str(outcome) == "Length mismatch: pc.ram: 0x800000 in != 0x1000000: Invalid argument"


def test_compressed_stream_needs_compress_on_the_destination(compressed):
    expect_failure(compressed, "Received an unexpected compressed page", compress=False)


def test_unknown_record_type(plain):
    pos, _ = first(plain, wire.Rec.EOS)
    data = plain[:pos] + wire.record(0x55) + plain[pos:]  # type: ignore[arg-type]
    expect_failure(data, "unknown record type 0x55")


def test_oversized_record_is_refused_before_reading_it(plain):
    pos, _ = first(plain, wire.Rec.EOS)
    data = plain[:pos] + wire.RECORD.pack(wire.Rec.BATCH, 1 << 30)
    expect_failure(data, "exceeds the limit")


def batch_record(indices, kinds, clens=(), payload=b"") -> bytes:
    idx = np.asarray(indices, dtype=np.intp)
    bufs = wire.encode_batch(idx, np.asarray(kinds, dtype=np.uint8), list(clens), [payload])
    return b"".join(bytes(b) for b in bufs)


def inject(stream: bytes, record: bytes) -> bytes:
    pos, _ = first(stream, wire.Rec.EOS)
    return stream[:pos] + record + stream[pos:]


def test_page_outside_ram(plain):
    rec = batch_record([SIZE // 4096], [wire.Kind.ZERO])
    expect_failure(inject(plain, rec), "outside guest RAM")


def test_unknown_page_kind(plain):
    expect_failure(inject(plain, batch_record([0], [0x77])), "unknown page kind 0x77")


def test_batch_length_must_match_contents(plain):
    rec = batch_record([0], [wire.Kind.PAGE], payload=b"\0" * 100)
    expect_failure(inject(plain, rec), "does not match its contents")


def test_garbage_compressed_record(compressed):
    rec = batch_record([0], [wire.Kind.COMPRESSED], [64], b"\xab" * 64)
    expect_failure(inject(compressed, rec), "decompress data failed", compress=True)


def deflate_page(data: bytes) -> bytes:
    """A segment exactly as the engine frames a page (raw deflate + full flush)."""
    stream = zlib_ng.compressobj(9, zlib_ng.DEFLATED, -15)
    return stream.compress(data) + stream.flush(zlib_ng.Z_FULL_FLUSH)


def test_decompression_bomb(compressed):
    bomb = deflate_page(bytes(1 << 20))  # 1 MiB of zeros in ~1 KiB
    assert len(bomb) < wire.MAX_COMPRESSED
    rec = batch_record([0], [wire.Kind.COMPRESSED], [len(bomb)], bomb)
    expect_failure(inject(compressed, rec), "decompress data failed", compress=True)


def test_page_that_inflates_to_the_wrong_size(compressed):
    short = deflate_page(b"x" * 100)
    rec = batch_record([0], [wire.Kind.COMPRESSED], [len(short)], short)
    expect_failure(inject(compressed, rec), "decompress data failed", compress=True)


def test_compressed_length_beyond_bound(compressed):
    rec = batch_record([0], [wire.Kind.COMPRESSED], [wire.MAX_COMPRESSED + 1], b"")
    expect_failure(inject(compressed, rec), "Invalid compressed data length", compress=True)


def test_no_page_twice_between_two_eos():
    """Compressed pages stay in flight across EOS (QEMU 7.2), but a page dirtied again is
    never sent in the same section as its older copy: the destination's decompress workers
    may apply one section's pages in any order, and only drain at EOS."""
    ram = guest(64 * MiB, "idle", seed=6)
    data = record_stream(
        ram,
        settings(compress=True, threads=4),
        writer="idle,rate=3000,wss=8M",
        max_bandwidth=8 * MiB,
    )
    section: set[int] = set()
    sent: set[int] = set()
    resent = sections = 0
    for pos, kind, _length in records(data):
        if kind == wire.Rec.EOS:
            section.clear()
            sections += 1
        elif kind == wire.Rec.BATCH:
            body = pos + wire.RECORD.size
            (n,) = struct.unpack_from(">I", data, body)
            pages = set(np.frombuffer(data, wire.U32, n, body + 4).tolist())
            assert not pages & section, "a page sent twice in one section"
            section |= pages
            resent += len(pages & sent)
            sent |= pages
    assert sections > 5 and resent > 500  # many sections, and pages really were sent again
