"""Hostile streams beyond tests/test_stream.py: malformed sections, limits, multifd channels.

Each case feeds a real StreamLoader over a socket and expects a StreamError naming the fault;
cases that a real source can produce (consecutive EOS) must load.
"""

from __future__ import annotations

import json
import socket
import struct
import threading

import lz4.block
import pytest
from streams import MiB, guest, load_stream, record_stream
from test_stream import batch_record, first, inject, records

from engine import wire
from engine.destination import StreamLoader
from engine.guest import PAGE_SIZE, GuestRam
from engine.multifd import FAST_PACKET, HELLO, PACKET, SYNC, Hello
from engine.state import RunState

SIZE = 1 * MiB


@pytest.fixture(scope="module")
def src() -> GuestRam:
    return guest(SIZE, "idle", seed=11)


@pytest.fixture(scope="module")
def plain(src: GuestRam) -> bytes:
    return record_stream(src)


def failure(data: bytes, **kw: object) -> str:
    outcome, _ = load_stream(data, SIZE, **kw)  # type: ignore[arg-type]
    assert isinstance(outcome, wire.StreamError), outcome
    return str(outcome)


def config_body(**changes: object) -> bytes:
    cfg = wire.StreamConfig(PAGE_SIZE, SIZE, False, "zlib").to_json() | changes
    return json.dumps(cfg).encode()


def config(**changes: object) -> bytes:
    return wire.record(wire.Rec.CONFIG, config_body(**changes))


def with_config(plain: bytes, section: bytes) -> bytes:
    """``plain`` with its configuration section replaced by ``section``."""
    pos, length = first(plain, wire.Rec.CONFIG)
    return plain[:pos] + section + plain[pos + wire.RECORD.size + length :]


def test_consecutive_eos_are_legal(plain, src):
    # A real source sends EOS after an iteration whose bandwidth window was already spent,
    # so EOS after EOS (and EOS right after the configuration) must load.
    kinds = [k for _, k, _ in records(plain)]
    assert kinds.count(wire.Rec.EOS) >= 2
    pos, _ = first(plain, wire.Rec.BATCH)
    eos = wire.record(wire.Rec.EOS)
    outcome, ram = load_stream(plain[:pos] + eos * 3 + plain[pos:], SIZE)
    assert outcome is RunState.PRELAUNCH and ram.buf == src.buf


@pytest.mark.parametrize(
    ("section", "text"),
    [
        (wire.record(wire.Rec.EOS), "expected the configuration section, got 0x10"),
        (wire.record(wire.Rec.CONFIG, b"[" * 60000), "configuration section is not valid JSON"),
        (wire.record(wire.Rec.CONFIG, b"\xff\xfe"), "configuration section is not valid JSON"),
        (wire.record(wire.Rec.CONFIG, b"[1]"), "configuration section is not an object"),
        (wire.record(wire.Rec.CONFIG, b"{}"), "configuration section is incomplete"),
        (config(**{"page-size": "x"}), "configuration section is incomplete"),
        (wire.RECORD.pack(wire.Rec.CONFIG, wire.MAX_JSON + 1), "exceeds the limit of 65536"),
        (config(**{"page-size": 65536}), "page size mismatch: source 65536, destination 4096"),
        (config(**{"multifd-channels": 4}), "multifd mismatch: the capability is off"),
    ],
    ids=[
        "eos-first",
        "nesting-bomb",
        "not-utf8",
        "not-object",
        "empty",
        "bad-type",
        "too-long",
        "page-size",
        "multifd",
    ],
)
def test_bad_configuration(plain, section, text):
    assert text in failure(with_config(plain, section))


def test_infinite_number_in_configuration(plain):
    body = config_body().replace(b'"page-size": 4096', b'"page-size": Infinity')
    section = wire.record(wire.Rec.CONFIG, body)
    assert "configuration section is incomplete" in failure(with_config(plain, section))


def test_eos_with_a_body(plain):
    assert "malformed end-of-section" in failure(inject(plain, wire.record(wire.Rec.EOS, b"x")))


@pytest.mark.parametrize(("n", "text"), [(0, "page batch of 0 pages"), (1025, "limit 1024")])
def test_batch_count_out_of_bounds(plain, n, text):
    rec = wire.RECORD.pack(wire.Rec.BATCH, 4) + struct.pack(">I", n)
    assert text in failure(inject(plain, rec))


def test_zero_length_compressed_page(plain):
    rec = batch_record([0], [wire.Kind.COMPRESSED], [0])
    assert "Invalid compressed data length: 0" in failure(inject(plain, rec), compress=True)


def test_compressed_page_without_compress(plain):
    rec = batch_record([0], [wire.Kind.COMPRESSED], [8], b"\0" * 8)
    assert "unexpected compressed page" in failure(inject(plain, rec))


@pytest.mark.parametrize(
    "done",
    [b"{}", b'{"runstate": "flying", "digest": ""}', b'{"runstate": ["x"], "digest": ""}'],
)
def test_malformed_completion(plain, done):
    pos, _ = first(plain, wire.Rec.DONE)
    assert "completion section is malformed" in failure(
        plain[:pos] + wire.record(wire.Rec.DONE, done)
    )


