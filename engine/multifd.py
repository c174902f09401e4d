"""multifd: non-zero pages travel over N extra connections, one thread each, as in QEMU 7.2.

The main stream keeps its records (configuration, zero pages, EOS, DONE); every channel
carries PACKETs of up to 128 pages (with QEMU 11.1's ``zero-page-detection multifd`` the
channel finds the zero ones among them itself and sends their indices as a ZEROS record),
optionally compressed as one unit per packet (zlib: a
deflate stream per channel with a sync flush per packet; zstd: a stream per channel, flushed
after each packet, its window bounded by ``zstd_window_log``; our x-lz4: an LZ4 block; our
x-auto: zstd while the channel's wire is full, a FAST_PACKET in LZ4 while it waits). Before
each EOS the source puts a SYNC on every channel; the destination holds each channel at its
SYNC until all have arrived and the main stream reached that EOS (QEMU's sem_sync), so a page
re-sent in the next iteration on one channel can never be overtaken by its stale copy on
another.

Channel handshake: b"QHMF", u32 version, u32 channel id, 16-byte session id (from CONFIG).
Channel records: u8 type, u32 length, body; PACKET (and FAST_PACKET) body: u32 n, n x u32
page, payload; ZEROS body: u32 n, n x u32 page.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import queue
import socket
import struct
import sys
import termios
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Literal

import lz4.block._block  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import zstandard
from zlib_ng import zlib_ng

from engine import _pagecodec, wire
from engine.errors import MigrationError
from engine.guest import PAGE_SIZE, GuestRam
from engine.transport import send_buffers, shutdown
from engine.zerocopy import NoLockedMemory, ZeroCopySocket, ZeroCopyUnavailable

log = logging.getLogger(__name__)

PACKET_PAGES = 128  # QEMU's MULTIFD_PACKET_SIZE / page size
HELLO = struct.Struct(">4sII16s")
HELLO_MAGIC = b"QHMF"
PACKET = 0x30
SYNC = 0x31
ZEROS = 0x32
FAST_PACKET = 0x33  # x-auto: a PACKET in the method's fast codec (LZ4)
ZERO_COPY_UNAVAILABLE = "Zero copy send feature not detected in host kernel"  # QEMU's text
# A broken socket ends a channel thread at once; this only bounds a bug's cost at the end.
JOIN_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Hello:
    channel: int
    session: bytes

    def encode(self) -> bytes:
        return HELLO.pack(HELLO_MAGIC, wire.VERSION, self.channel, self.session)

    @classmethod
    def read(cls, sock: socket.socket) -> Hello:
        data = wire.read_exact(sock, HELLO.size)
        if data is None:
            raise wire.StreamError("multifd channel closed before its handshake")
        magic, version, channel, session = HELLO.unpack(data)
        if magic != HELLO_MAGIC or version != wire.VERSION:
            raise wire.StreamError("multifd channel handshake is not qemu-hmp's")
        return cls(channel, session)


Pages = npt.NDArray[np.intp]
Crcs = npt.NDArray[np.uint32]
Pack = Callable[[bytes], bytes]  # one channel's packet pages → payload
Unpack = Callable[[bytes | bytearray, int], bytes | bytearray]  # payload → exactly size bytes
PackPages = Callable[[GuestRam, Pages], tuple[bytes, Crcs]]  # the pages' payload and CRCs
UnpackPages = Callable[[GuestRam, Pages, bytearray], Crcs]  # payload into the pages → CRCs

# python-zstandard's cffi backend exports the ZSTD_* API: the C streams bind that zstd.
_zstd_backend = importlib.util.find_spec("zstandard._cffi")
if _zstd_backend is None or _zstd_backend.origin is None:
    raise ImportError("python-zstandard has no cffi backend, whose zstd multifd streams bind")
_pagecodec.bind_zstd(_zstd_backend.origin)
_pagecodec.bind_lz4(lz4.block._block.__file__)  # x-lz4's packets: the LZ4 inside python-lz4
# What zstd windows may hold over all of one migration's channels, on each side: a stream's
# decoder keeps its window, and a source could otherwise ask each channel for 2 GiB.
ZSTD_WINDOW_BUDGET = 64 << 20
ZSTD_MAX_WINDOW_LOG = 23  # 8 MiB: level 19's; beyond, ratio gains are small for RAM


def zstd_window_log(channels: int) -> int:
    """The largest window each of ``channels`` streams may use, both sides' rule."""
    return max(
        10, min(ZSTD_MAX_WINDOW_LOG, (ZSTD_WINDOW_BUDGET // max(1, channels)).bit_length() - 1)
    )


def _joined(pack: Pack) -> PackPages:
    """A codec over the packet's bytes: the pages copied out of RAM once, in order."""
    return lambda ram, pages: (pack(b"".join(ram.views(pages))), ram.crc_pages(pages))


def _copied(unpack: Unpack) -> UnpackPages:
    def into(ram: GuestRam, pages: Pages, payload: bytearray) -> Crcs:
        data = memoryview(unpack(payload, len(pages) * PAGE_SIZE))
        at = 0
        for view in ram.views(pages):
            view[:] = data[at : at + len(view)]
            at += len(view)
        return ram.crc_pages(pages)

    return into


def _zlib_packer(level: int, _channels: int) -> PackPages:
    stream = zlib_ng.compressobj(level, zlib_ng.DEFLATED, -15)
    return _joined(lambda data: stream.compress(data) + stream.flush(zlib_ng.Z_SYNC_FLUSH))


def _zlib_unpacker(_channels: int) -> UnpackPages:
    stream = zlib_ng.decompressobj(-15)

    def inflate(data: bytes | bytearray, size: int) -> bytes:
        try:
            out = stream.decompress(data, size)  # never inflates past the packet's pages
        except zlib_ng.error as exc:  # type: ignore[misc]
            raise wire.StreamError("multifd: decompress data failed") from exc
        if len(out) != size or stream.unconsumed_tail:
            raise wire.StreamError("multifd: decompress data failed")
        return out

    return _copied(inflate)


def _zstd_packer(level: int, channels: int) -> PackPages:
    level = max(1, level)
    window = zstandard.ZstdCompressionParameters.from_level(level).window_log
    stream = _pagecodec.ZstdPacker(level, min(window, zstd_window_log(channels)))

    def pack(ram: GuestRam, pages: Pages) -> tuple[bytes, Crcs]:
        pages = np.ascontiguousarray(pages, dtype=np.intp)
        crcs = np.empty(len(pages), np.uint32)
        return stream.pack(ram.buf, pages.data, crcs.data), crcs

    return pack


def _zstd_unpacker(channels: int) -> UnpackPages:
    stream = _pagecodec.ZstdUnpacker(zstd_window_log(channels))

    def unpack(ram: GuestRam, pages: Pages, payload: bytearray) -> Crcs:
        pages = np.ascontiguousarray(pages, dtype=np.intp)
        crcs = np.empty(len(pages), np.uint32)
        try:  # decodes into those pages only, exactly filling them, or fails
            stream.unpack_into(ram.buf, pages.data, payload, crcs.data)
        except ValueError as exc:
            raise wire.StreamError("multifd: decompress data failed") from exc
        return crcs

    return unpack


def _lz4_packer(level: int, _channels: int) -> PackPages:
    # One LZ4 block per packet (an extension), in C: the pages gathered into the channel's
    # scratch (their CRCs taken from that copy), fast mode at level 0-1, HC above.
    scratch = bytearray(PACKET_PAGES * PAGE_SIZE)

    def pack(ram: GuestRam, pages: Pages) -> tuple[bytes, Crcs]:
        pages = np.ascontiguousarray(pages, dtype=np.intp)
        crcs = np.empty(len(pages), np.uint32)
        return _pagecodec.lz4_pack(ram.buf, pages.data, crcs.data, scratch, level), crcs

    return pack


def _lz4_unpacker(_channels: int) -> UnpackPages:
    scratch = bytearray(PACKET_PAGES * PAGE_SIZE)

    def unpack(ram: GuestRam, pages: Pages, payload: bytearray) -> Crcs:
        pages = np.ascontiguousarray(pages, dtype=np.intp)
        crcs = np.empty(len(pages), np.uint32)
        try:  # the block must decode to exactly the pages, or no page is written
            _pagecodec.lz4_unpack_into(ram.buf, pages.data, payload, crcs.data, scratch)
        except ValueError as exc:
            raise wire.StreamError("multifd: decompress data failed") from exc
        return crcs

    return unpack


@dataclass(frozen=True)
class PacketCodec:
    """None and None: the pages travel as they are, straight from and into guest RAM."""

    packer: Callable[[int, int], PackPages] | None  # (level, channels) → one channel's packer
    unpacker: Callable[[int], UnpackPages] | None  # channels → one channel's unpacker
    level: str = ""  # the parameter of its level; none: LZ4's fast mode (level 1)
    # x-auto: the codec of the packets (FAST_PACKETs) a channel sends while its wire waits
    fast: PacketCodec | None = None


LZ4 = PacketCodec(_lz4_packer, _lz4_unpacker)
ZSTD = PacketCodec(_zstd_packer, _zstd_unpacker, "multifd-zstd-level")
# multifd-compression's values: QEMU 7.2's, in its order, then ours (QEMU has neither).
METHODS: dict[str, PacketCodec] = {
    "none": PacketCodec(None, None),
    "zlib": PacketCodec(_zlib_packer, _zlib_unpacker, "multifd-zlib-level"),
    "zstd": ZSTD,
    "x-lz4": LZ4,
    "x-auto": replace(ZSTD, fast=LZ4),
}
# x-auto's rule, per channel and packet: zstd (fewer bytes, more CPU) while the channel's
# socket holds more than this many bytes the wire has not taken yet (it stays busy while zstd
# packs the next packet), LZ4 when less (the wire would soon wait for zstd). A loopback takes
# everything at once: LZ4, the cheaper at both ends, unless the destination falls behind.
AUTO_BACKLOG = 1 << 20


def unsent(sock: socket.socket) -> int:
    """The bytes in the socket's send queue (written, not yet acknowledged by the peer)."""
    out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int.from_bytes(out, sys.byteorder, signed=True)


def _end_channels(
    channels: Sequence[_SendChannel | _RecvChannel], wake: Callable[[], None]
) -> None:
    """Break the channels' connections, ``wake`` the idle threads, join every thread, close.

    The sockets are closed only once their threads have ended, so no thread is left in a
    call on a descriptor that another socket may have reused.
    """
    for channel in channels:
        shutdown(channel.sock)
    wake()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for channel in channels:
        channel.join(max(0.0, deadline - time.monotonic()))
        if channel.is_alive():
            log.error("multifd: thread %s did not end", channel.name)
        channel.sock.close()


# -- source ----------------------------------------------------------------------------------


class _End(Enum):
    END = "end"  # the job that ends a channel thread: the migration is over


END = _End.END
# (pages, the CRCs the duplicate scan took or None, its generation), None for a SYNC, or END
Job = tuple[npt.NDArray[np.intp], Crcs | None, int] | None | Literal[_End.END]
Confirm = Callable[[Pages, Crcs, Crcs, int], None]  # pages, scanned and sent CRCs, generation


def _page_list(pages: npt.NDArray[np.intp]) -> bytes:
    return struct.pack(">I", len(pages)) + pages.astype(wire.U32).tobytes()


class _SendChannel(threading.Thread):
    def __init__(self, sender: MultifdSender, index: int, sock: socket.socket) -> None:
        super().__init__(name=f"multifdsend_{index}", daemon=True)
        self.sock = sock
        self.jobs: queue.Queue[Job] = queue.Queue(maxsize=2)
        self._sender = sender

    def run(self) -> None:
        s = self._sender
        codec = METHODS[s.method]
        pack = codec.packer(s.level, s.count) if codec.packer else None
        fast = codec.fast.packer(1, s.count) if codec.fast and codec.fast.packer else None
        fast_packets = packets = 0
        zero_copy = s.zero_copy.get(self.sock.fileno())
        try:
            while (job := self.jobs.get()) is not END:
                if job is None:
                    s.sent(send_buffers(self.sock, [wire.RECORD.pack(SYNC, 0)]), 0, 0)
                    if zero_copy and zero_copy.flush():  # QEMU flushes at each sync too
                        s.fallback()
                    s.synced()
                    continue
                pages, scanned, generation = job
                if s.detect_zero:
                    zero = s.ram.zero_mask(pages)
                    if zero.any():
                        s.digest.set_zero(pages[zero])
                        head = _page_list(pages[zero])
                        zeros = [wire.RECORD.pack(ZEROS, len(head)), head]
                        s.sent(send_buffers(self.sock, zeros), 0, int(zero.sum()))
                    pages = pages[~zero]
                    scanned = None if scanned is None else scanned[~zero]
                    if not len(pages):
                        continue
                payload: list[bytes | memoryview]
                kind, pack_now = PACKET, pack
                if fast is not None and unsent(self.sock) < AUTO_BACKLOG:
                    kind, pack_now = FAST_PACKET, fast
                if pack_now is not None:
                    packed, crcs = pack_now(s.ram, pages)
                    payload = [packed]
                else:  # raw: sent uncopied
                    payload, crcs = list(s.ram.views(pages)), s.ram.crc_pages(pages)
                s.digest.crc[pages] = crcs
                head = _page_list(pages)
                size = len(head) + sum(len(p) for p in payload)
                record: list[bytes | memoryview] = [wire.RECORD.pack(kind, size), head, *payload]
                if zero_copy:  # raw (QEMU refuses compression with it): no copy in the kernel
                    s.sent(zero_copy.send(record), len(pages), 0)
                else:
                    s.sent(send_buffers(self.sock, record), len(pages), 0)
                packets += 1
                fast_packets += kind == FAST_PACKET
                if scanned is not None and s.confirm:
                    s.confirm(pages, scanned, crcs, generation)
        except OSError as exc:
            s.failed(exc)
        if zero_copy:
            log.info("%s: %s", self.name, zero_copy.report())
        if fast is not None:
            log.info("%s: x-auto sent %d of %d packets fast", self.name, fast_packets, packets)


class MultifdSender:
    """The source's channels: packets of non-zero pages out, one SYNC per channel per EOS."""

    def __init__(
        self,
        ram: GuestRam,
        digest: wire.PageDigest,
        socks: list[socket.socket],
        method: str,
        level: int,
        account: Callable[[int, int, int], None],
        *,
        detect_zero: bool = False,
        zero_copy: bool = False,
        fallback: Callable[[], None] = lambda: None,
        confirm: Confirm | None = None,
    ) -> None:
        """``zero_copy``: send packets with MSG_ZEROCOPY (zero-copy-send; only without
        compression); ``fallback`` counts a sync at which the kernel copied some anyway;
        ``confirm`` hears, for pages queued with CRCs, the CRCs they were sent with."""
        self.ram, self.digest, self.method, self.level = ram, digest, method, level
        self.detect_zero = detect_zero  # the channels find zero pages (11.1's default)
        self._account = account  # (bytes sent, normal pages, zero pages) → the statistics
        self.fallback = fallback
        self.confirm = confirm
        # Each channel's zero-copy state, by descriptor (only its thread uses it).
        self.zero_copy: dict[int, ZeroCopySocket] = {}
        if zero_copy:
            try:
                self.zero_copy = {s.fileno(): ZeroCopySocket(s) for s in socks}
            except ZeroCopyUnavailable as exc:
                for sock in socks:
                    sock.close()
                raise MigrationError(ZERO_COPY_UNAVAILABLE) from exc
        self._cond = threading.Condition()
        self._pending_syncs = 0
        self._error: OSError | None = None
        self._packet: list[npt.NDArray[np.intp]] = []
        self._packet_crcs: list[Crcs] = []  # as many as self._packet when the caller has them
        self._packet_len = 0
        self._packet_gen = 0
        self._next = 0
        self.count = len(socks)  # channels: each zstd stream's window depends on it
        self._channels = [_SendChannel(self, i, s) for i, s in enumerate(socks)]
        for channel in self._channels:
            channel.start()

    def queue(
        self, pages: npt.NDArray[np.intp], crcs: Crcs | None = None, generation: int = 0
    ) -> None:
        """Add pages (non-zero ones unless the channels detect zeros), with the CRCs of the
        duplicate scan and its generation (always or never in one migration; a SYNC ends
        each generation's packets); full packets go to the next channel (blocking when it is
        busy)."""
        self._packet_gen = generation
        while len(pages):
            room = PACKET_PAGES - self._packet_len
            self._packet.append(pages[:room])
            if crcs is not None:
                self._packet_crcs.append(crcs[:room])
                crcs = crcs[room:]
            self._packet_len += len(pages[:room])
            pages = pages[room:]
            if self._packet_len == PACKET_PAGES:
                self._dispatch()

    def sync(self, wait: bool = True) -> None:
        """Flush the partial packet and put a SYNC on every channel; ``wait``: until every
        channel has sent every SYNC (then each packet's CRCs are in the digest).

        Ordering needs no wait here: the destination holds each channel at its SYNC until all
        have arrived and the main stream reached the EOS that follows, so the migration thread
        goes on scanning while the channels drain (waiting at every EOS left them idle).
        """
        if self._packet_len:
            self._dispatch()
        with self._cond:
            self._pending_syncs += len(self._channels)
        for channel in self._channels:
            self._put(channel, None)
        if wait:
            self.wait_sent()
        self._raise()

    def wait_sent(self) -> None:
        """Wait until every channel has sent every SYNC queued (and all before them)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._pending_syncs or self._error is not None)
        self._raise()

    def hang_up(self) -> None:
        """Break the channels now (from any thread): a channel in a send fails and ends."""
        for channel in self._channels:
            shutdown(channel.sock)

    def close(self) -> None:
        """End every channel thread (the migration thread's last word on the channels)."""
        _end_channels(self._channels, self._wake_idle)

    def _wake_idle(self) -> None:
        for channel in self._channels:
            try:
                channel.jobs.put_nowait(END)
            except queue.Full:
                pass  # busy: its next send fails on the broken socket and ends the thread

    # called from channel threads
    def sent(self, nbytes: int, pages: int, zero: int) -> None:
        self._account(nbytes, pages, zero)

    def synced(self) -> None:
        with self._cond:
            self._pending_syncs -= 1
            self._cond.notify_all()

    def failed(self, exc: OSError) -> None:
        with self._cond:
            self._error = exc
            self._cond.notify_all()

    def _dispatch(self) -> None:
        pages = np.concatenate(self._packet)
        crcs = np.concatenate(self._packet_crcs) if self._packet_crcs else None
        self._packet, self._packet_crcs, self._packet_len = [], [], 0
        channel = self._channels[self._next]
        self._next = (self._next + 1) % len(self._channels)
        self._put(channel, (pages, crcs, self._packet_gen))

    def _put(self, channel: _SendChannel, job: Job) -> None:
        while True:
            self._raise()
            try:
                channel.jobs.put(job, timeout=0.1)
                return
            except queue.Full:
                continue

    def _raise(self) -> None:
        if isinstance(self._error, NoLockedMemory):  # QEMU's whole text, as the failure's
            raise MigrationError(str(self._error)) from self._error
        if self._error is not None:
            raise self._error


# -- destination -----------------------------------------------------------------------------


class _RecvChannel(threading.Thread):
    def __init__(self, receiver: MultifdReceiver, sock: socket.socket) -> None:
        super().__init__(name="multifdrecv", daemon=True)
        self.sock = sock
        self._receiver = receiver

    def run(self) -> None:
        r = self._receiver
        codec = METHODS[r.method]
        unpack = codec.unpacker(r.count) if codec.unpacker else None
        fast = codec.fast.unpacker(r.count) if codec.fast and codec.fast.unpacker else None
        generation = 0
        try:
            while (head := wire.read_record_head(self.sock)) is not None:
                kind, length = head
                if kind == SYNC and not length:
                    generation += 1
                    r.arrive(generation)
                elif kind == PACKET:
                    r.apply(self.sock, length, unpack)
                elif kind == FAST_PACKET and fast is not None:
                    r.apply(self.sock, length, fast)
                elif kind == ZEROS:
                    r.apply_zeros(self.sock, length)
                else:
                    raise wire.StreamError(f"multifd: unknown record type 0x{kind:02x}")
            # A channel ends only after the stream is verified; earlier, the main stream may be
            # waiting at the barrier for this channel's SYNC, which now never comes.
            raise wire.StreamError("multifd: a channel closed before the migration completed")
        except (wire.StreamError, OSError) as exc:
            r.fail(exc)


class MultifdReceiver:
    """The destination's channels; :meth:`wait_sync` is the main stream's side of the barrier."""

    def __init__(
        self,
        ram: GuestRam,
        digest: wire.PageDigest,
        written: npt.NDArray[np.bool_],
        method: str,
    ) -> None:
        self.ram, self.digest, self.written, self.method = ram, digest, written, method
        self._cond = threading.Condition()
        self._arrived: list[int] = []
        self._released = 0
        self._error: Exception | None = None
        self._channels: list[_RecvChannel] = []
        self.count = 0  # channels, once started

    def start(self, socks: list[socket.socket]) -> None:
        self._arrived = [0] * len(socks)
        self.count = len(socks)
        self._channels = [_RecvChannel(self, s) for s in socks]
        for channel in self._channels:
            channel.start()

    def _read_pages(self, sock: socket.socket, length: int) -> npt.NDArray[np.intp]:
        """A packet's page list, each index checked against RAM before RAM is touched."""
        head = wire.read_body(sock, 4, 4)
        (n,) = struct.unpack(">I", head)
        if not 0 < n <= PACKET_PAGES or length < 4 + 4 * n:
            raise wire.StreamError(f"multifd: packet of {n} pages")
        pages = np.frombuffer(wire.read_body(sock, 4 * n, 4 * n), wire.U32).astype(np.intp)
        if int(pages.max()) >= self.ram.pages:
            raise wire.StreamError(f"page {int(pages.max())} is outside guest RAM")
        return pages

    def apply_zeros(self, sock: socket.socket, length: int) -> None:
        """Zero pages a channel found: cleared only where the page may hold data."""
        pages = self._read_pages(sock, length)
        if length != 4 + 4 * len(pages):
            raise wire.StreamError("multifd: zero-page record of the wrong length")
        touched = pages[self.written[pages]]
        if len(touched):
            self.ram.page_array[touched] = 0
        self.digest.set_zero(pages)

    def apply(self, sock: socket.socket, length: int, unpack: UnpackPages | None) -> None:
        """One PACKET into guest RAM: raw pages straight from the socket, compressed ones
        decoded into them (zstd) or inflated and copied a run of pages at a time."""
        pages = self._read_pages(sock, length)
        n = len(pages)
        size = length - 4 - 4 * n
        if size > n * PAGE_SIZE + n * PAGE_SIZE // 8 + 64:
            raise wire.StreamError(f"multifd: packet payload of {size} bytes is too long")
        if unpack is None and size != n * PAGE_SIZE:
            raise wire.StreamError("multifd: packet length does not match its pages")
        payload = wire.read_body(sock, size, size) if unpack else None
        self.ram.prepare_writes(pages[~self.written[pages]])
        if unpack is None:
            for view in self.ram.views(pages):
                wire.recv_into(sock, view)
            crcs = self.ram.crc_pages(pages)
        else:
            assert payload is not None
            crcs = unpack(self.ram, pages, payload)
        self.written[pages] = True
        self.digest.crc[pages] = crcs

    def arrive(self, generation: int) -> None:
        """A channel reached its SYNC; it waits here until the main stream releases it."""
        index = next(i for i, c in enumerate(self._channels) if c is threading.current_thread())
        with self._cond:
            self._arrived[index] = generation
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._released >= generation or self._error is not None)

    def wait_sync(self, generation: int) -> None:
        """Main stream at its ``generation``-th EOS: wait for every channel, then release them."""
        with self._cond:
            self._cond.wait_for(lambda: min(self._arrived) >= generation or self._error is not None)
            if self._error is not None:
                raise wire.StreamError(str(self._error))
            self._released = generation
            self._cond.notify_all()

    def fail(self, exc: Exception) -> None:
        with self._cond:
            if self._error is None:
                self._error = exc
            self._cond.notify_all()

    def close(self) -> None:
        """End every channel thread: release the barrier, break the connections, join."""
        _end_channels(self._channels, lambda: self.fail(wire.StreamError("migration ended")))
