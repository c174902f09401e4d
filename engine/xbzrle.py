"""XBZRLE: re-dirtied pages sent as deltas against the copy last sent (QEMU's docs/xbzrle.txt).

The source keeps a page cache of ``xbzrle-cache-size`` bytes, as QEMU's page_cache.c does:
direct-mapped, one slot per cache page; a page enters it when sent normally; a hit refreshes
its age (the dirty-sync count); an insertion never evicts another page's entry younger than
two syncs. A cached page found dirty again goes as the delta of its cached copy, which then
takes the new contents; a delta longer than a page overflows and the page goes whole. The
encoding, the cache's decisions and the destination's checks run in engine/_pagecodec.c, a
batch per call with the GIL released. What is sent is the copy read once into C, so the
cache always holds what the destination holds even while the guest writes the page.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engine import _pagecodec
from engine.errors import MigrationError
from engine.guest import PAGE_SIZE, GuestRam
from engine.wire import StreamError

MISS = -2  # not in the cache: sent whole (and cached, unless in the last stage)
OVERFLOW = -1  # the delta would exceed a page: sent whole


@dataclass(frozen=True)
class Encoded:
    """One batch through the cache: per page MISS, OVERFLOW or its delta's length (0: the page
    is unchanged and nothing is sent), the whole pages back to back, the deltas back to back,
    and each page's CRC-32 as the destination will hold it."""

    status: list[int]
    raw: bytes
    deltas: bytes
    crcs: list[int]


class PageCache:
    """The source's XBZRLE cache; one thread (the migration thread) uses it."""

    def __init__(self, size: int) -> None:
        if size < PAGE_SIZE or size & (size - 1):
            raise ValueError(f"cache size {size} is not a power of two of pages")
        self.size = size
        slots = size // PAGE_SIZE
        # Buffers the C codec reads and updates, all calloc'd so untouched slots cost no RAM:
        # each slot's copy, the page it holds plus one (0: none), the sync it was used at.
        try:
            self._data = np.zeros(size, dtype=np.uint8).data
            self._addr = np.zeros(slots, dtype=np.int64).data
            self._age = np.zeros(slots, dtype=np.int64).data
        except MemoryError:
            raise MigrationError(f"xbzrle: cannot allocate a page cache of {size} bytes") from None

    def encode(self, ram: GuestRam, pages: npt.NDArray[np.intp], age: int, last: bool) -> Encoded:
        """``last``: the final stage, whose pages never come again, reads the cache only."""
        status, raw, deltas, crcs = _pagecodec.xbzrle_encode(
            ram.buf, pages.tolist(), self._data, self._addr, self._age, age, last
        )
        return Encoded(status, raw, deltas, crcs)

    def cache_zero(self, pages: npt.NDArray[np.intp], age: int) -> None:
        """Zero pages sent replace their cached copies (QEMU's xbzrle_cache_zero_page)."""
        _pagecodec.xbzrle_cache_zero(pages.tolist(), self._data, self._addr, self._age, age)


def decode_into(
    ram: GuestRam, pages: list[int], payload: memoryview, sizes: list[int]
) -> list[int]:
    """Apply each delta to its page of ``ram``; the pages' CRCs. A malformed delta raises
    StreamError with QEMU's text, and nothing past its page (nor of it) is written."""
    try:
        return _pagecodec.xbzrle_decode_into(ram.buf, pages, payload, sizes)
    except ValueError as exc:
        raise StreamError("Failed to load XBZRLE page - decode error!") from exc
