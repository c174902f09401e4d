"""Guest RAM: one real buffer of 4 KiB pages, its dirty log, and the vCPU gate writers obey."""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from zlib_ng import zlib_ng

from engine import _pagecodec
from engine.errors import MigrationError

# The C page codec runs the zlib-ng inside python-zlib-ng (compression, CRCs), as
# everything else here does.
_pagecodec.bind(zlib_ng.__file__)
PAGE_SIZE: int = _pagecodec.PAGE_SIZE  # one definition, the C page codec's
PAGE_SHIFT = PAGE_SIZE.bit_length() - 1
ZERO_PAGE = bytes(PAGE_SIZE)

PageIndex = npt.NDArray[np.intp]
# Linux 5.14's madvise that faults a range in at once (the asm-generic value; Python 3.11's
# mmap module does not name it).
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def runs(indices: PageIndex) -> list[tuple[int, int]]:
    """Sorted page indices as maximal [start, stop) runs, so work can use slices, not copies."""
    if not len(indices):
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(indices)])) - 1
    return list(zip(indices[starts].tolist(), (indices[ends] + 1).tolist(), strict=True))


class VcpuGate:
    """Whether guest code may run now, and how much auto-converge throttles it.

    A vCPU (a workload writer) brackets each time slice of guest work with :meth:`enter`
    and :meth:`leave`. Stopping (``set_running(False)``) returns only once no vCPU is inside a
    slice, so a stopped VM really writes nothing more: stop-and-copy depends on it.
    """

    SLICE_S = 0.010  # QEMU's CPU_THROTTLE_TIMESLICE_NS

    def __init__(self, running: bool) -> None:
        self._cond = threading.Condition()
        self._running = running
        self._throttle_pct = 0
        self._in_slice = 0

    @property
    def running(self) -> bool:
        return self._running

    @property
    def throttle_pct(self) -> int:
        return self._throttle_pct

    def set_running(self, running: bool, timeout: float = 5.0) -> None:
        """Start or stop the vCPUs; stopping waits until each has finished its slice."""
        with self._cond:
            self._running = running
            if not running:
                self._cond.wait_for(lambda: not self._in_slice, timeout)

    def set_throttle(self, pct: int) -> None:
        self._throttle_pct = pct

    def enter(self) -> bool:
        """Begin a slice of guest work; False (and no slice) while the VM is stopped."""
        with self._cond:
            if not self._running:
                return False
            self._in_slice += 1
            return True

    def leave(self) -> None:
        with self._cond:
            self._in_slice -= 1
            self._cond.notify_all()


