"""Synthetic guest memory: OS-like pages of text, binaries and data, deterministic per seed.

Calibration: real OS memory shrinks to about 42-45% per 4 KiB page with stdlib zlib level 1
(QEMU's compressor). The generators model the structure of each kind rather than aim at a
number; each kind is near what real files of that kind give on this box (stdlib zlib-1:
prose 0.44-0.45, source 0.33-0.36, ELF .text 0.60-0.65, whole .so/binaries 0.49). Measured
per 4 KiB page on the non-zero pages of a 128 MiB idle guest, seed 0 (zlib-1 as
compressed/original; others as original/compressed):

======  =====  ======  =========  ======
kind    pages  zlib-1  zlib-ng-1  zstd-1
======  =====  ======  =========  ======
text    1608   0.384   1.98x      2.63x
binary  1696   0.518   1.58x      1.94x
data    1611   0.376   2.35x      2.84x
all     4915   0.428   1.91x      2.40x
======  =====  ======  =========  ======

Seeds 1-5 on 64 MiB give zlib-1 0.425-0.439; the pages of a real booted guest measured here
gave zlib-1 0.429, zlib-ng-1 1.92x, zstd-1 2.33x. Filling 2 GiB takes about 1 s (idle) and
2-2.5 s (random: page faults on the shared mapping dominate) on the 2-vCPU box.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from engine.guest import PAGE_SIZE, GuestRam

MiB = 1024 * 1024
IDLE_NONZERO = 0.15
RUN_MAX = 64
POOL_PAGES = 4096  # distinct template pages; reused round-robin, far beyond any codec window

U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]
# Each generator returns ``n`` distinct template pages of one kind as an (n, PAGE_SIZE) array.

I64 = npt.NDArray[np.int64]


def _table(items: list[bytes]) -> tuple[U8, I64, I64]:
    """A table of byte strings as one flat array plus starts and lengths (for _gather)."""
    lens = np.array([len(x) for x in items], dtype=np.int64)
    return np.frombuffer(b"".join(items), dtype=np.uint8), np.cumsum(lens) - lens, lens


def _gather(starts: I64, lens: I64, picks: I64, limit: int) -> I64:
    """Flat-table positions of the first ``limit`` bytes of the concatenated ``picks``."""
    n = lens[picks]
    ends = np.cumsum(n)
    used = int(np.searchsorted(ends, limit)) + 1  # picks needed to cover ``limit`` bytes
    assert used <= ends.size, "generator drew too few items"
    pos = np.repeat(starts[picks[:used]] - (ends[:used] - n[:used]), n[:used])[:limit]
    pos += np.arange(limit)
    return pos


def _pages(stream: U8, n: int) -> U8:
    return stream.reshape(n, PAGE_SIZE)


_COMMON = (
    b"the of and to a in is that for it as was with be by on not he this are or his from at "
    b"which but have an they you were her she there been one all we their has would when if "
    b"so no will can more other its into than then only new some could time these two may "
    b"first any like over such our after also most used many where through return int const "
    b"char void struct static else while self None true false NULL error value data size type "
    b"name list len count buffer default config path user = == != -> ( ) { } [ ] ; : # * & + "
    b"- / < > 0 1 2 3 4 8 16 32 64 100 0x0 i j n p"
).split()
_ONSETS = "b c d f g h j k l m n p r s t v w y z bl br ch cl cr dr fl fr gr pl pr sc sh sl sp st "
_ONSETS += "str th tr wh"
_SYLLABLES = [
    (o + v + c).encode()
    for o in ["", *_ONSETS.split()]
    for v in ["a", "e", "i", "o", "u", "ea", "ou", "io"]
    for c in ["", "n", "r", "s", "t", "l", "nd", "ng", "st", "ck"]
]
# Separators after each word, for prose and for source-like text (config, code, markup).
_SEPS = (
    b" ",
    b"\n",
    b"\n\n",
    b", ",
    b". ",
    b"\n    ",
    b"\n        ",
    b"\n\t",
    b" = ",
    b"(",
    b");\n",
)
_SEP_PROSE = np.array([80, 6, 1, 7, 6, 0, 0, 0, 0, 0, 0], dtype=float)
_SEP_SOURCE = np.array([40, 8, 2, 6, 1, 10, 10, 3, 8, 6, 6], dtype=float)
_TOPIC = 200  # content words one page of prose draws on (source text: a quarter of them)
_TOKENS_PER_BLOCK = 700  # about one page


def _zipf(n: int, q: float = 2.7) -> npt.NDArray[np.float64]:
    w = 1.0 / (np.arange(n) + q)
    return w / w.sum()


def _text(rng: np.random.Generator, n: int) -> U8:
    """Page cache of documents: half prose, half source-like text (indented, fewer names).

    Function words follow one Zipf law; content words come from a per-page topic drawn from a
    larger Zipf vocabulary, so words recur within a page as they do in real text.
    """
    nsyl = rng.choice([1, 1, 2, 2, 2, 3], size=6000)
    syl = rng.choice(len(_SYLLABLES), size=int(nsyl.sum()), p=_zipf(len(_SYLLABLES), 20))
    ends = np.cumsum(nsyl).tolist()
    syl_l = syl.tolist()
    words = [
        b"".join(_SYLLABLES[s] for s in syl_l[e - k : e])
        for k, e in zip(nsyl.tolist(), ends, strict=True)
    ]
    vocab = list(_COMMON) + words
    flat, starts, lens = _table(vocab + list(_SEPS))
    ntok = n * PAGE_SIZE // 5 + PAGE_SIZE  # a word plus a separator averages > 6 bytes
    block = np.arange(ntok) // _TOKENS_PER_BLOCK
    source = (rng.random(block[-1] + 1) < 0.5)[block]
    topics = len(_COMMON) + rng.choice(
        len(words), size=(block[-1] + 1, _TOPIC), p=_zipf(len(words))
    )
    rank = np.where(
        source,
        rng.choice(_TOPIC // 4, size=ntok, p=_zipf(_TOPIC // 4)),
        rng.choice(_TOPIC, size=ntok, p=_zipf(_TOPIC)),
    )
    function = rng.choice(len(_COMMON), size=ntok, p=_zipf(len(_COMMON)))
    seps = np.where(
        source,
        rng.choice(len(_SEPS), size=ntok, p=_SEP_SOURCE / _SEP_SOURCE.sum()),
        rng.choice(len(_SEPS), size=ntok, p=_SEP_PROSE / _SEP_PROSE.sum()),
    )
    word = np.where(rng.random(ntok) < 0.5, function, topics[block, rank])
    # Phrases recur (code above all): segments of ~4 tokens repeat one seen 2-64 tokens back.
    seg = np.cumsum(rng.random(ntok) < 0.25)
    back = rng.integers(2, 65, size=seg[-1] + 1)[seg]
    copy = (rng.random(seg[-1] + 1)[seg] < np.where(source, 0.5, 0.05)) & (back <= np.arange(ntok))
    src_i = np.where(copy, np.arange(ntok) - back, np.arange(ntok))
    picks = np.empty(2 * ntok, dtype=np.int64)
    picks[0::2] = word[src_i]
    picks[1::2] = len(vocab) + seps[src_i]
    pos = _gather(starts, lens, picks, n * PAGE_SIZE)
    return _pages(flat[pos], n)


# x86-64-like instruction templates (single instructions and common idioms) with weights.
# Tokens: a hex byte, or an operand field: d stack disp8, R rel32, i imm8, I imm32 (small),
# m reg-reg ModRM, b rel8.
_CODE = (
    ("55 48 89 e5 41 54 53 48 83 ec i", 3), ("48 83 c4 i 5b 41 5c 5d c3", 3), ("55", 2),
    ("53", 3), ("41 54", 2), ("41 55", 1), ("5d", 2), ("5b", 3), ("41 5c", 2), ("c3", 2),
    ("c3 0f 1f 44 00 00", 1), ("c3 66 2e 0f 1f 84 00 00 00 00 00", 1), ("cc cc cc cc", 1),
    ("48 8b 45 d", 8), ("48 89 45 d", 6), ("8b 45 d", 5), ("89 45 d", 4), ("48 8b 7d d", 3),
    ("48 8b 75 d", 2), ("48 89 m", 10), ("89 m", 6), ("48 39 m", 3), ("85 c0", 4),
    ("48 85 c0", 3), ("31 c0", 3), ("b8 I", 3), ("bf I", 2), ("ba I", 1), ("e8 R", 5),
    ("48 89 m e8 R", 4), ("48 8b 7d d e8 R 85 c0 74 b", 4), ("e8 R 48 85 c0 0f 84 R", 3),
    ("e9 R", 2), ("eb b", 3), ("74 b", 5), ("75 b", 5), ("7e b", 1), ("0f 84 R", 2),
    ("0f 85 R", 2), ("48 8d 3d R", 3), ("48 8b 05 R", 2), ("48 8b 05 R 48 8b 00", 2),
    ("48 8d 45 d", 3), ("83 f8 i", 2), ("48 83 c0 i", 2), ("8b 45 d 83 c0 01 89 45 d", 2),
    ("48 89 c7 e8 R 48 89 45 d", 3), ("0f b6 45 d", 1), ("f2 0f 10 45 d", 1), ("c7 45 d I", 1),
    ("ff 15 R", 2), ("64 48 8b 04 25 28 00 00 00", 1),
)  # fmt: skip
_FIELDS = {"d": [1], "R": [2, 2, 3, 4], "i": [5], "I": [6, 0, 0, 0], "m": [7], "b": [8]}
# Register pairs in ModRM are far from uniform (rdi/rsi/rax/rbx/rbp dominate).
_MODRM = np.array([0xC7, 0xC6, 0xDF, 0xE7, 0xEF, 0xC3, 0xD8, 0xF7, 0xC2, 0xD6, 0xFE, 0xC1, 0xE5])


def _code_table() -> tuple[U8, U8, I64, I64, npt.NDArray[np.float64]]:
    """Templates as flat byte and field-kind tables (fields are placeholder zero bytes)."""
    codes: list[bytes] = []
    kinds: list[bytes] = []
    for tmpl, _ in _CODE:
        toks = tmpl.split()
        kinds.append(bytes(k for t in toks for k in _FIELDS.get(t, [0])))
        codes.append(
            bytes(0 if t in _FIELDS else int(t, 16) for t in toks for _ in _FIELDS.get(t, [0]))
        )
    flat, starts, lens = _table(codes)
    weights = np.array([w for _, w in _CODE], dtype=float)
    return flat, _table(kinds)[0], starts, lens, weights / weights.sum()


_CODE_BYTES, _CODE_KINDS, _CODE_STARTS, _CODE_LENS, _CODE_P = _code_table()


def _code(rng: np.random.Generator, n: int) -> U8:
    """Instruction streams: skewed opcode and register mix, stack slots, near calls and jumps."""
    picks = rng.choice(_CODE_P.size, size=n * PAGE_SIZE // 3 + PAGE_SIZE, p=_CODE_P)
    pos = _gather(_CODE_STARTS, _CODE_LENS, picks, n * PAGE_SIZE)
    out = _CODE_BYTES[pos]
    kind = _CODE_KINDS[pos]

    def fill(k: int, values: Callable[[int], npt.NDArray[np.integer]]) -> None:
        sel = kind == k
        out[sel] = values(int(sel.sum())) & 0xFF

    # A function (~256 bytes) keeps using the same few stack slots.
    slots = 1 + rng.choice(16, size=(n * PAGE_SIZE // 256 + 1, 4), p=_zipf(16, 2.0))
    func = np.flatnonzero(kind == 1) // 256
    fill(1, lambda m: -8 * slots[func, rng.choice(4, size=m, p=_zipf(4, 1.0))])  # [rbp-8*k]
    # rel32 within +-1 MiB: two random bytes, a nibble, then the sign byte.
    fill(2, lambda m: rng.integers(0, 256, size=m))
    fill(3, lambda m: rng.integers(0, 16, size=m) | rng.choice([0, 0xF0], size=m))
    high = np.flatnonzero(kind == 4)  # always right after its kind-3 byte
    out[high] = np.where(out[high - 1] >= 0xF0, 0xFF, 0)
    fill(5, lambda m: 8 * rng.integers(0, 9, size=m))
    fill(6, lambda m: np.minimum(rng.geometric(0.1, size=m), 255))
    fill(7, lambda m: rng.choice(_MODRM, size=m, p=_zipf(_MODRM.size, 1.0)))
    fill(8, lambda m: rng.integers(2, 0x40, size=m))
    return _pages(out, n)


def _binary(rng: np.random.Generator, n: int) -> U8:
    """Executable images: .text, plus .rodata (strings) and symbol/relocation tables."""
    n_text, n_ro = n * 55 // 100, n * 25 // 100
    tables = np.empty((n - n_text - n_ro, PAGE_SIZE // 8), dtype=np.uint64)
    for p in range(tables.shape[0]):
        tables[p] = _elf_table(rng)
    return np.concatenate([_code(rng, n_text), _text(rng, n_ro), tables.view(np.uint8)])


def _elf_table(rng: np.random.Generator) -> U64:
    """Elf64_Rela (offset, info, addend) or Elf64_Sym (name, info/shndx, value, size) rows."""
    rows = np.zeros((PAGE_SIZE // 24 + 1, 3), dtype=np.uint64)
    start = int(rng.integers(1 << 12, 1 << 22)) * 8
    m = rows.shape[0]
    if rng.random() < 0.5:  # R_X86_64_RELATIVE relocations of a pointer table
        rows[:, 0] = start + 8 * np.arange(m, dtype=np.uint64)
        rows[:, 1] = 8
        rows[:, 2] = start // 2 + np.cumsum(rng.integers(16, 4096, size=m)).astype(np.uint64)
    else:  # dynamic symbols: global functions in .text (shndx 15), ascending name offsets
        rows[:, 0] = np.cumsum(rng.integers(8, 40, size=m)).astype(np.uint64) | (0x12 << 32)
        rows[:, 0] |= np.uint64(15 << 48)
        rows[:, 1] = start // 4 + np.cumsum(rng.integers(16, 2048, size=m)).astype(np.uint64)
        rows[:, 2] = rng.geometric(0.01, size=m).astype(np.uint64)
    return rows.reshape(-1)[: PAGE_SIZE // 8]


def _data(rng: np.random.Generator, n: int) -> U8:
    """Arrays of structs (pointers, small ints, doubles, ids, short strings) and page tables."""
    pages = np.zeros((n, PAGE_SIZE // 8), dtype=np.uint64)
    for p in range(n):
        if rng.random() < 0.1:
            pages[p] = _page_table(rng)
            continue
        slots = int(rng.choice([2, 3, 4, 5, 6, 8, 12, 16]))
        nrec = int(PAGE_SIZE // 8 // slots * rng.uniform(0.5, 1.0))  # arenas are part-used
        rec = np.empty((nrec, slots), dtype=np.uint64)
        for j in range(slots):
            rec[:, j] = _field(rng, int(rng.integers(0, len(_FIELD_P))), nrec)
        pages[p, : nrec * slots] = rec.reshape(-1)
    return pages.view(np.uint8)


_LETTERS = np.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz_", dtype=np.uint8)
_LETTER_P = _zipf(_LETTERS.size, 4.0)  # roughly English letter frequencies
_FIELD_P = (0, 0, 0, 1, 1, 2, 3, 4, 5, 6)  # ptr x3, small int x2, zero, double, id, str, flags
_HEAP_BASES = (0x0000_5555_5555_0000, 0x0000_7F00_0000_0000, 0xFFFF_8880_0000_0000)


def _field(rng: np.random.Generator, pick: int, m: int) -> U64:
    kind = _FIELD_P[pick]
    if kind == 0:  # pointers into one heap region, 16-aligned, some NULL
        base = _HEAP_BASES[int(rng.integers(0, 3))] + int(rng.integers(0, 1 << 16)) * (1 << 24)
        ptr = np.uint64(base) + rng.integers(0, 1 << 20, size=m).astype(np.uint64) * np.uint64(16)
        return np.where(rng.random(m) < 0.2, np.uint64(0), ptr)
    if kind == 1:  # counters, lengths, enums (two 32-bit halves)
        lo = np.minimum(rng.geometric(0.05, size=m), 1 << 31).astype(np.uint64)
        hi = np.where(rng.random(m) < 0.5, 0, rng.integers(0, 8, size=m)).astype(np.uint64)
        return lo | (hi << np.uint64(32))
    if kind == 2:  # padding
        return np.zeros(m, dtype=np.uint64)
    if kind == 3:  # doubles: whole numbers or measurements
        vals = np.where(rng.random(m) < 0.5, rng.integers(0, 1000, size=m), rng.random(m) * 100)
        return vals.astype(np.float64).view(np.uint64)
    if kind == 4:  # hashes, ids, random keys
        return rng.integers(0, 1 << 63, size=m, dtype=np.int64).astype(np.uint64)
    if kind == 5:  # short NUL-padded names
        chars = rng.choice(_LETTERS, size=(m, 8), p=_LETTER_P)
        chars[np.arange(8) >= rng.integers(2, 9, size=(m, 1))] = 0
        return chars.view(np.uint64).reshape(m)
    flags = rng.choice([0x1, 0x3, 0x11, 0x41, 0x100, 0x8001], size=2)
    return rng.choice(flags, size=m).astype(np.uint64)


def _page_table(rng: np.random.Generator) -> U64:
    """PTEs: frames mostly in runs, present/rw/user/accessed/dirty/NX flag mixes, holes."""
    step = np.where(rng.random(512) < 0.8, 1, rng.integers(2, 1 << 18, size=512))
    frames = (int(rng.integers(1 << 10, 1 << 22)) + np.cumsum(step)).astype(np.uint64)
    flags = rng.choice(np.array([0x63, 0x67, 0x25, 0x8000000000000063], dtype=np.uint64), size=512)
    pte = (frames << np.uint64(12)) | flags
    return np.where(rng.random(512) < 0.15, np.uint64(0), pte)


# Kinds of non-zero runs and their shares: page cache of documents, executable images, data.
_KINDS: tuple[tuple[Callable[[np.random.Generator, int], U8], float], ...] = (
    (_text, 0.30),
    (_binary, 0.35),
    (_data, 0.35),
)


class Layout(NamedTuple):
    """The idle guest's non-zero runs: first page, length and kind (index into _KINDS)."""

    starts: I64
    lens: I64
    kinds: I64


