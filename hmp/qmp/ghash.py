"""GLib's GHashTable iteration order, which decides the member QEMU names first.

QEMU's QObject input visitor keeps an object's not-yet-visited keys in a GHashTable
(``g_str_hash``), filled in the order the request gave them (so the recordings of QEMU
11.1 show: ``{"uri", "blk", "inc"}`` names ``inc``) and emptied as members are visited; a key
still there at the end is ``Parameter 'KEY' is unexpected``, and with several, the first in
the table's slot order. This is GLib's open addressing (``(hash * 11) % prime``, quadratic
probing, tombstones, growth at 15/16 occupancy), enough to reproduce that order.
"""

from __future__ import annotations

from collections.abc import Iterable

_PRIME_MOD = (1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749)
_MIN_SHIFT = 3
_UNUSED, _TOMBSTONE = 0, 1


def g_str_hash(key: str) -> int:
    """GLib's djb2 over the key's bytes, as signed chars, in 32 bits."""
    h = 5381
    for byte in key.encode():
        h = (h * 33 + (byte - 256 if byte >= 128 else byte)) & 0xFFFFFFFF
    return max(h, 2)  # 0 and 1 mark unused and deleted slots


class _Table:
    def __init__(self, shift: int) -> None:
        self.shift = shift
        self.hashes = [_UNUSED] * (1 << shift)
        self.keys: list[str | None] = [None] * (1 << shift)
        self.nnodes = self.noccupied = 0

    def _slot(self, h: int, key: str) -> int:
        mask = len(self.hashes) - 1
        index, step, tombstone = (h * 11) % _PRIME_MOD[self.shift], 0, None
        while self.hashes[index] != _UNUSED:
            if self.hashes[index] == h and self.keys[index] == key:
                return index
            if self.hashes[index] == _TOMBSTONE and tombstone is None:
                tombstone = index
            step += 1
            index = (index + step) & mask
        return index if tombstone is None else tombstone

    def insert(self, key: str) -> None:
        h = g_str_hash(key)
        index = self._slot(h, key)
        if self.hashes[index] >= 2:
            return
        if self.hashes[index] == _UNUSED:
            self.noccupied += 1
        self.hashes[index], self.keys[index] = h, key
        self.nnodes += 1

    def remove(self, key: str) -> None:
        index = self._slot(g_str_hash(key), key)
        if self.hashes[index] >= 2:
            self.hashes[index], self.keys[index] = _TOMBSTONE, None
            self.nnodes -= 1

    def ordered(self) -> list[str]:
        return [k for h, k in zip(self.hashes, self.keys, strict=True) if h >= 2 and k]

    def needs_resize(self) -> bool:
        size = len(self.hashes)
        return (size > self.nnodes * 4 and self.shift > _MIN_SHIFT) or (
            size <= self.noccupied + self.noccupied // 16
        )


def _resized(table: _Table) -> _Table:
    grown = _Table(max(_MIN_SHIFT, (table.nnodes * 2).bit_length()))
    for key in table.ordered():
        grown.insert(key)
    return grown


def ghash_order(keys: Iterable[str], removed: Iterable[str] = ()) -> list[str]:
    """``keys`` inserted in order, then ``removed`` deleted: what iteration then yields."""
    table = _Table(_MIN_SHIFT)
    for key in keys:
        table.insert(key)
        if table.needs_resize():
            table = _resized(table)
    for key in removed:
        table.remove(key)
        if table.needs_resize():
            table = _resized(table)
    return table.ordered()
