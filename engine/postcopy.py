"""Postcopy's demand paging: the destination's present bits and faults, the source's queue of
requested pages and its return-path reader.

After the switch the destination's guest runs before its RAM has arrived. Each page has a
present bit, as a page-table entry has: the vCPU (the workload writer) checks the bits of the
pages it is about to write (`GuestRam.fault`), and for each missing one sends a page request
over the return path and waits until a reader has placed the page. The bits' lock, that wait
and both readers (the preempt channel's, the main stream's background batches) are C
without the GIL (`_pagecodec.PageTable`). A page is placed at most once: a copy arriving
after the page is present (it was requested, then came again by the background stream) is
dropped, so it cannot undo what the guest wrote. This is a software page table, not
userfaultfd: a Python thread that faults in the kernel while holding the GIL would stop the
thread that has to resolve the fault.

The source serves requested pages ahead of its background scan: `PageRequests` keeps them in
the order asked, each page at most once until sent; `ReturnPath` reads the destination's
records (requests, then the final verdict) on its own thread and validates every request
before it is queued.
"""

from __future__ import annotations

import logging
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engine import _pagecodec, wire
from engine.guest import GuestRam

log = logging.getLogger(__name__)
FAULT_SLICE_S = 0.1  # a faulting vCPU re-checks whether it was told to stop this often
PREEMPT_CHANNEL = 0xFFFF  # the channel number postcopy-preempt's connection says hello with
U32 = np.dtype(">u4")
# Pages placed per hold of the present map's lock (256 KiB: ~50 us of copy and CRC).
PLACE_CHUNK = 64
KNOWN_KINDS = wire.KNOWN_KIND.astype(np.uint8).tobytes()  # the C reader's table of page kinds


# A fault crosses four threads (the vCPU, the source's return path, its sender, the
# destination's loader) and each hand-over waits for the GIL, which Python passes on every
# 5 ms by default: postcopy asks for a shorter switch interval while it runs.
SWITCH_INTERVAL_S = 0.0005


class PromptThreads:
    """The process's GIL switch interval, shortened while any postcopy runs in it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved = sys.getswitchinterval()

    def acquire(self) -> None:
        with self._lock:
            if not self._users:
                self._saved = sys.getswitchinterval()
                sys.setswitchinterval(min(self._saved, SWITCH_INTERVAL_S))
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if not self._users:
                sys.setswitchinterval(self._saved)


PROMPT_THREADS = PromptThreads()


def distinct(pages: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
    """The pages sorted, each once. Not np.unique: its first call imports numpy.ma (17-47 ms
    here), which the first fault after the switch would wait for."""
    ordered = np.sort(pages)
    first = np.ones(len(ordered), dtype=bool)
    first[1:] = ordered[1:] != ordered[:-1]
    return ordered[first]


# -- the records ------------------------------------------------------------------------------
def encode_request(indices: npt.NDArray[np.intp]) -> bytes:
    """REQUEST: u32 n, n x u32 page index (destination → source)."""
    body = struct.pack(">I", len(indices)) + indices.astype(U32).tobytes()
    return wire.record(wire.Rec.REQUEST, body)


def decode_request(body: bytes | bytearray, pages: int) -> npt.NDArray[np.intp]:
    """A REQUEST's pages, each checked against guest RAM; StreamError says what is wrong."""
    if len(body) < 4:
        raise wire.StreamError("truncated page request")
    (n,) = struct.unpack_from(">I", body)
    if not 0 < n <= wire.MAX_BATCH or len(body) != 4 + 4 * n:
        raise wire.StreamError(f"page request of {n} pages in {len(body)} bytes")
    indices = np.frombuffer(body, U32, n, 4).astype(np.intp)
    if int(indices.max()) >= pages:
        raise wire.StreamError(f"page {int(indices.max())} is outside guest RAM ({pages} pages)")
    return indices


def encode_bitmap(kind: wire.Rec, bits: npt.NDArray[np.bool_]) -> bytes:
    """A page bitmap, one bit each: DISCARD (pages the destination must fetch: it holds a
    stale copy or none) or RECEIVED (pages it holds, after a recovery)."""
    return wire.record(kind, np.packbits(bits, bitorder="little").tobytes())


def decode_bitmap(body: bytes | bytearray, pages: int) -> npt.NDArray[np.bool_]:
    if len(body) != (pages + 7) // 8:
        raise wire.StreamError(f"discard bitmap of {len(body)} bytes for {pages} pages")
    bits = np.unpackbits(np.frombuffer(body, np.uint8), count=pages, bitorder="little")
    return bits.astype(bool)


# -- the destination ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Blocktime:
    """What the vCPUs waited for pages (QEMU's postcopy-blocktime figures, in ms)."""

    total_ms: int  # time every vCPU was blocked at once: with one vCPU, its own
    vcpu_ms: tuple[int, ...]  # each vCPU's, in vCPU order
    faults: int
    latencies_ms: tuple[float, ...]  # each fault's wait, in order
    at_ms: tuple[float, ...]  # when each fault began, since the switch


