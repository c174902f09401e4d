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
text    1551   0.384   1.98x      2.63x
binary  1644   0.519   1.58x      1.94x
data    1720   0.378   2.34x      2.82x
all     4915   0.427   1.92x      2.40x
======  =====  ======  =========  ======

Seeds 1-5 on 64 MiB give zlib-1 0.421-0.437; over seeds 10-39 on 64 MiB the means are text
0.3865, binary 0.5192, data 0.3777, all 0.4299 (the per-page loops these generators replaced:
0.3865, 0.5189, 0.3777, 0.4296). The pages of a real booted guest measured here gave zlib-1 0.429,
zlib-ng-1 1.92x, zstd-1 2.33x. tests/test_fill.py holds the table to the generators.

Speed: the generators are vectorised (no Python loop per page, field or word), work in chunks
of CHUNK_PAGES, and draw from skewed distributions through :class:`_Dist`'s guide tables
instead of ``Generator.choice``'s binary search per draw; the idle fill writes only its
non-zero pages, a run at a time (see :func:`fill_idle`). Filling 2 GiB takes 0.5-0.6 s of
CPU (idle) and 0.9-1.3 s (random: the bit generator, and page faults) on the 2-vCPU box.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from engine.guest import PAGE_SIZE, GuestRam

IDLE_NONZERO = 0.15
RUN_MAX = 64
POOL_PAGES = 4096  # distinct template pages; reused round-robin, far beyond any codec window
WORDS_PER_PAGE = PAGE_SIZE // 8
CHUNK_PAGES = 64  # generators work in chunks of pages, so their temporaries stay in cache

U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
# Each generator returns ``n`` distinct template pages of one kind as an (n, PAGE_SIZE) array.


class _Dist:
    """Discrete distributions drawn by inverse CDF through guide tables of 2**16 buckets.

    ``Generator.choice(k, p=p)`` binary-searches the CDF for every draw (25-75 ns); here 16
    random bits pick a bucket, which settles the draw unless a CDF step falls inside it, and
    only those draws take 16 more bits and a search: the same distribution (to 2**-32) at
    about 4 ns per draw. With several weight vectors, ``which`` picks one per draw.
    """

    def __init__(self, *weights: npt.ArrayLike) -> None:
        steps, guides, sizes = [], [], []
        for i, w in enumerate(weights):
            cdf = np.cumsum(np.asarray(w, dtype=np.float64))
            step = np.round(cdf / cdf[-1] * 2**32).astype(np.int64)  # the last is 2**32
            # Bucket b holds [b, b+1) << 16: the draw is the count of steps <= u, which is
            # ``low`` at its start and ``high`` just before its end.
            low = np.cumsum(np.bincount(-(-step >> 16), minlength=1 << 16))[: 1 << 16]
            high = np.cumsum(np.bincount(step >> 16, minlength=1 << 16))[: 1 << 16]
            guides.append(np.where(low == high, low, -1))  # -1: a CDF step cuts the bucket
            steps.append(step + (i << 32))  # distribution i searches the range [i, i+1) << 32
            sizes.append(step.size)
        self._guide = np.concatenate(guides)
        self._steps = np.concatenate(steps)
        self._first = np.cumsum(sizes) - sizes  # the first outcome of each, in _steps

    def __call__(
        self,
        rng: np.random.Generator,
        shape: int | tuple[int, ...],
        which: npt.NDArray[np.bool_] | I64 | None = None,
    ) -> I64:
        count = int(np.prod(shape))
        bucket = _uint16(rng, count).astype(np.int64)  # the high 16 bits of a 32-bit uniform
        if which is not None:
            bucket |= which.astype(np.int64) << 16
        out: I64 = self._guide[bucket]
        cut = np.flatnonzero(out < 0)
        u = (bucket[cut] << 16) | _uint16(rng, cut.size)
        out[cut] = np.searchsorted(self._steps, u, side="right") - self._first[u >> 32]
        return out.reshape(shape)


