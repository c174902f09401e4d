"""Page codecs and the compress/decompress thread pools.

Every page is compressed on its own so any page decompresses without the others, as with
QEMU's compress threads. For zlib that is one raw-deflate segment per page, compressed from a
reset stream and ended by a sync flush (the bytes a full flush gives): it never refers to
another page. Each worker keeps one deflate/inflate stream for its whole life (QEMU calls
deflateReset per page for the same reason: a fresh zlib-ng stream per 4 KiB page costs more
than the page). engine/_pagecodec.c runs a whole chunk through zlib-ng per call.

Pages reach the workers in chunks of ``CHUNK``: one Python hand-over per chunk instead of per
page (measured here: a thread hand-over costs ~17 µs, more than compressing a 16 µs page),
and the codecs
release the GIL once per chunk, so N threads use N cores.

Output order: the source emits chunk results in submission order (a FIFO of futures), so
the stream is deterministic for a given input; pages within an iteration are distinct, so
the destination may apply them in any order and only drains its workers at EOS.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import lz4.block._block  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import zstandard
from zlib_ng import zlib_ng

from engine import _pagecodec
from engine.guest import PAGE_SHIFT, PAGE_SIZE, GuestRam
from engine.wire import StreamError

_pagecodec.bind_lz4(lz4.block._block.__file__)  # the LZ4 inside python-lz4

# Pages per hand-over to a worker. With the GIL taken once per chunk, what is left per chunk is
# Python on the migration thread and the destination's reader: 256 ran the QEMU comparison
# 10% faster end to end than 64; 512 was no faster and lengthens the tail of a stop-and-copy.
CHUNK = 256
T = TypeVar("T")

# Guest RAM and a chunk's page numbers -> the pages' segments back to back, each segment's
# size, and the CRC-32 of what was read, per page.
Compress = Callable[[memoryview, list[int]], tuple[bytes, list[int], list[int]]]
# Guest RAM, page numbers, their segments back to back and their sizes -> the pages' CRCs,
# once each is inflated in place.
Decompress = Callable[[memoryview, list[int], memoryview, list[int]], list[int]]


def _zlib_compressor(level: int) -> Compress:
    # One C call per chunk: per page it resets the raw-deflate stream, compresses, sync-flushes
    # and takes the CRC, with the GIL released for the whole chunk (a call per page was a GIL
    # hand-over per page, which kept two threads from scaling).
    return _pagecodec.Deflater(level).compress


def _into_ram(decompress_into: Decompress) -> Decompress:
    """A C decompress_into: straight into guest RAM, each segment decoding to exactly one page
    and never past it (a decompression bomb stops at 4 KiB); a bad one is the stream's fault."""

    def decompress(
        ram: memoryview, pages: list[int], payload: memoryview, sizes: list[int]
    ) -> list[int]:
        try:
            return decompress_into(ram, pages, payload, sizes)
        except ValueError as exc:
            raise StreamError("decompress data failed") from exc

    return decompress


def _zlib_decompressor() -> Decompress:
    # A segment must also end with a sync flush and leave nothing over.
    return _into_ram(_pagecodec.Inflater().decompress_into)


def _lz4_compressor(level: int) -> Compress:
    # One C call per chunk, as zlib's: an LZ4 block per page (fast mode at level 0-1, HC above).
    return lambda ram, pages: _pagecodec.lz4_compress(ram, pages, level)


def _lz4_decompressor() -> Decompress:
    return _into_ram(_pagecodec.lz4_decompress_into)


def _zstd_compressor(level: int) -> Compress:
    # zstd has no "stored" level 0 (it means "default"); levels 1-9 map one to one.
    cctx = zstandard.ZstdCompressor(level=max(1, level), write_content_size=True)
    crc32 = zlib_ng.crc32

    def compress(ram: memoryview, pages: list[int]) -> tuple[bytes, list[int], list[int]]:
        views = [ram[i << PAGE_SHIFT : (i + 1) << PAGE_SHIFT] for i in pages]
        # One C call (GIL released) for the whole chunk, each page its own frame.
        frames = cctx.multi_compress_to_buffer(
            list[bytes | bytearray | memoryview](views), threads=0
        )
        segments = [frames[i].tobytes() for i in range(len(frames))]
        return b"".join(segments), [len(f) for f in segments], [crc32(v) for v in views]

    return compress


