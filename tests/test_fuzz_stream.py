"""Hypothesis: mutated real streams never crash, hang or leak the destination's stream reader.

Each example flips, inserts, deletes or truncates bytes of a recorded stream (positions are
biased towards record heads and sections, where the parser's decisions are), feeds it to a
real StreamLoader over a socket, and requires, within a timeout: either success with RAM
equal to the source's, or a StreamError/OSError — never another exception, never a hang, and
no thread left behind.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streams import MiB, guest, load_stream, record_stream
from streams import settings as stream_settings
from test_stream import records

from engine import wire
from engine.guest import GuestRam
from engine.multifd import METHODS, Hello
from engine.state import RunState

SIZE = 1 * MiB
LOAD_TIMEOUT_S = 10.0
FUZZ = settings(
    deadline=None,
    derandomize=True,  # the same examples on every run: CI is deterministic
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Recorded:
    src: GuestRam
    data: bytes
    hot: tuple[int, ...]  # where records and their heads start: the parser's decision points
    compress: bool


def recorded(compress: bool) -> Recorded:
    src = guest(SIZE, "idle", seed=5)
    data = record_stream(src, stream_settings(compress=compress, method="zlib"))
    hot = [0, 4, *(pos + d for pos, _kind, _len in records(data) for d in range(0, 14))]
    return Recorded(src, data, tuple(p for p in hot if p < len(data)), compress)


@pytest.fixture(scope="module")
def plain() -> Recorded:
    return recorded(False)


@pytest.fixture(scope="module")
def compressed() -> Recorded:
    return recorded(True)


@st.composite
def mutated(draw: st.DrawFn, rec: Recorded) -> bytes:
    data = bytearray(rec.data)
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            pos = draw(st.sampled_from(rec.hot))
        else:
            pos = draw(st.integers(0, len(data) - 1))
        pos = min(pos, len(data) - 1)
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":  # extremes of a length or count field
            data[pos] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        else:
            del data[pos:]
        if not data:
            break
    return bytes(data)


def check(rec: Recorded, data: bytes) -> None:
    before = threading.active_count()
    result: list[object] = []
    worker = threading.Thread(
        target=lambda: result.append(load_stream(data, SIZE, compress=rec.compress)),
        daemon=True,
    )
    worker.start()
    worker.join(LOAD_TIMEOUT_S)
    assert not worker.is_alive(), "the stream reader hangs"
    assert result, "load_stream raised (see the thread's traceback above)"
    (outcome, ram) = result[0]  # type: ignore[misc]
    if isinstance(outcome, RunState):
        assert ram.buf == rec.src.buf, "a stream that loaded left different RAM"
    else:
        assert isinstance(outcome, wire.StreamError | OSError), repr(outcome)
    assert threading.active_count() <= before, "threads were left behind"


@settings(FUZZ, max_examples=2500)
@given(data=st.data())
def test_mutated_plain_streams(plain: Recorded, data: st.DataObject) -> None:
    check(plain, data.draw(mutated(plain)))


@settings(FUZZ, max_examples=800)
@given(data=st.data())
def test_mutated_compressed_streams(compressed: Recorded, data: st.DataObject) -> None:
    check(compressed, data.draw(mutated(compressed)))


@settings(FUZZ, max_examples=300)
@given(st.binary(min_size=0, max_size=64))
def test_any_multifd_handshake_is_parsed_or_refused(data: bytes) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        try:
            hello = Hello.read(ours)
        except wire.StreamError:
            return
        assert hello.encode() == data[: len(hello.encode())]


def _zstd_packet() -> bytes:
    """A real two-page multifd zstd packet (the start of a channel's stream)."""
    src = GuestRam(4 * 4096)
    src.buf[4096:12288] = bytes(range(256)) * 16 + b"multifd zstd " * 315 + b"p"
    packer = METHODS["zstd"].packer
    assert packer is not None
    return packer(1, 2)(src, np.array([1, 2]))[0]


ZSTD_PACKET = _zstd_packet()


@settings(FUZZ, max_examples=300)
@given(st.data())
def test_mutated_zstd_packets_decode_into_their_pages_or_fail(data: st.DataObject) -> None:
    packet = bytearray(ZSTD_PACKET)
    for _ in range(data.draw(st.integers(1, 4))):
        if packet and data.draw(st.booleans()):
            at = data.draw(st.integers(0, len(packet) - 1))
            packet[at] ^= data.draw(st.integers(1, 255))
        else:
            cut = data.draw(st.integers(0, len(packet)))
            packet[cut:] = data.draw(st.binary(max_size=16))
    dst = GuestRam(4 * 4096)
    dst.array[:] = 0xEE
    unpacker = METHODS["zstd"].unpacker
    assert unpacker is not None
    try:
        unpacker(2)(dst, np.array([1, 2]), packet)
    except wire.StreamError as exc:
        assert str(exc) == "multifd: decompress data failed"
    assert set(dst.array[:4096]) == set(dst.array[12288:]) == {0xEE}  # nothing outside