class GuestRam:
    """``size`` bytes of anonymous memory plus a dirty bitmap with an atomic swap-and-clear."""

    def __init__(self, size: int, *, prealloc: bool = False, huge: bool = True) -> None:
        """``prealloc``: fault every page in now (QEMU's -mem-prealloc), not on first use.
        ``huge``: back RAM with transparent huge pages (each first touch zeroes 2 MiB)."""
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"RAM size {size} is not a positive multiple of {PAGE_SIZE}")
        self.size = size
        self.pages = size // PAGE_SIZE
        # Private anonymous memory: zero-filled, untouched pages cost no RSS, and (unlike a
        # shared mapping) it can use transparent huge pages, which make first touch ~4x cheaper.
        try:
            self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except (OSError, OverflowError) as exc:  # more than the kernel, or the address space, has
            reason = os.strerror(getattr(exc, "errno", None) or errno.ENOMEM)
            raise MigrationError(f"cannot set up guest memory 'ram': {reason}") from exc
        if huge and hasattr(mmap, "MADV_HUGEPAGE"):
            self._map.madvise(mmap.MADV_HUGEPAGE)
        self.buf = memoryview(self._map)
        self.array: npt.NDArray[np.uint8] = np.frombuffer(self._map, dtype=np.uint8)
        self.page_array = self.array.reshape(self.pages, PAGE_SIZE)
        if prealloc:
            self.page_array[:, 0] = 0  # one store per page: the kernel allocates them all now
        self._dirty = np.zeros(self.pages, dtype=bool)
        self._dirty_lock = threading.Lock()
        self._logging = False
        # Called with the pages a guest store is about to change (background-snapshot's
        # copy-before-write: engine/background.py); installed only while the vCPUs are stopped.
        self.write_hook: Callable[[npt.NDArray[np.intp]], None] | None = None
        # Postcopy's page table (engine/postcopy.py): fetches missing pages before a write.
        self.fault_hook: Callable[[PageIndex, threading.Event, int], bool] | None = None

    def fault(self, pages: PageIndex, stop: threading.Event, vcpu: int = 0) -> bool:
        """Before vCPU ``vcpu`` writes ``pages``: True once they are all present (during
        postcopy the missing ones are fetched from the source); False if ``stop`` was set
        meanwhile."""
        hook = self.fault_hook
        return True if hook is None else hook(pages, stop, vcpu)

    def use_small_pages(self) -> None:
        """Back RAM not yet touched with 4 KiB pages, for scattered first writes (the idle
        fill's): with huge pages, each would zero 2 MiB."""
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            self._map.madvise(mmap.MADV_NOHUGEPAGE)

    def populate(self, start: int, stop: int) -> None:
        """Fault pages [start, stop) in with one call, cheaper than a fault per page on the
        first writes (which do it instead on a kernel older than 5.14)."""
        try:
            self._map.madvise(
                MADV_POPULATE_WRITE, start << PAGE_SHIFT, (stop - start) << PAGE_SHIFT
            )
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: this kernel has no MADV_POPULATE_WRITE
                raise

    def prepare_writes(self, pages: PageIndex) -> None:
        """Fault in these never-written sorted pages before they are written whole, one call
        per run, without the GIL (multifd channels do this side by side): a 256 MiB copy into
        fresh 4 KiB pages took 160 ms faulting page by page, 120 ms so. (Huge pages for the
        runs that cover whole 2 MiB extents cost more on this shared machine: compaction.)"""
        if len(pages):
            _pagecodec.populate_pages(self.buf, np.ascontiguousarray(pages, dtype=np.intp).data)

    def release(self, indices: PageIndex) -> None:
        """Give these sorted pages' memory back to the kernel (release-ram: the destination
        holds them now); they read as zero afterwards."""
        for a, b in runs(indices):
            self._map.madvise(mmap.MADV_DONTNEED, a << PAGE_SHIFT, (b - a) << PAGE_SHIFT)

    def page(self, index: int) -> memoryview:
        off = index << PAGE_SHIFT
        return self.buf[off : off + PAGE_SIZE]

    def start_dirty_log(self) -> None:
        with self._dirty_lock:
            self._dirty[:] = False
            self._logging = True

    def stop_dirty_log(self) -> None:
        with self._dirty_lock:
            self._logging = False
            self._dirty[:] = False

    def before_write(self, pages: npt.NDArray[np.intp]) -> None:
        """Every guest store calls this first with the pages it will change."""
        hook = self.write_hook
        if hook is not None:
            hook(pages)

    def mark_dirty(self, pages: PageIndex | slice) -> None:
        """Record guest writes; called *after* the bytes are written so no update is lost."""
        if self._logging:
            with self._dirty_lock:
                self._dirty[pages] = True

    def take_dirty(self) -> npt.NDArray[np.bool_]:
        """Swap out the dirty log (QEMU's bitmap sync): pages written since the last call."""
        with self._dirty_lock:
            taken = self._dirty.copy()
            self._dirty[:] = False
        return taken

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """A guest store of ``data`` at ``offset`` (what loaders and writers use)."""
        end = offset + len(data)
        if offset < 0 or end > self.size:
            raise ValueError(f"write of {len(data)} bytes at {offset:#x} is outside guest RAM")
        pages = np.arange(offset >> PAGE_SHIFT, (end + PAGE_SIZE - 1) >> PAGE_SHIFT)
        self.before_write(pages)
        self.buf[offset:end] = data
        self.mark_dirty(pages)

    def scan(self, indices: PageIndex) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint32]]:
        """Which of these pages are all zero, and the CRC-32 of the others (0 for zero pages):
        one C pass over the pages in place, without the GIL (but for a few pages)."""
        pages = np.ascontiguousarray(indices, dtype=np.intp)
        zero = np.empty(len(pages), dtype=bool)
        crcs = np.empty(len(pages), dtype=np.uint32)
        _pagecodec.scan_pages(self.buf, pages.data, zero.data, crcs.data)
        return zero, crcs

    def zero_mask(self, indices: PageIndex) -> npt.NDArray[np.bool_]:
        """Which of these pages are all zero (a page is read only up to its first non-zero
        word), in C without the GIL (but for a few pages)."""
        pages = np.ascontiguousarray(indices, dtype=np.intp)
        zero = np.empty(len(pages), dtype=bool)
        _pagecodec.scan_pages(self.buf, pages.data, zero.data, None)
        return zero

    def crc_pages(self, indices: PageIndex) -> npt.NDArray[np.uint32]:
        """CRC-32 of each page, read in place, in C without the GIL (but for a few pages)."""
        pages = np.ascontiguousarray(indices, dtype=np.intp)
        crcs = np.empty(len(pages), dtype=np.uint32)
        _pagecodec.crc_pages(self.buf, pages.data, crcs.data)
        return crcs

    def views(self, indices: PageIndex) -> list[memoryview]:
        """The pages as one memoryview per run (iovecs for sendmsg / recv_into)."""
        return [self.buf[a << PAGE_SHIFT : b << PAGE_SHIFT] for a, b in runs(indices)]

    def close(self) -> None:
        self.buf.release()
        del self.array, self.page_array
        self._map.close()
