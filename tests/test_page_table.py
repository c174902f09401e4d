"""Postcopy's page table in C (`_pagecodec.PageTable` behind `postcopy.PresentMap`): its
reader of BATCH records after the switch, what a hostile or broken stream gets, its waits."""

from __future__ import annotations

import socket
import struct
import threading
import zlib
from collections.abc import Iterator

import numpy as np
import pytest

from engine import postcopy, wire
from engine.guest import PAGE_SIZE, GuestRam

PAGES = 64
WAIT_S = 10.0


class Table(postcopy.PresentMap):
    """A map over fresh RAM, whose arrays the test reads."""

    def __init__(self) -> None:
        self.ram = GuestRam(PAGES * PAGE_SIZE)
        self.present = np.zeros(PAGES, dtype=bool)
        self.written = np.zeros(PAGES, dtype=bool)
        self.crc = np.full(PAGES, wire.ZERO_CRC, dtype=np.uint32)
        super().__init__(self.ram, self.present, self.written, self.crc, lambda _p: None)


@pytest.fixture
def table() -> Iterator[Table]:
    made = Table()
    yield made
    made.ram.close()


def batch(pages: list[int], kinds: list[int], payload: bytes = b"") -> bytes:
    parts = wire.encode_batch(
        np.array(pages, dtype=np.intp), np.array(kinds, dtype=np.uint8), [], [payload]
    )
    return b"".join(bytes(p) for p in parts)


def serve(table: Table, data: bytes, other: bool = True) -> object:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        return table.serve(ours, other)


ZERO, RAW = int(wire.Kind.ZERO), int(wire.Kind.PAGE)
PAGE_A, PAGE_B = bytes(range(256)) * 16, b"\x5a" * PAGE_SIZE


def test_batches_are_placed_until_the_next_other_record(table: Table) -> None:
    stream = batch([3, 7, 9], [RAW, ZERO, RAW], PAGE_A + PAGE_B) + wire.record(wire.Rec.EOS)
    assert serve(table, stream) == (int(wire.Rec.EOS), 0)
    assert table.missing == PAGES - 3
    ram = table.ram.page_array
    assert bytes(ram[3]) == PAGE_A and bytes(ram[9]) == PAGE_B and not ram[7].any()
    assert table.crc[[3, 7, 9]].tolist() == [zlib.crc32(PAGE_A), wire.ZERO_CRC, zlib.crc32(PAGE_B)]
    assert table.present[[3, 7, 9]].all() and table.written[[3, 9]].all()
    # A page already present keeps what it holds: the guest may have written it.
    assert serve(table, batch([3], [RAW], PAGE_B)) is None
    assert bytes(ram[3]) == PAGE_A


def head(kind: int, length: int) -> bytes:
    return wire.RECORD.pack(kind, length)


def body(n: int, pages: list[int], kinds: list[int]) -> bytes:
    return struct.pack(">I", n) + np.array(pages, dtype=">u4").tobytes() + bytes(kinds)


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (head(wire.Rec.BATCH, wire.MAX_RECORD + 1), "exceeds the limit"),
        (head(wire.Rec.BATCH, 2) + b"xx", "truncated page batch"),
        (head(wire.Rec.BATCH, 4) + struct.pack(">I", 0), "page batch of 0 pages"),
        (head(wire.Rec.BATCH, 4) + struct.pack(">I", 1025), "page batch of 1025 pages"),
        (head(wire.Rec.BATCH, 9) + body(1, [PAGES], [ZERO]), f"page {PAGES} is outside"),
        (head(wire.Rec.BATCH, 9) + body(1, [1], [0x77]), "unknown page kind 0x77"),
        (head(wire.Rec.BATCH, 9) + body(1, [1], [int(wire.Kind.COMPRESSED)]), "compressed or"),
        (head(wire.Rec.BATCH, 9) + body(1, [1], [RAW]), "does not match its contents"),
        # The stream ends inside a record (the batch after it is not sent).
        (head(wire.Rec.BATCH, 9 + PAGE_SIZE) + body(1, [1], [RAW]) + b"x", "truncated stream"),
        (head(wire.Rec.BATCH, 9)[:3], "truncated stream"),
    ],
    ids=["long", "short", "empty", "many", "outside", "kind", "blob", "length", "cut", "head"],
)
def test_a_bad_record_places_nothing(table: Table, data: bytes, text: str) -> None:
    good = batch([2], [RAW], PAGE_A)
    after = b"" if text == "truncated stream" else batch([5], [RAW], PAGE_B)
    with pytest.raises(wire.StreamError, match=text):
        serve(table, good + data + after)
    assert np.flatnonzero(table.present).tolist() == [2]  # the good batch before it only
    assert table.missing == PAGES - 1


def test_the_preempt_channel_carries_batches_only(table: Table) -> None:
    with pytest.raises(wire.StreamError, match="unknown record type 0x10"):
        serve(table, wire.record(wire.Rec.EOS), other=False)


def test_a_reset_connection_is_an_os_error(table: Table) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        peer = socket.create_connection(server.getsockname())
        ours, _ = server.accept()
        with ours:
            peer.sendall(head(wire.Rec.BATCH, 9 + PAGE_SIZE))
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()  # a reset, not an end
            with pytest.raises(ConnectionResetError):
                table.serve(ours)


def test_a_wait_ends_when_its_page_is_placed_or_at_its_timeout(table: Table) -> None:
    never, stop = threading.Event(), threading.Event()
    stop.set()  # a wait that times out goes on unless stopped: this one is
    assert not table.fault(np.array([4]), stop)
    got: list[bool] = []
    waiting = threading.Thread(target=lambda: got.append(table.fault(np.array([4]), never)))
    waiting.start()
    table.place(np.array([4]), None)  # whenever the vCPU got to its wait, this ends it
    waiting.join(WAIT_S)
    assert got == [True] and table.blocktime().faults == 1
    assert not table.wait_complete(0.001)
    table.place(np.arange(PAGES), None)
    assert table.wait_complete(WAIT_S) and table.missing == 0
