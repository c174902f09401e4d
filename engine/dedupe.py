"""Duplicate pages under multifd: a page whose contents the destination already holds in
another page goes as a COPY (destination page, source page) on the main stream instead.

Images hold many identical pages (the bench's binaries and text: 13% of the non-zero ones).
The source fingerprints each page it is about to send, with its CRC-32, in one GIL-free pass
(engine/_pagecodec.c ``fingerprints``), and looks it up (``dedupe``) in a direct-mapped table
of pages sent. A
page is a source for a COPY only once its channel has sent it and confirmed it sent the
contents fingerprinted (the CRC it took as it sent equals the scan's), only if that was
before the last EOS, and only while it is not to be sent again before the next EOS (neither
in the dirty bitmap nor sent since that EOS). The destination applies a COPY after that EOS,
where every channel has placed every packet sent before it, and no newer copy of the source
page can land until the next EOS; so the COPY reads exactly what was fingerprinted. The
duplicate's own CRC goes in the digest: a fingerprint collision fails the migration, it does
not corrupt the guest. (A page rewritten between the scan and its send that keeps its CRC-32
would stay a source: the 2^-32 the digest itself rests on.)
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

from engine import _pagecodec
from engine.guest import GuestRam

MAX_SLOTS = 1 << 20  # 24 MiB of table at most; a smaller guest gets one slot per page
NEVER = np.iinfo(np.int32).max  # the sent generation of a page that is no valid source
Pages = npt.NDArray[np.intp]
Crcs = npt.NDArray[np.uint32]


class Dedupe:
    """The source's table; ``generation`` counts the EOS records sent."""

    def __init__(self, ram: GuestRam, bitmap: npt.NDArray[np.bool_]) -> None:
        """``bitmap``: the migration's dirty bitmap (pages still to send), read in place."""
        self._ram = ram
        self._bitmap = bitmap
        slots = min(MAX_SLOTS, 1 << max(0, ram.pages - 1).bit_length())
        self._keys = np.zeros(2 * slots, np.uint64)
        self._owners = np.full(slots, -1, np.int64)
        self._sent_key = np.zeros(ram.pages, np.uint64)
        self._sent_gen = np.full(ram.pages, NEVER, np.int32)
        self._pending_gen = np.full(ram.pages, NEVER, np.int32)
        self.generation = 0
        # The scan and the channels' confirmations read and set a page's state in one step
        # each: a confirmation of an older send must not land inside a scan of the page.
        self._lock = threading.Lock()

    def split(self, pages: Pages) -> tuple[Pages, Crcs, Pages, Pages, Crcs]:
        """These non-zero pages, about to be sent: (the ones to send, their CRCs, the
        duplicates, the page each duplicates, the duplicates' CRCs)."""
        pages = np.ascontiguousarray(pages, dtype=np.intp)
        prints = np.empty(2 * len(pages), np.uint64)
        crcs = np.empty(len(pages), np.uint32)
        _pagecodec.fingerprints(self._ram.buf, pages.data, prints.data, crcs.data)
        source = np.empty(len(pages), np.intp)
        with self._lock:  # the lookup alone: reading RAM above needs no lock
            found = _pagecodec.dedupe(
                pages.data,
                prints.data,
                self._keys.data,
                self._owners.data,
                self._sent_key.data,
                self._sent_gen.data,
                self._pending_gen.data,
                self._bitmap.view(np.uint8).data,
                self.generation,
                source.data,
            )
        if not found:
            return pages, crcs, pages[:0], pages[:0], crcs[:0]
        dup = source >= 0
        return pages[~dup], crcs[~dup], pages[dup], source[dup], crcs[dup]

    def confirm(self, pages: Pages, scanned: Crcs, sent: Crcs, generation: int) -> None:
        """A channel sent these pages of ``generation`` with these CRCs (from any thread):
        the ones sent as scanned, and not scanned again since, become sources."""
        with self._lock:
            ok = (scanned == sent) & (self._pending_gen[pages] == generation)
            self._sent_gen[pages[ok]] = generation

    def forget(self, pages: Pages) -> None:
        """These pages went another way (as zero pages): no longer a source for a COPY, nor
        an owner of their old contents' entry."""
        with self._lock:
            self._sent_gen[pages] = NEVER
            self._sent_key[pages] = 0
