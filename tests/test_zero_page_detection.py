"""QEMU 11.1's zero-page-detection, for real: where zero pages are found changes what travels
where (main stream, multifd channels, or no detection at all), and RAM still arrives whole."""

from __future__ import annotations

import socket
import struct

import numpy as np
import pytest

from engine import wire
from engine.guest import GuestRam
from engine.machine import Machine
from engine.multifd import MultifdReceiver
from engine.params11 import TABLE_11_1
from engine.snapshot import RamStats
from tests.test_machine import SIZE, MiB, make, migrate


def run(machines: list[Machine], detection: str, *, multifd: bool) -> RamStats:
    dst = make(machines, incoming="defer", config_table=TABLE_11_1)  # 11.1's multifd needs it
    src = make(machines, seed=3, config_table=TABLE_11_1)  # the idle guest: 85% zero pages
    for m in (src, dst):
        if multifd:
            m.set_capabilities({"multifd": True})
        m.set_parameters({"zero-page-detection": detection})
    dst.migrate_incoming("tcp:127.0.0.1:0")
    address = dst.query_migrate().socket_address
    assert address is not None
    src.set_parameters({"max-bandwidth": 256 * MiB})
    migrate(src, dst, address[0])  # also proves the destination's RAM equals the source's
    info = src.query_migrate()
    assert info.ram is not None
    return info.ram


def test_multifd_detection_sends_zero_pages_on_the_channels(machines: list[Machine]) -> None:
    ram = run(machines, "multifd", multifd=True)
    assert ram.duplicate > SIZE // 4096 // 2  # found by the channels, counted as zero
    # The main stream carries only its records, no page batch: a few bytes per iteration.
    assert ram.precopy_bytes + ram.downtime_bytes < 64 * 1024 < ram.multifd_bytes


def test_legacy_detection_keeps_zero_pages_on_the_main_stream(machines: list[Machine]) -> None:
    ram = run(machines, "legacy", multifd=True)
    assert ram.duplicate > SIZE // 4096 // 2
    assert ram.precopy_bytes + ram.downtime_bytes > ram.duplicate * 4  # each zero page's index


@pytest.mark.parametrize("multifd", [False, True])
def test_no_detection_sends_every_page_whole(machines: list[Machine], multifd: bool) -> None:
    ram = run(machines, "none", multifd=multifd)
    assert ram.duplicate == 0
    assert ram.normal >= SIZE // 4096
    assert ram.transferred >= SIZE


@pytest.mark.parametrize(
    ("pages", "extra", "error"),
    [
        ([1 << 20], b"", "is outside guest RAM"),
        ([], b"", "packet of 0 pages"),
        ([1, 2], b"junk", "zero-page record of the wrong length"),
    ],
)
def test_a_hostile_zero_page_record_fails_before_ram_is_touched(
    pages: list[int], extra: bytes, error: str
) -> None:
    ram = GuestRam(MiB)
    ram.buf[:] = b"\xff" * MiB
    written = np.ones(ram.pages, dtype=bool)
    receiver = MultifdReceiver(ram, wire.PageDigest(ram.pages), written, "none")
    body = struct.pack(">I", len(pages)) + np.array(pages, dtype=wire.U32).tobytes() + extra
    a, b = socket.socketpair()
    with a, b:
        a.sendall(body)
        with pytest.raises(wire.StreamError, match=error):
            receiver.apply_zeros(b, len(body))
    assert bytes(ram.buf) == b"\xff" * MiB
