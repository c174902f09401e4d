"""Duplicate pages under multifd: a page whose contents the destination already holds in
another page goes as a COPY (destination page, source page) on the main stream instead.

Images hold many identical pages (the bench's binaries and text: 13% of the non-zero ones).
The source fingerprints each page it is about to send (engine/_pagecodec.c ``dedupe``, one
GIL-free pass) and looks it up in a direct-mapped table of pages already sent. A match is
used only if that page is still held as it was sent (the fingerprint it was last sent with is
the entry's) and was sent before the last multifd barrier: the destination's main stream
applies a COPY after its previous EOS, where every channel has placed every packet sent
before that barrier, and before its next EOS, which every later packet waits for, so neither
a stale nor a newer copy of either page can be read or overtaken. The duplicate's own CRC
goes in the digest: a fingerprint collision fails the migration, it never corrupts the guest.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from engine import _pagecodec
from engine.guest import GuestRam

MAX_SLOTS = 1 << 20  # 24 MiB of table at most; a smaller guest gets one slot per page
NEVER = np.iinfo(np.int32).max  # the sent generation of a page that is no valid source


class Dedupe:
    """The source's table; ``generation`` counts the multifd barriers passed."""

    def __init__(self, ram: GuestRam) -> None:
        self._ram = ram
        slots = min(MAX_SLOTS, 1 << max(0, ram.pages - 1).bit_length())
        self._keys = np.zeros(2 * slots, np.uint64)
        self._owners = np.full(slots, -1, np.int64)
        self._sent_key = np.zeros(ram.pages, np.uint64)
        self._sent_gen = np.full(ram.pages, NEVER, np.int32)
        self.generation = 0
        self.found = 0

    def split(
        self, pages: npt.NDArray[np.intp]
    ) -> tuple[
        npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.uint32]
    ]:
        """These non-zero pages, about to be sent: (the ones to send, the duplicates, the page
        each duplicates, the duplicates' CRCs)."""
        pages = np.ascontiguousarray(pages, dtype=np.intp)
        source = np.empty(len(pages), np.intp)
        crcs = np.empty(len(pages), np.uint32)
        found = _pagecodec.dedupe(
            self._ram.buf,
            pages.data,
            self._keys.data,
            self._owners.data,
            self._sent_key.data,
            self._sent_gen.data,
            self.generation,
            source.data,
            crcs.data,
        )
        if not found:
            return pages, pages[:0], pages[:0], crcs[:0]
        dup = source >= 0
        self.found += found
        return pages[~dup], pages[dup], source[dup], crcs[dup]

    def forget(self, pages: npt.NDArray[np.intp]) -> None:
        """These pages went another way (as zero pages): no longer a source for a COPY."""
        self._sent_gen[pages] = NEVER