def _idle_runs(rng: np.random.Generator, pages: int) -> tuple[I64, I64]:
    """Starts and lengths of non-zero runs (1-64 pages, log-uniform) covering IDLE_NONZERO."""
    target = round(pages * IDLE_NONZERO)
    if target == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lens = np.exp(rng.uniform(0, np.log(RUN_MAX + 1), size=target // 4 + 16)).astype(np.int64)
    ends = np.cumsum(lens)
    nruns = int(np.searchsorted(ends, target)) + 1
    lens = lens[:nruns]
    lens[-1] -= ends[nruns - 1] - target  # exactly ``target`` pages in all
    # Zero gaps: a random partition of the rest, at least one page between runs.
    free = pages - target - (nruns - 1)
    share = rng.exponential(size=nruns + 1)
    gaps = np.floor(share / share.sum() * free).astype(np.int64)
    gaps[: free - int(gaps.sum())] += 1
    gaps[1:-1] += 1
    starts = np.cumsum(gaps[:-1]) + np.concatenate(([0], np.cumsum(lens)[:-1]))
    return starts, lens


def fill_idle(ram: GuestRam, rng: np.random.Generator) -> Layout:
    """OS-like content: runs of text, binary and data pages among zero pages.

    Only the non-zero pages are touched, and RAM is backed by 4 KiB pages first: a huge page
    would zero 2 MiB at the first write into it, and some run falls in almost every one (for
    2 GiB: 3-5 s of CPU instead of 0.2, and all of RAM resident instead of 15%). The price is
    paid by the first zero scan of a migration, which maps the zero page into each untouched
    4 KiB page (0.35 s more for 2 GiB). Each run is faulted in with one call, then filled:
    each kind's pool (shuffled once) is laid round-robin over that kind's pages in address
    order, so a run is one or two slice copies from the pool.
    """
    starts, lens = _idle_runs(rng, ram.pages)
    kinds = rng.choice(len(_KINDS), size=lens.size, p=[share for _, share in _KINDS])
    layout = Layout(starts, lens, kinds)
    if not lens.size:
        return layout
    ram.use_small_pages()
    for k, (gen, share) in enumerate(_KINDS):
        mine = kinds == k
        total = int(lens[mine].sum())
        if not total:
            continue
        npool = min(total, max(1, round(POOL_PAGES * share)))
        pool = gen(rng, npool)[rng.permutation(npool)]
        offsets = (np.cumsum(lens[mine]) - lens[mine]) % npool
        for start, length, offset in zip(
            starts[mine].tolist(), lens[mine].tolist(), offsets.tolist(), strict=True
        ):
            ram.populate(start, start + length)
            _copy_wrapped(ram.page_array[start : start + length], pool, offset)
    pages = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(int(lens.sum()))
    # Pool pages recur; the page number in the last word makes every page distinct.
    ram.page_array.view(np.uint64)[pages, -1] = pages.astype(np.uint64)
    ram.mark_dirty(pages)
    return layout


def _copy_wrapped(dst: U8, pool: U8, offset: int) -> None:
    """Pool pages ``offset, offset+1, ...`` (wrapping around the pool) into ``dst``."""
    head = min(dst.shape[0], pool.shape[0] - offset)
    np.copyto(dst[:head], pool[offset : offset + head])
    np.copyto(dst[head:], pool[: dst.shape[0] - head])


def fill_random(ram: GuestRam, rng: np.random.Generator) -> None:
    """Every page random bytes, in cache-sized chunks straight from the bit generator."""
    words = ram.array.view(np.uint64)
    step = 4 * MiB // 8
    for lo in range(0, words.size, step):
        hi = min(lo + step, words.size)
        words[lo:hi] = rng.bit_generator.random_raw(hi - lo)
    ram.mark_dirty(slice(0, ram.pages))