class PresentMap:
    """The destination's present bit per page, faults that wait for pages, and placement.

    The bits' lock and the waits are C (`_pagecodec.PageTable`): placing a page and waking
    its vCPU need no GIL, so a fault is not handed from thread to thread behind the busy
    background ones. The vCPUs' bookkeeping (what each waits for, since when) has its lock."""

    def __init__(
        self,
        ram: GuestRam,
        present: npt.NDArray[np.bool_],
        written: npt.NDArray[np.bool_],
        crc: npt.NDArray[np.uint32],
        request: Callable[[npt.NDArray[np.intp]], None],
        vcpus: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``written``: the pages that may hold data (the others are zero: a zero page needs
        no write); ``crc``: the digest's table, each placed page's CRC set with its present
        bit (pages come from two channels with postcopy-preempt); ``request`` sends a page
        request to the source (it may fail: the wait goes on, and a recovered stream asks
        again with `outstanding`); ``vcpus``: how many vCPUs may fault; ``clock`` times their
        waits (tests give it a clock they move). The arrays must be contiguous: the C table
        writes them in place."""
        self._clock = clock
        self._present = present
        self._arrays = (ram.buf, present.data, written.data, crc.data)
        self._table = _pagecodec.PageTable(int(np.count_nonzero(~present)), wire.ZERO_CRC)
        self._request = request
        self._lock = threading.Lock()  # the vCPUs' waits; never held across one
        self._waiting: dict[int, tuple[int, float]] = {}  # vCPU → the page it waits for, since
        self._blocked_s = [0.0] * vcpus  # each vCPU's waits
        # QEMU's total: the time when every vCPU was blocked at once, and since when they are
        self._all_blocked_s = 0.0
        self._all_since: float | None = None
        self._latencies: list[float] = []
        self._switched = self._clock()  # the map is made at the switch
        self._at: list[float] = []

    @property
    def missing(self) -> int:
        return int(self._table.missing)

    def present_bits(self) -> npt.NDArray[np.bool_]:
        """A copy; a page placed meanwhile may be in it or not (a recovery then sends it
        again, and the copy that comes second is dropped)."""
        return self._present.copy()

    def fault(self, pages: npt.NDArray[np.intp], stop: threading.Event, vcpu: int = 0) -> bool:
        """Before vCPU ``vcpu`` writes ``pages``: fetch each missing one, in order, as a vCPU
        faults on one page at a time. False when ``stop`` was set meanwhile."""
        if not self._table.missing:
            return True
        for page in pages[~self._present[pages]].tolist():
            if not self._wait_for(page, stop, vcpu):
                return False
        return True

    def _wait_for(self, page: int, stop: threading.Event, vcpu: int) -> bool:
        if self._present[page]:
            return True
        with self._lock:
            t0 = self._clock()
            self._waiting[vcpu] = (page, t0)
            if len(self._waiting) == len(self._blocked_s):
                self._all_since = t0
        try:
            self._request(np.array([page], dtype=np.intp))
        except OSError as exc:  # the stream broke: the page comes after a recovery
            log.info("page request for %d not sent: %s", page, exc)
        here = False
        while not (here := self._table.wait(self._arrays[1], page, FAULT_SLICE_S)):
            if stop.is_set():
                break
        with self._lock:
            now = self._clock()
            del self._waiting[vcpu]
            if self._all_since is not None:  # this vCPU ends the time all were blocked
                self._all_blocked_s += now - self._all_since
                self._all_since = None
            self._blocked_s[vcpu] += now - t0  # a stop's too: the total counted it
            if not here:
                return False
            self._latencies.append((now - t0) * 1000)
            self._at.append((t0 - self._switched) * 1000)
        return True

    def outstanding(self) -> npt.NDArray[np.intp]:
        """The pages the vCPUs wait for (to ask again on a new stream)."""
        with self._lock:
            pages = sorted({page for page, _ in self._waiting.values()})
        return np.array(pages, dtype=np.intp)

    def place(self, indices: npt.NDArray[np.intp], data: memoryview | None) -> int:
        """Write the pages not yet present (``data``: their contents back to back, or None
        for zero pages), take their CRCs and make them present; returns how many.

        A chunk at a time under the lock: a requested page that the preempt channel brings
        waits for one chunk of a background batch, not for the whole batch."""
        pages = np.ascontiguousarray(indices, dtype=np.intp)
        return int(self._table.place(*self._arrays, pages.data, data, PLACE_CHUNK))

    def serve(self, sock: socket.socket, other: bool = False) -> tuple[int, int] | None:
        """BATCH records from ``sock`` (postcopy-preempt's channel, or the main stream after
        the switch), their pages placed as they come, all without the GIL (a vCPU's wait does
        not hand over to the thread that reads them). None at the stream's clean end, else
        (``other``) the (type, length) of the first other record, its body still to read.
        StreamError for a bad record, or any other without ``other``; OSError."""
        try:
            return self._table.serve(
                sock.fileno(),
                *self._arrays,
                wire.Rec.BATCH,
                wire.Kind.ZERO,
                wire.Kind.PAGE,
                KNOWN_KINDS,
                wire.MAX_BATCH,
                wire.MAX_RECORD,
                PLACE_CHUNK,
                other,
            )
        except ValueError as exc:
            raise wire.StreamError(str(exc)) from None

    def wait_complete(self, timeout: float) -> bool:
        """Until every page is present (the last may still be on the preempt channel)."""
        return bool(self._table.wait_complete(timeout))

    def blocktime(self) -> Blocktime:
        with self._lock:
            # Waits still going on count up to now, so the total never exceeds a vCPU's.
            now, total, blocked = self._clock(), self._all_blocked_s, list(self._blocked_s)
            if self._all_since is not None:
                total += now - self._all_since
            for vcpu, (_, since) in self._waiting.items():
                blocked[vcpu] += now - since
            vcpu_ms = tuple(int(s * 1000) for s in blocked)
            return Blocktime(
                int(total * 1000),
                vcpu_ms,
                len(self._latencies),
                tuple(self._latencies),
                tuple(self._at),
            )


# -- the source --------------------------------------------------------------------------------
class PageRequests:
    """Pages the destination asked for, oldest first, each queued at most once until taken."""

    def __init__(self, pages: int, wake: Callable[[], None]) -> None:
        """``wake`` rouses a migration thread waiting out its rate limit: urgent pages go now."""
        self._lock = threading.Condition()
        self._queue: deque[int] = deque()
        self._queued = np.zeros(pages, dtype=bool)
        self._wake = wake
        self.count = 0  # pages requested (QEMU's postcopy-requests)

    def add(self, indices: npt.NDArray[np.intp]) -> None:
        with self._lock:
            self.count += len(indices)
            for page in distinct(indices[~self._queued[indices]]).tolist():
                self._queued[page] = True
                self._queue.append(page)
            self._lock.notify_all()
        self._wake()

    def wake(self) -> None:
        with self._lock:
            self._lock.notify_all()
        self._wake()

    def wait(self, timeout: float) -> None:
        """Until a request is pending or a wake, at most ``timeout``."""
        with self._lock:
            if not self._queue:
                self._lock.wait(timeout)

    def pending(self) -> bool:
        return bool(self._queue)

    def take(self, limit: int) -> npt.NDArray[np.intp]:
        with self._lock:
            n = min(limit, len(self._queue))
            out = np.array([self._queue.popleft() for _ in range(n)], dtype=np.intp)
            self._queued[out] = False
        return out


class ReturnPath(threading.Thread):
    """The source's reader of the destination's records during postcopy: page requests (each
    validated; a bad one is refused and reported, nothing else happens), then ACK or NACK."""

    def __init__(
        self,
        sock: socket.socket,
        pages: int,
        requests: PageRequests,
        report: Callable[[str], None],
        urgent: Callable[[npt.NDArray[np.intp]], None] | None = None,
    ) -> None:
        """``urgent``: send requested pages at once from this thread (postcopy-preempt's
        channel) instead of queueing them for the migration thread."""
        super().__init__(name="return_path", daemon=True)
        self._urgent = urgent
        self._sock = sock
        self._pages = pages
        self._requests = requests
        self._report = report
        self.verdict: wire.Reply | None = None  # the destination's ACK or NACK
        self.error: str | None = None  # why the return path ended without a verdict
        self.ended = threading.Event()
        self.refused = 0  # hostile or malformed records ignored

    def run(self) -> None:
        try:
            self._read()
        except (OSError, wire.StreamError) as exc:
            self.error = str(exc) if isinstance(exc, wire.StreamError) else exc.strerror or str(exc)
        finally:
            self.ended.set()
            self._requests.wake()

    def _read(self) -> None:
        while (head := wire.read_record_head(self._sock)) is not None:
            kind, length = head
            body = wire.read_body(self._sock, length, wire.MAX_RECORD)
            if kind == wire.Rec.REQUEST:
                try:
                    pages = decode_request(body, self._pages)
                except wire.StreamError as exc:
                    self._refuse(f"refused a page request from the destination: {exc}")
                    continue
                if self._urgent is None:
                    self._requests.add(pages)
                else:
                    self._requests.count += len(pages)
                    self._urgent(pages)
            elif kind in (wire.Rec.ACK, wire.Rec.NACK):
                self.verdict = wire.parse_reply(kind, body)
                return
            else:
                self._refuse(f"ignored a return-path record of type 0x{kind:02x}")
        self.error = "the connection closed"

    def _refuse(self, why: str) -> None:
        self.refused += 1
        log.warning("postcopy: %s", why)
        if self.refused == 1:  # once: a flood of them must not flood the monitor
            self._report(f"warning: postcopy: {why}")
