"""background-snapshot: RAM as it was at one instant, saved while the guest keeps running.

QEMU 7.2 write-protects guest RAM with userfaultfd and, when the guest faults on a page not
yet saved, saves that page before letting the write through. Here every guest store already
goes through GuestRam.before_write, so the same copy-before-write is a hook there: a page the
guest is about to change is copied first (under the lock, so the copy is the old contents)
and goes out ahead of the rest, as QEMU's faulting pages do; the migration thread meanwhile
takes the other pages in order, each copied under the same lock. Either way each page is
taken exactly once, before any store after the start could reach it, so the stream holds
RAM as it was when tracking started.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
import numpy.typing as npt

from engine.guest import GuestRam

Batch = tuple[npt.NDArray[np.intp], npt.NDArray[np.uint8]]  # page indices, their contents


class CopyBeforeWrite:
    """Tracks which pages are saved; install it only while the vCPUs are stopped."""

    def __init__(self, ram: GuestRam) -> None:
        self._ram = ram
        self._lock = threading.Lock()
        self._saved = np.zeros(ram.pages, dtype=bool)
        self._copied: deque[Batch] = deque()  # taken ahead of a guest store, not yet sent
        self._cursor = 0
        self.left = ram.pages  # pages not yet taken
        self.copied_pages = 0  # pages the guest's stores made us copy first
        ram.write_hook = self._before_write

    def _before_write(self, pages: npt.NDArray[np.intp]) -> None:
        with self._lock:
            todo = np.unique(pages[~self._saved[pages]])
            if len(todo):
                self._copied.append(self._take(todo))
                self.copied_pages += len(todo)

    def _take(self, pages: npt.NDArray[np.intp]) -> Batch:
        """Copy ``pages`` as they are now and mark them saved (the caller holds the lock)."""
        self._saved[pages] = True
        self.left -= len(pages)
        return pages, self._ram.page_array[pages].copy()

    def next_batch(self, limit: int) -> Batch | None:
        """The next pages to send with their saved contents: those copied ahead of a store
        first (at most ``limit`` at a time: one guest store may touch more), then up to
        ``limit`` untaken ones in order; None once every page is taken."""
        with self._lock:
            if self._copied:
                pages, data = self._copied.popleft()
                if len(pages) > limit:
                    self._copied.appendleft((pages[limit:], data[limit:]))
                return pages[:limit], data[:limit]
            start = self._cursor
            pages = np.flatnonzero(~self._saved[start:])[:limit] + start
            if not len(pages):
                return None
            self._cursor = int(pages[-1]) + 1
            return self._take(pages)

    def close(self) -> None:
        """Stop tracking: the guest's stores go straight through again."""
        self._ram.write_hook = None
