"""What a faulting vCPU waits behind with postcopy-preempt, by construction: a requested page the
background stream has in flight goes again on the preempt channel (once), and the destination
places a background batch a chunk at a time, so the preempt reader never waits for all of it."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
from test_machine import ram_hash
from test_postcopy import held_postcopy

from engine import postcopy, transport, wire
from engine.guest import PAGE_SIZE, GuestRam
from engine.machine import Machine
from engine.source import OutgoingMigration
from engine.state import MigrationStatus

TIMEOUT = 30.0


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    """A vCPU's stop event that a timer sets: a fault that never resolves fails the test."""
    event = threading.Event()
    timer = threading.Timer(TIMEOUT, event.set)
    timer.start()
    yield event
    timer.cancel()


def claim_as_background(mig: OutgoingMigration, page: int) -> None:
    """What the background scan does when it takes a page for a batch: its bit is cleared, and
    the copy is somewhere in the main stream (here: never sent, so only a resend can bring it)."""
    with mig._bitmap_lock:
        assert mig._bitmap[page]
        mig._bitmap[page] = False
        mig._dirty_pages -= 1


def test_a_requested_page_in_the_background_stream_goes_again_on_the_preempt_channel(
    machines: list[Machine], stop: threading.Event
) -> None:
    src, dst, dst_watch, mig, present = held_postcopy(machines, preempt=True)
    page = int(np.flatnonzero(~present.present_bits())[0])
    claim_as_background(mig, page)
    assert dst.ram.fault(np.array([page]), stop)  # it came on the preempt channel
    assert bytes(dst.ram.page(page)) == bytes(src.ram.page(page))
    # The return path sends it and then counts its bytes, all under the bitmap lock: the page
    # may be placed before they are counted, so the count is read once that lock is free.
    with mig._bitmap_lock:
        sent = mig.stats.stream_bytes
    mig._send_requested(np.array([page]))  # asked again: it went on the preempt channel once
    assert mig.stats.stream_bytes == sent
    mig.background.set()
    assert src.wait_migration(TIMEOUT).status is MigrationStatus.COMPLETED  # the digest matched
    dst_watch.wait_status("completed")
    assert ram_hash(src) == ram_hash(dst)


def test_a_page_sent_again_into_a_closed_channel_does_not_break_the_migration(
    machines: list[Machine],
) -> None:
    """The destination may have had the page from the main stream, completed and closed the
    preempt channel when the request's resend goes: that send fails quietly. A fresh page
    that cannot go is lost, so its failure still breaks the stream (postcopy pauses)."""
    _src, _dst, _watch, mig, present = held_postcopy(machines, preempt=True)
    again, fresh = (int(p) for p in np.flatnonzero(~present.present_bits())[:2])
    claim_as_background(mig, again)
    channel, closed = socket.socketpair()
    closed.close()  # the destination's end, gone
    preempt, mig._preempt = mig._preempt, channel
    try:
        mig._send_requested(np.array([again]))  # no error: the main stream carries it
        with pytest.raises(OSError):
            mig._send_requested(np.array([fresh]))
    finally:
        mig._preempt = preempt
        channel.close()
    mig.cancel()
    assert mig.wait(TIMEOUT)


def test_with_release_ram_a_page_the_background_took_is_not_sent_again(
    machines: list[Machine],
) -> None:
    """release-ram may have freed the page once its first send returned: a second read of it
    would send zeros, so only the background's copy brings it."""
    _src, _dst, _watch, mig, present = held_postcopy(machines, preempt=True)
    mig.settings = dataclasses.replace(mig.settings, release_ram=True)
    page = int(np.flatnonzero(~present.present_bits())[0])
    claim_as_background(mig, page)
    sent = mig.stats.stream_bytes
    mig._send_requested(np.array([page]))
    assert mig.stats.stream_bytes == sent
    mig.cancel()
    assert mig.wait(TIMEOUT)


def test_a_background_batch_is_placed_but_where_a_page_is_present() -> None:
    """The C table places a batch a chunk at a time (a requested page on the preempt channel
    waits for one chunk): every page not present gets its data, CRC and written bit; the
    present one keeps what the guest wrote."""
    ram = GuestRam(1024 * PAGE_SIZE)
    try:
        pages = 3 * postcopy.PLACE_CHUNK + 8
        present = np.zeros(ram.pages, dtype=bool)
        present[5] = True  # arrived earlier (requested): the batch's copy is dropped
        written = np.zeros(ram.pages, dtype=bool)
        crc = np.full(ram.pages, wire.ZERO_CRC, dtype=np.uint32)
        pmap = postcopy.PresentMap(ram, present, written, crc, lambda _p: None)
        assert pmap.missing == ram.pages - 1
        rng = np.random.default_rng(7)
        data = rng.integers(0, 256, size=(pages, PAGE_SIZE), dtype=np.uint8)
        indices = np.arange(pages, dtype=np.intp)
        assert pmap.place(indices, memoryview(data.tobytes())) == pages - 1
        assert not ram.page_array[5].any() and not written[5]  # it kept what it held
        others = indices[indices != 5]
        assert (ram.page_array[others] == data[others]).all() and written[others].all()
        assert crc[others].tolist() == [zlib.crc32(data[i].tobytes()) for i in others]
        assert present[:pages].all() and not present[pages:].any()
        assert pmap.missing == ram.pages - pages
        assert pmap.place(indices, memoryview(data.tobytes())) == 0  # all present: no change
        ram.page_array[others[0]] = 1  # the guest writes a page, then a zero copy comes late
        assert pmap.place(others[:1], None) == 0 and ram.page_array[others[0]].all()
    finally:
        ram.close()


def test_requested_pages_are_made_distinct_without_numpy_s_first_call_cost() -> None:
    """np.unique's first call imports numpy.ma (17-47 ms here): the first fault after the
    switch waited for it. `distinct` sorts and drops repeats with plain array operations."""
    probe = (
        "import sys, numpy as np; from engine.postcopy import distinct;"
        "print(distinct(np.array([5, 3, 5, 1, 3])).tolist(), distinct(np.array([], int)).tolist(),"
        " 'numpy.ma' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout == "[1, 3, 5] [] False\n", done.stderr


def urgent(sock: socket.socket) -> tuple[int, int]:
    return (
        sock.getsockopt(socket.IPPROTO_IP, socket.IP_TOS),
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY),
    )


def test_requests_and_requested_pages_travel_marked_urgent(machines: list[Machine]) -> None:
    """On a link whose queue honours priorities (a host's pfifo_fast, a network's QoS) a
    requested page and its request overtake the background stream: both ends of the preempt
    channel, and the destination's main connection once it carries requests, say so in their
    packets; the source's main stream, the bulk, does not."""
    _src, dst, _watch, mig, _present = held_postcopy(machines, preempt=True)
    loader = dst._incoming._loader if dst._incoming else None
    assert loader is not None and loader._preempt is not None and loader.conn is not None
    assert mig._preempt is not None and mig._sock is not None
    marked = (transport.IPTOS_LOWDELAY, transport.TC_PRIO_INTERACTIVE)
    assert urgent(mig._preempt) == urgent(loader._preempt) == urgent(loader.conn) == marked
    assert urgent(mig._sock) == (0, 0)
    mig.cancel()
    assert mig.wait(TIMEOUT)