def test_completion_without_pages_fails_the_digest(plain):
    pos, _ = first(plain, wire.Rec.BATCH)
    done_pos, _ = first(plain, wire.Rec.DONE)
    assert "RAM digest mismatch" in failure(plain[:pos] + plain[done_pos:])


# -- multifd channels --------------------------------------------------------------------------


class Multifd:
    """A loader expecting one multifd channel, fed over two socket pairs the test drives."""

    def __init__(self, method: str = "none") -> None:
        self.ram = GuestRam(SIZE)
        local = wire.StreamConfig(PAGE_SIZE, SIZE, False, "zlib", multifd_channels=1)
        self.main, main_peer = socket.socketpair()
        self.chan, chan_peer = socket.socketpair()
        self.loader = StreamLoader(
            self.ram, lambda: (local, 1), pristine=True, accept=lambda: chan_peer
        )
        self.session = bytes(range(16))
        self.outcome: object = None
        self._thread = threading.Thread(target=self._load, args=(main_peer,))
        self._thread.start()
        cfg = wire.StreamConfig(PAGE_SIZE, SIZE, False, "zlib", 1, method, self.session.hex())
        self.main.sendall(wire.header() + wire.json_record(wire.Rec.CONFIG, cfg.to_json()))

    def _load(self, sock: socket.socket) -> None:
        try:
            self.outcome = self.loader.load(sock)
        except (wire.StreamError, OSError) as exc:
            self.outcome = exc
        finally:
            self.loader.close()
            sock.close()

    def result(self) -> object:
        self._thread.join(10)
        assert not self._thread.is_alive(), "the loader hangs"
        self.main.close()
        self.chan.close()
        return self.outcome


def test_multifd_channel_closing_at_the_barrier_fails_the_stream():
    # A source killed between packets: its channels end cleanly while the main stream
    # waits at an EOS for their SYNC. The destination must fail, not wait forever.
    m = Multifd()
    m.chan.sendall(Hello(0, m.session).encode())
    m.main.sendall(wire.record(wire.Rec.EOS))
    m.chan.close()
    assert isinstance(m.result(), wire.StreamError)


@pytest.mark.parametrize(
    ("channel_bytes", "text"),
    [
        (b"QHMX" + bytes(HELLO.size - 4), "handshake is not qemu-hmp's"),
        (Hello(0, bytes(16)).encode(), "a channel of another migration connected"),
        (Hello(7, bytes(range(16))).encode(), "a channel of another migration connected"),
    ],
    ids=["magic", "session", "channel-id"],
)
def test_multifd_bad_handshake(channel_bytes, text):
    m = Multifd()
    m.chan.sendall(channel_bytes)
    outcome = m.result()
    assert isinstance(outcome, wire.StreamError) and text in str(outcome)


@pytest.mark.parametrize(
    ("record", "text"),
    [
        (wire.RECORD.pack(0x99, 0), "multifd: unknown record type 0x99"),
        (wire.RECORD.pack(PACKET, 8) + struct.pack(">II", 0, 0), "packet of 0 pages"),
        (wire.RECORD.pack(PACKET, 8) + struct.pack(">II", 1, 1 << 20), "outside guest RAM"),
        (wire.RECORD.pack(PACKET, 8 + 100) + struct.pack(">II", 1, 0) + bytes(100), "length"),
        (wire.RECORD.pack(SYNC, 1) + b"x", "unknown record type 0x31"),
        (wire.RECORD.pack(FAST_PACKET, 8) + struct.pack(">II", 1, 0), "record type 0x33"),
    ],
    ids=["type", "empty", "outside", "short", "sync-body", "fast-without-x-auto"],
)
def test_multifd_bad_channel_record(record, text):
    m = Multifd()
    m.chan.sendall(Hello(0, m.session).encode() + record)
    m.main.sendall(wire.record(wire.Rec.EOS))
    outcome = m.result()
    assert isinstance(outcome, wire.StreamError) and text in str(outcome)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xab" * 64,
        lz4.block.compress(b"x" * 100, store_size=False),  # decodes short of the page
        lz4.block.compress(bytes(1 << 20), store_size=False),  # beyond it
    ],
    ids=["garbage", "short", "bomb"],
)
def test_x_auto_bad_lz4_packet(payload):
    # x-auto's FAST_PACKETs are one LZ4 block that must decode to exactly the packet's pages.
    body = struct.pack(">II", 1, 0) + payload
    m = Multifd("x-auto")
    m.ram.array[:] = 0xEE
    m.chan.sendall(Hello(0, m.session).encode() + wire.RECORD.pack(FAST_PACKET, len(body)) + body)
    m.main.sendall(wire.record(wire.Rec.EOS))
    outcome = m.result()
    assert isinstance(outcome, wire.StreamError) and "decompress data failed" in str(outcome)
    assert set(m.ram.array[:PAGE_SIZE]) == {0xEE}  # no page written