def _uint16(rng: np.random.Generator, count: int) -> npt.NDArray[np.uint16]:
    return rng.bit_generator.random_raw((count + 3) // 4).view(np.uint16)[:count]


def _zipf(n: int, q: float = 2.7) -> npt.NDArray[np.float64]:
    return 1.0 / (np.arange(n, dtype=np.float64) + q)


def _uniform_pick(rng: np.random.Generator, values: npt.NDArray[np.integer], shape: int) -> I64:
    return values[rng.integers(0, values.size, size=shape)].astype(np.int64)


class _Table(NamedTuple):
    """Byte strings as one flat array plus the start and length of each (for _gather)."""

    flat: U8
    starts: I64
    lens: I64


def _table(items: list[bytes]) -> _Table:
    lens = np.array([len(x) for x in items], dtype=np.int64)
    return _Table(np.frombuffer(b"".join(items), dtype=np.uint8), np.cumsum(lens) - lens, lens)


def _concat(*tables: _Table) -> _Table:
    lens = np.concatenate([t.lens for t in tables])
    return _Table(np.concatenate([t.flat for t in tables]), np.cumsum(lens) - lens, lens)


def _positions(table: _Table, picks: I64, limit: int) -> I64:
    """Flat-table positions of the first ``limit`` bytes of the concatenated ``picks``."""
    n = table.lens[picks]
    ends = np.cumsum(n)
    used = int(np.searchsorted(ends, limit)) + 1  # picks needed to cover ``limit`` bytes
    assert used <= ends.size, "generator drew too few items"
    n, starts = n[:used], table.starts[picks[:used]]
    # Positions step by one inside an item and jump to the next item's start at its first byte.
    step = np.ones(int(ends[used - 1]), dtype=np.int64)
    step[0] = starts[0]
    step[ends[: used - 1]] = starts[1:] - starts[:-1] - n[:-1] + 1
    return np.cumsum(step)[:limit]


def _gather(table: _Table, picks: I64, limit: int) -> U8:
    """The first ``limit`` bytes of the concatenation of the table's items ``picks``."""
    return table.flat[_positions(table, picks, limit)]


def _chunks(n: int) -> list[int]:
    """``n`` pages as chunks small enough that a generator's temporaries stay in cache."""
    return [min(CHUNK_PAGES, n - i) for i in range(0, n, CHUNK_PAGES)]


# -- text ---------------------------------------------------------------------------------------

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
_SYLLABLES = _table(
    [
        (o + v + c).encode()
        for o in ["", *_ONSETS.split()]
        for v in ["a", "e", "i", "o", "u", "ea", "ou", "io"]
        for c in ["", "n", "r", "s", "t", "l", "nd", "ng", "st", "ck"]
    ]
)
# Separators after each word, for prose and for source-like text (config, code, markup).
_SEPS = _table(
    [b" ", b"\n", b"\n\n", b", ", b". ", b"\n    ", b"\n        ", b"\n\t", b" = ", b"(", b");\n"]
)
# Separator weights: prose (which=0), source (which=1).
_SEP_P = _Dist([80, 6, 1, 7, 6, 0, 0, 0, 0, 0, 0], [40, 8, 2, 6, 1, 10, 10, 3, 8, 6, 6])
_TOPIC = 200  # content words one page of prose draws on (source text: a quarter of them)
_TOKENS_PER_BLOCK = 700  # about one page
_WORDS = 6000  # invented content words per text pool
_SYLLABLES_PER_WORD = np.array([1, 1, 2, 2, 2, 3])
_SYLLABLE_P = _Dist(_zipf(_SYLLABLES.lens.size, 20))
_WORD_P = _Dist(_zipf(_WORDS))
_RANK_P = _Dist(_zipf(_TOPIC), _zipf(_TOPIC // 4))  # prose, source
_FUNCTION_P = _Dist(_zipf(len(_COMMON)))
_COMMON_TABLE = _table(_COMMON)


def _words(rng: np.random.Generator) -> _Table:
    """Invented content words of one to three syllables (Zipf-distributed syllables)."""
    nsyl = _uniform_pick(rng, _SYLLABLES_PER_WORD, _WORDS)
    syl = _SYLLABLE_P(rng, int(nsyl.sum()))
    lens = np.add.reduceat(_SYLLABLES.lens[syl], np.cumsum(nsyl) - nsyl)
    flat = _gather(_SYLLABLES, syl, int(lens.sum()))
    return _Table(flat, np.cumsum(lens) - lens, lens)


def _text(rng: np.random.Generator, n: int) -> U8:
    """Page cache of documents: half prose, half source-like text (indented, fewer names).

    Function words follow one Zipf law; content words come from a per-page topic drawn from a
    larger Zipf vocabulary, so words recur within a page as they do in real text.
    """
    vocab = _concat(_COMMON_TABLE, _words(rng), _SEPS)
    return np.concatenate([_documents(rng, vocab, m) for m in _chunks(n)]).reshape(n, PAGE_SIZE)


def _documents(rng: np.random.Generator, vocab: _Table, n: int) -> U8:
    """``n`` pages of text: a stream of words and separators in blocks of about a page."""
    ntok = n * PAGE_SIZE // 5 + 1024  # a word and its separator: 5.4-7.6 bytes a page
    block = np.arange(ntok) // _TOKENS_PER_BLOCK
    nblocks = int(block[-1]) + 1
    source = (rng.random(nblocks) < 0.5)[block]
    topics = len(_COMMON) + _WORD_P(rng, nblocks * _TOPIC)  # row b: block b's topic
    rank = _RANK_P(rng, ntok, source)
    function = _FUNCTION_P(rng, ntok)
    seps = _SEP_P(rng, ntok, source)
    word = np.where(rng.random(ntok) < 0.5, function, topics[block * _TOPIC + rank])
    # Phrases recur (code above all): segments of ~4 tokens repeat one seen 2-64 tokens back.
    seg = np.cumsum(rng.random(ntok) < 0.25)
    back = rng.integers(2, 65, size=seg[-1] + 1)[seg]
    copy = (rng.random(seg[-1] + 1)[seg] < np.where(source, 0.5, 0.05)) & (back <= np.arange(ntok))
    src_i = np.where(copy, np.arange(ntok) - back, np.arange(ntok))
    picks = np.empty(2 * ntok, dtype=np.int64)
    picks[0::2] = word[src_i]
    picks[1::2] = vocab.lens.size - _SEPS.lens.size + seps[src_i]
    return _gather(vocab, picks, n * PAGE_SIZE)


# -- code and executables -----------------------------------------------------------------------

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
_FIELD_KINDS = 8  # the field kinds above, 1-8 (0: a plain byte)
# Register pairs in ModRM are far from uniform (rdi/rsi/rax/rbx/rbp dominate).
_MODRM = np.array([0xC7, 0xC6, 0xDF, 0xE7, 0xEF, 0xC3, 0xD8, 0xF7, 0xC2, 0xD6, 0xFE, 0xC1, 0xE5])
_MODRM_P = _Dist(_zipf(_MODRM.size, 1.0))
_SLOT_P, _SLOT_USE_P = _Dist(_zipf(16, 2.0)), _Dist(_zipf(4, 1.0))


def _code_tables() -> tuple[_Table, U8]:
    """Templates as a byte table (fields are placeholder zero bytes) and each byte's field kind."""
    codes: list[bytes] = []
    kinds: list[bytes] = []
    for tmpl, _ in _CODE:
        toks = tmpl.split()
        kinds.append(bytes(k for t in toks for k in _FIELDS.get(t, [0])))
        codes.append(
            bytes(0 if t in _FIELDS else int(t, 16) for t in toks for _ in _FIELDS.get(t, [0]))
        )
    return _table(codes), _table(kinds).flat


_CODE_BYTES, _CODE_KINDS = _code_tables()
_CODE_P = _Dist([w for _, w in _CODE])


def _code(rng: np.random.Generator, n: int) -> U8:
    """Instruction streams: skewed opcode and register mix, stack slots, near calls and jumps."""
    return np.concatenate([_instructions(rng, m) for m in _chunks(n)]).reshape(n, PAGE_SIZE)


def _instructions(rng: np.random.Generator, n: int) -> U8:
    """``n`` pages of instructions, as one byte stream."""
    picks = _CODE_P(rng, n * PAGE_SIZE // 4 + 1024)  # templates average 4.6 bytes
    pos = _positions(_CODE_BYTES, picks, n * PAGE_SIZE)
    out, kind = _CODE_BYTES.flat[pos], _CODE_KINDS[pos]
    fields = np.flatnonzero(kind)
    counts = np.bincount(kind[fields], minlength=_FIELD_KINDS + 1)
    # at[k]: where the bytes of field kind k are, ascending (at[0], plain bytes, is empty).
    at = np.split(fields[np.argsort(kind[fields], kind="stable")], np.cumsum(counts)[:-1])

    def put(k: int, values: npt.NDArray[np.integer]) -> None:
        out[at[k]] = values & 0xFF

    # A function (~256 bytes) keeps using the same few stack slots.
    slots = 1 + _SLOT_P(rng, (n * PAGE_SIZE // 256 + 1) * 4)  # four per function
    put(1, -8 * slots[at[1] // 256 * 4 + _SLOT_USE_P(rng, counts[1])])  # [rbp-8*k]
    # rel32 within +-1 MiB: two random bytes, a nibble, then the sign byte.
    put(2, rng.integers(0, 256, size=counts[2]))
    put(3, rng.integers(0, 16, size=counts[3]) | (rng.integers(0, 2, size=counts[3]) * 0xF0))
    out[at[4]] = np.where(out[at[4] - 1] >= 0xF0, 0xFF, 0)  # always right after its kind-3 byte
    put(5, 8 * rng.integers(0, 9, size=counts[5]))
    put(6, np.minimum(rng.geometric(0.1, size=counts[6]), 255))
    put(7, _MODRM[_MODRM_P(rng, counts[7])])
    put(8, rng.integers(2, 0x40, size=counts[8]))
    return out


def _binary(rng: np.random.Generator, n: int) -> U8:
    """Executable images: .text, plus .rodata (strings) and symbol/relocation tables."""
    n_text, n_ro = n * 55 // 100, n * 25 // 100
    tables = _elf_tables(rng, n - n_text - n_ro)
    return np.concatenate([_code(rng, n_text), _text(rng, n_ro), tables.view(np.uint8)])


_ELF_ROWS = WORDS_PER_PAGE // 3 + 1  # 24-byte rows covering one page


def _elf_tables(rng: np.random.Generator, n: int) -> U64:
    """Pages of Elf64_Rela (offset, info, addend) or Elf64_Sym (name, info/shndx, value, size).

    Half the pages are R_X86_64_RELATIVE relocations of a pointer table; the others dynamic
    symbols: global functions in .text (shndx 15) with ascending name offsets.
    """
    rows = np.zeros((n, _ELF_ROWS, 3), dtype=np.uint64)
    start = (rng.integers(1 << 12, 1 << 22, size=(n, 1)) * 8).astype(np.uint64)
    rela = rng.random(n) < 0.5
    r, s = int(rela.sum()), n - int(rela.sum())
    index = np.arange(_ELF_ROWS, dtype=np.uint64)

    def ascending(m: int, low: int, high: int) -> U64:
        return np.cumsum(rng.integers(low, high, size=(m, _ELF_ROWS)), axis=1).astype(np.uint64)

    rows[rela, :, 0] = start[rela] + np.uint64(8) * index
    rows[rela, :, 1] = 8
    rows[rela, :, 2] = start[rela] // np.uint64(2) + ascending(r, 16, 4096)
    rows[~rela, :, 0] = ascending(s, 8, 40) | np.uint64((0x12 << 32) | (15 << 48))
    rows[~rela, :, 1] = start[~rela] // np.uint64(4) + ascending(s, 16, 2048)
    rows[~rela, :, 2] = rng.geometric(0.01, size=(s, _ELF_ROWS)).astype(np.uint64)
    return rows.reshape(n, -1)[:, :WORDS_PER_PAGE]


# -- data ---------------------------------------------------------------------------------------

_SLOTS = np.array([2, 3, 4, 5, 6, 8, 12, 16])  # 8-byte fields per struct
_LETTERS = np.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz_", dtype=np.uint8)
_LETTER_P = _Dist(_zipf(_LETTERS.size, 4.0))  # roughly English letter frequencies
# A column's kind (index into _FIELD_VALUES), drawn uniformly from this list: pointer x3,
# small int x2, zero, double, id, string, flags.
_FIELD_P = np.array([0, 0, 0, 1, 1, 2, 3, 4, 5, 6])
_HEAP_BASES = np.array(
    [0x0000_5555_5555_0000, 0x0000_7F00_0000_0000, 0xFFFF_8880_0000_0000], dtype=np.uint64
)
_FLAGS = np.array([0x1, 0x3, 0x11, 0x41, 0x100, 0x8001])


def _data(rng: np.random.Generator, n: int) -> U8:
    """Arrays of structs (pointers, small ints, doubles, ids, short strings) and page tables."""
    return np.concatenate([_data_pages(rng, m) for m in _chunks(n)]).view(np.uint8)


def _data_pages(rng: np.random.Generator, n: int) -> U64:
    """``n`` data pages: a tenth page tables, the rest arrays of structs.

    A struct page holds records of 2-16 fields, each field (column) of one kind with its own
    parameters (a heap region, a pair of flag values); arenas are part-used, the rest zero.
    """
    pages = np.zeros((n, WORDS_PER_PAGE), dtype=np.uint64)
    tables = rng.random(n) < 0.1
    pages[tables] = _page_tables(rng, int(tables.sum()))
    structs = np.flatnonzero(~tables)
    slots = _uniform_pick(rng, _SLOTS, structs.size)
    nrec = (WORDS_PER_PAGE // slots * rng.uniform(0.5, 1.0, size=structs.size)).astype(np.int64)
    first = np.cumsum(slots) - slots  # each page's first column
    columns = int(slots.sum())
    kind = _uniform_pick(rng, _FIELD_P, columns)
    # Word w of a page is field w % slots of record w // slots, a word of that column.
    cell = np.flatnonzero(np.arange(WORDS_PER_PAGE) < (nrec * slots)[:, None])
    page, word = cell // WORDS_PER_PAGE, cell % WORDS_PER_PAGE
    column = first[page] + word % slots[page]
    field_kind = kind[column]
    values = np.zeros(column.size, dtype=np.uint64)
    for k, field in enumerate(_FIELD_VALUES):
        sel = np.flatnonzero(field_kind == k)
        values[sel] = field(rng, column[sel], columns)
    pages.reshape(-1)[structs[page] * WORDS_PER_PAGE + word] = values
    return pages


def _pointers(rng: np.random.Generator, column: I64, columns: int) -> U64:
    """Pointers into one heap region per column, 16-aligned, some NULL."""
    region = _HEAP_BASES[rng.integers(0, 3, size=columns)]
    region += rng.integers(0, 1 << 16, size=columns).astype(np.uint64) << np.uint64(24)
    ptr = region[column] + (rng.integers(0, 1 << 20, size=column.size).astype(np.uint64) << 4)
    return np.where(rng.random(column.size) < 0.2, np.uint64(0), ptr)


def _counts(rng: np.random.Generator, column: I64, columns: int) -> U64:
    """Counters, lengths, enums (two 32-bit halves)."""
    m = column.size
    lo = np.minimum(rng.geometric(0.05, size=m), 1 << 31).astype(np.uint64)
    hi = np.where(rng.random(m) < 0.5, 0, rng.integers(0, 8, size=m)).astype(np.uint64)
    return lo | (hi << np.uint64(32))


def _padding(rng: np.random.Generator, column: I64, columns: int) -> U64:
    return np.zeros(column.size, dtype=np.uint64)


def _doubles(rng: np.random.Generator, column: I64, columns: int) -> U64:
    """Whole numbers or measurements."""
    m = column.size
    vals = np.where(rng.random(m) < 0.5, rng.integers(0, 1000, size=m), rng.random(m) * 100)
    return vals.astype(np.float64).view(np.uint64)


def _ids(rng: np.random.Generator, column: I64, columns: int) -> U64:
    """Hashes, ids, random keys."""
    return rng.integers(0, 1 << 63, size=column.size, dtype=np.int64).astype(np.uint64)


def _names(rng: np.random.Generator, column: I64, columns: int) -> U64:
    """Short NUL-padded names."""
    m = column.size
    chars = _LETTERS[_LETTER_P(rng, (m, 8))]
    chars[np.arange(8) >= rng.integers(2, 9, size=(m, 1))] = 0
    return chars.view(np.uint64).reshape(m)


def _flags(rng: np.random.Generator, column: I64, columns: int) -> U64:
    """One of two flag values per column."""
    pair = _FLAGS[rng.integers(0, _FLAGS.size, size=(columns, 2))]
    return pair.reshape(-1)[column * 2 + rng.integers(0, 2, size=column.size)].astype(np.uint64)


# By _FIELD_P's kind number: (random generator, each word's column, number of columns).
_FIELD_VALUES: tuple[Callable[[np.random.Generator, I64, int], U64], ...] = (
    _pointers,
    _counts,
    _padding,
    _doubles,
    _ids,
    _names,
    _flags,
)


def _page_tables(rng: np.random.Generator, n: int) -> U64:
    """PTEs: frames mostly in runs, present/rw/user/accessed/dirty/NX flag mixes, holes."""
    shape = (n, WORDS_PER_PAGE)
    step = np.where(rng.random(shape) < 0.8, 1, rng.integers(2, 1 << 18, size=shape))
    base = rng.integers(1 << 10, 1 << 22, size=(n, 1))
    frames = (base + np.cumsum(step, axis=1)).astype(np.uint64)
    flags = np.array([0x63, 0x67, 0x25, 0x8000000000000063], dtype=np.uint64)
    pte = (frames << np.uint64(12)) | flags[rng.integers(0, 4, size=shape)]
    return np.where(rng.random(shape) < 0.15, np.uint64(0), pte)


# -- placement ----------------------------------------------------------------------------------

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
    """Every page random bytes, straight from the bit generator in chunks that stay in cache
    (a bigger temporary would be fresh memory, faulted in again for every chunk)."""
    words = ram.array.view(np.uint64)
    step = 256 * 1024 // 8
    for lo in range(0, words.size, step):
        hi = min(lo + step, words.size)
        words[lo:hi] = rng.bit_generator.random_raw(hi - lo)
    ram.mark_dirty(slice(0, ram.pages))
