"""Page codecs and the compress/decompress thread pools.

Every page is compressed on its own (an independent zlib stream, as QEMU's compress threads
do), so any page decompresses without the others. Pages reach the workers in chunks of
``CHUNK`` pages: one Python hand-over per chunk instead of per page is what lets two threads
scale (see research/perf-limits.md: 17 µs per hand-over dwarfs a 16 µs page). The codecs
release the GIL while they work, so N threads use N cores.

Output order: the source emits chunk results in submission order (a FIFO of futures), so
the stream is deterministic for a given input; pages within an iteration are distinct, so
the destination may apply them in any order and only drains its workers at EOS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import zstandard
from zlib_ng import zlib_ng

from engine.guest import PAGE_SIZE, GuestRam
from engine.wire import StreamError

CHUNK = 64  # pages per hand-over to a worker

Compress = Callable[[memoryview], bytes]


def _zlib_compressor(level: int) -> Compress:
    return lambda page: zlib_ng.compress(page, level)


def _zlib_decompress(data: memoryview) -> bytes:
    d = zlib_ng.decompressobj()
    try:
        out = d.decompress(data, PAGE_SIZE)
    except zlib_ng.error as exc:
        raise StreamError("decompress data failed") from exc
    # A stream that would inflate past one page (a decompression bomb) stops here.
    if len(out) != PAGE_SIZE or d.unconsumed_tail or not d.eof:
        raise StreamError("decompress data failed")
    return out


def _zstd_compressor(level: int) -> Compress:
    # zstd has no "stored" level 0 (it means "default"); levels 1-9 map one to one.
    cctx = zstandard.ZstdCompressor(level=max(1, level), write_content_size=True)
    return cctx.compress


def _zstd_decompress(data: memoryview) -> bytes:
    try:
        size = zstandard.frame_content_size(data)
        if size != PAGE_SIZE:
            raise StreamError("decompress data failed")
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=PAGE_SIZE)
    except zstandard.ZstdError as exc:
        raise StreamError("decompress data failed") from exc
    if len(out) != PAGE_SIZE:
        raise StreamError("decompress data failed")
    return out


@dataclass(frozen=True)
class Codec:
    name: str
    compressor: Callable[[int], Compress]  # level -> thread-confined compress function
    decompress: Callable[[memoryview], bytes]


CODECS: dict[str, Codec] = {
    "zlib": Codec("zlib", _zlib_compressor, _zlib_decompress),
    "zstd": Codec("zstd", _zstd_compressor, _zstd_decompress),
}


@dataclass
class CompressedChunk:
    """One worker's result: each page's compressed bytes and the CRC of what it read.

    Like QEMU, every page is sent compressed even when that does not shrink it (level 0,
    random data): the statistics then say what compression really cost.
    """

    data: list[bytes]
    crcs: list[int]


class CompressPool:
    """``threads`` workers compressing chunks of guest pages at one level."""

    def __init__(self, codec: Codec, level: int, threads: int, ram: GuestRam) -> None:
        self.threads = threads
        self._codec = codec
        self._level = level
        self._ram = ram
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="compress")

    def submit(self, indices: npt.NDArray[np.intp]) -> Future[CompressedChunk]:
        return self._pool.submit(self._work, indices.tolist())

    def _work(self, indices: list[int]) -> CompressedChunk:
        compress = self._codec.compressor(self._level)
        crc32 = zlib_ng.crc32
        out = CompressedChunk([], [])
        for index in indices:
            # One read of the page feeds both the CRC and the codec (QEMU copies it first too).
            page = self._ram.page(index).tobytes()
            out.data.append(compress(page))
            out.crcs.append(crc32(page))
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DecompressPool:
    """``threads`` workers inflating pages straight into guest RAM."""

    def __init__(self, codec: Codec, threads: int, ram: npt.NDArray[np.uint8]) -> None:
        self._codec = codec
        self._ram = ram  # pages x PAGE_SIZE view of guest RAM
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="decompress")

    def submit(
        self, indices: npt.NDArray[np.intp], blobs: Sequence[memoryview]
    ) -> Future[list[int]]:
        """Inflate ``blobs[i]`` into page ``indices[i]``; the result is the pages' CRCs."""
        return self._pool.submit(self._work, indices, blobs)

    def _work(self, indices: npt.NDArray[np.intp], blobs: Sequence[memoryview]) -> list[int]:
        decompress = self._codec.decompress
        crc32 = zlib_ng.crc32
        crcs = []
        for index, blob in zip(indices.tolist(), blobs, strict=True):
            page = decompress(blob)
            self._ram[index] = np.frombuffer(page, np.uint8)
            crcs.append(crc32(page))
        return crcs

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