def _zstd_decompressor() -> Decompress:
    dctx = zstandard.ZstdDecompressor()
    crc32 = zlib_ng.crc32

    def page(blob: memoryview) -> bytes:
        try:
            if zstandard.frame_content_size(blob) != PAGE_SIZE:
                raise StreamError("decompress data failed")
            out = dctx.decompress(blob, max_output_size=PAGE_SIZE)
        except zstandard.ZstdError as exc:
            raise StreamError("decompress data failed") from exc
        if len(out) != PAGE_SIZE:
            raise StreamError("decompress data failed")
        return out

    def decompress(
        ram: memoryview, pages: list[int], payload: memoryview, sizes: list[int]
    ) -> list[int]:
        crcs, at = [], 0
        for index, size in zip(pages, sizes, strict=True):
            out = page(payload[at : at + size])
            at += size
            ram[index << PAGE_SHIFT : (index + 1) << PAGE_SHIFT] = out
            crcs.append(crc32(out))
        return crcs

    return decompress


@dataclass(frozen=True)
class Codec:
    name: str
    compressor: Callable[[int], Compress]  # level -> a stream for one thread
    decompressor: Callable[[], Decompress]  # a stream for one thread


CODECS: dict[str, Codec] = {
    "zlib": Codec("zlib", _zlib_compressor, _zlib_decompressor),
    "zstd": Codec("zstd", _zstd_compressor, _zstd_decompressor),
    "lz4": Codec("lz4", _lz4_compressor, _lz4_decompressor),
}


class _PerThread(threading.local):
    def __init__(self) -> None:
        self.streams: dict[int, Callable[..., Any]] = {}  # per level (one for decompression)


class _Workers:
    """``threads`` worker threads taking jobs from one queue, at most one per core at a time.

    QEMU starts as many threads as configured; here the extra ones wait for a core instead of
    fighting over it (12 threads on 2 cores then run as fast as 2, not slower).
    """

    def __init__(self, threads: int, name: str) -> None:
        self.active = min(threads, os.cpu_count() or 1)  # threads that run at once
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._cores = threading.BoundedSemaphore(self.active)
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _serve(self) -> None:
        # A thread holds its core slot for as long as there is work, so jobs never bounce
        # between threads; the others sleep on the slot until the pool closes.
        with self._cores:
            while (job := self._jobs.get()) is not None:
                work, future = job
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    result = work()
                except BaseException as exc:  # handed to whoever waits on the future
                    future.set_exception(exc)
                else:
                    future.set_result(result)

    def submit(self, work: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((work, future))
        return future

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()


@dataclass
class CompressedChunk:
    """One worker's result: the pages' segments back to back, their sizes, and the CRC of
    what it read of each page.

    Like QEMU, every page is sent compressed even when that does not shrink it (level 0,
    random data): the statistics then say what compression really cost.
    """

    data: bytes
    sizes: list[int]
    crcs: list[int]
    seconds: float  # worker time spent, for the adaptive policy


class CompressPool(_Workers):
    """``threads`` workers compressing chunks of guest pages at one level."""

    def __init__(self, codec: Codec, level: int, threads: int, ram: GuestRam) -> None:
        super().__init__(threads, "compress")
        self._codec = codec
        self._level = level
        self._ram = ram
        self._local = _PerThread()

    def compress(
        self, indices: npt.NDArray[np.intp], level: int | None = None
    ) -> Future[CompressedChunk]:
        """Compress these pages, at the pool's level unless the adaptive policy says otherwise."""
        pages, chosen = indices.tolist(), self._level if level is None else level
        return self.submit(lambda: self._work(pages, chosen))

    def _work(self, indices: list[int], level: int) -> CompressedChunk:
        t0 = time.perf_counter()
        streams = self._local.streams
        compress = streams.get(level) or streams.setdefault(level, self._codec.compressor(level))
        # Compress straight from guest RAM. A page the guest changes meanwhile was re-dirtied
        # after its bit was cleared, so it is sent again.
        data, sizes, crcs = compress(self._ram.buf, indices)
        return CompressedChunk(data, sizes, crcs, time.perf_counter() - t0)


class DecompressPool(_Workers):
    """``threads`` workers inflating pages straight into guest RAM."""

    def __init__(self, codec: Codec, threads: int, ram: GuestRam) -> None:
        super().__init__(threads, "decompress")
        self._codec = codec
        self._ram = ram
        self._local = _PerThread()

    def decompress(
        self, indices: npt.NDArray[np.intp], payload: memoryview, sizes: list[int]
    ) -> Future[list[int]]:
        """Inflate the segments in ``payload`` (``sizes`` bytes each) into pages ``indices``;
        the result is the pages' CRCs."""
        pages = indices.tolist()
        return self.submit(lambda: self._work(pages, payload, sizes))

    def _work(self, indices: list[int], payload: memoryview, sizes: list[int]) -> list[int]:
        streams = self._local.streams
        decompress = streams.get(0) or streams.setdefault(0, self._codec.decompressor())
        return decompress(self._ram.buf, indices, payload, sizes)
