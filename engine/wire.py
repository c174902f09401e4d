"""The migration stream: framing, the configuration section, page batches, and the digest.

Layout (all integers big-endian, as in QEMU's stream)::

    header    b"QHMP" u32 version
    record    u8 type, u32 body length, body            (length <= MAX_RECORD)
      CONFIG  JSON: page size, RAM size, capabilities that must match on both sides
      BATCH   u32 n, n x u32 page index, n x u8 kind, m x u32 length (compressed and
              XBZRLE pages, in page order), payload: raw pages, then those blobs
      EOS     empty: end of one iteration; the destination drains its decompressors here
      DONE    JSON: the source's run state and the digest of every page sent
      GO      JSON: the source commits the switchover (sent only after READY)
      DISCARD postcopy: one bit per page, set for the pages the destination must fetch
      RUN     postcopy, JSON {"runstate"}: the switch; the destination's guest runs now
      COPY    u32 n, n x u32 page, n x u32 source page: each page holds what the
              destination holds in its source page (duplicates under multifd, engine/dedupe.py)
    replies   (destination -> source, same socket), JSON:
      READY   the digest matched; the destination waits for GO before its guest may run
      ACK     GO arrived: the destination holds the guest
      NACK    {"error": reason}: the destination will not run the guest
      REQUEST postcopy: u32 n, n x u32 page index: pages a vCPU faulted on
    recovery  (a new connection after postcopy-paused): RECOVER {"session"} →
              RECEIVED (one bit per page the destination holds) → RESUME, then postcopy

The completion handshake (DONE → READY → GO → ACK) keeps one guest from running twice
whatever message is lost: docs/ARCHITECTURE.md has its table.

Page kinds keep QEMU's RAM flag values (ZERO 0x02, PAGE 0x08, XBZRLE 0x40, COMPRESS_PAGE
0x100) folded into one byte. Batches, not per-page records, keep the per-page Python cost off
the hot path.

The digest is a CRC-32 per page kept as pages are sent (source) and written (destination);
at the end both sides hash their CRC table, so verification costs ~1 MiB of hashing per GiB
instead of re-reading all of RAM during downtime.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from zlib_ng import zlib_ng

from engine.guest import PAGE_SIZE, ZERO_PAGE

MAGIC = b"QHMP"
VERSION = 5  # 2: the completion handshake (READY, GO); 3: XBZRLE pages; 4: postcopy;
# 5: COPY, SWITCHOVER_ACK, READY on the postcopy-preempt channel
HEADER = struct.Struct(">4sI")
RECORD = struct.Struct(">BI")
MAX_BATCH = 1024  # pages per batch
# zlib-ng level 1 (deflate_quick) can expand a page by 1/8, beyond zlib's compressBound.
MAX_COMPRESSED = PAGE_SIZE + PAGE_SIZE // 8 + 64
MAX_RECORD = 4 + MAX_BATCH * (4 + 1 + 4 + MAX_COMPRESSED)
MAX_JSON = 64 * 1024
SWITCHOVER_TIMEOUT_S = 60.0  # how long each step of the completion handshake may take
PEER_TEXT_LIMIT = 256  # characters of a peer's text kept once escaped
ZERO_CRC = zlib_ng.crc32(ZERO_PAGE)


class Rec(IntEnum):
    CONFIG = 0x07
    BATCH = 0x02
    EOS = 0x10
    DONE = 0x00
    GO = 0x11
    ACK = 0x21
    NACK = 0x22
    READY = 0x23
    DISCARD = 0x12  # postcopy (engine/postcopy.py)
    RUN = 0x13
    RECOVER = 0x14  # postcopy recovery, on a new connection: JSON {"session"}
    RESUME = 0x15
    COPY = 0x16  # duplicate pages (engine/dedupe.py)
    REQUEST = 0x24
    RECEIVED = 0x25  # the destination's answer to RECOVER: one bit per page it holds
    SWITCHOVER_ACK = 0x26  # switchover-ack (11.1): the destination is ready to switch


class Kind(IntEnum):
    ZERO = 0x02
    PAGE = 0x08
    COMPRESSED = 0x01  # QEMU's RAM_SAVE_FLAG_COMPRESS_PAGE (0x100) does not fit a byte
    XBZRLE = 0x40  # a delta against the page the destination holds (engine/xbzrle.py)


BLOBS = (Kind.COMPRESSED, Kind.XBZRLE)  # kinds whose pages carry a length and a blob
# By kind byte: known, carries a blob. A table lookup is ~8x cheaper than np.isin per batch.
KNOWN_KIND = np.isin(np.arange(256), [int(k) for k in Kind])
BLOB_KIND = np.isin(np.arange(256), [int(k) for k in BLOBS])


class StreamError(Exception):
    """The stream is malformed; the message says how (shown as the migration's error)."""


class ForeignPeer(StreamError):
    """The destination answered with bytes that are not a reply of this protocol."""

    def __init__(self, sent: bytes) -> None:
        super().__init__(
            "destination answered with something that is not a qemu-hmp migration stream "
            f"(it sent {sent[:16]!r})"
        )


def peer_text(text: str) -> str:
    """Text a peer sent, made safe to store and print: what is not printable (escape
    sequences, a newline faking a ``(qemu) `` prompt, bidi controls) is escaped, and the
    result holds at most PEER_TEXT_LIMIT characters."""
    out: list[str] = []
    size = 0
    for ch in text:
        piece = ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
        size += len(piece)
        if size > PEER_TEXT_LIMIT:
            out.append("...")
            break
        out.append(piece)
    return "".join(out)


def header() -> bytes:
    return HEADER.pack(MAGIC, VERSION)


def check_header(data: bytes) -> None:
    magic, version = HEADER.unpack(data)
    if magic != MAGIC:
        raise StreamError(f"not a qemu-hmp migration stream (magic {magic!r})")
    if version != VERSION:
        raise StreamError(f"unsupported stream version {version} (expected {VERSION})")


class Reader(Protocol):
    """What records are read from: a socket, or anything that fills a buffer as one does."""

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0, /) -> int: ...


def read_exact(sock: Reader, n: int) -> bytearray | None:
    """``n`` bytes, or None at a clean end of stream before the first byte."""
    buf = bytearray(n)
    if n:
        k = sock.recv_into(buf)
        if not k:
            return None
        if k < n:
            recv_into(sock, memoryview(buf)[k:])
    return buf


def read_record_head(sock: socket.socket) -> tuple[int, int] | None:
    """A record's (type, length), bounded by MAX_RECORD; None at a clean end of stream."""
    head = read_exact(sock, RECORD.size)
    if head is None:
        return None
    kind, length = RECORD.unpack(head)
    if length > MAX_RECORD:
        raise StreamError(f"record of {length} bytes exceeds the limit of {MAX_RECORD}")
    return kind, length


def read_body(sock: socket.socket, length: int, limit: int) -> bytearray:
    if length > limit:
        raise StreamError(f"section of {length} bytes exceeds the limit of {limit}")
    return _read(sock, length)


def read_record(sock: socket.socket, limit: int) -> tuple[int, bytearray] | None:
    """One whole small record (type, body); None at a clean end of stream."""
    head = read_record_head(sock)
    if head is None:
        return None
    return head[0], read_body(sock, head[1], limit)


REPLIES = frozenset({Rec.READY, Rec.ACK, Rec.NACK, Rec.SWITCHOVER_ACK})


@dataclass(frozen=True)
class Reply:
    kind: Rec
    error: str = ""  # a NACK's reason, made safe by peer_text


def read_reply(sock: socket.socket) -> Reply | None:
    """The destination's next reply; None once the connection has closed (even mid-record).

    Raises ForeignPeer when what arrived is not a reply (an SSH banner, a NACK whose body is
    not JSON), and TimeoutError or OSError as the socket does.
    """
    try:
        head = read_exact(sock, RECORD.size)
        if head is None:
            return None
        kind, length = RECORD.unpack(head)
        if kind not in REPLIES or length > MAX_JSON:
            raise ForeignPeer(bytes(head))
        body = _read(sock, length)
    except ForeignPeer:
        raise
    except StreamError:  # truncated: the peer closed in the middle of a record
        return None
    return parse_reply(kind, body)


def parse_reply(kind: int, body: bytes | bytearray) -> Reply:
    """A READY, ACK or NACK record's body as a Reply (ForeignPeer when it is not JSON)."""
    try:
        obj = parse_json(body, "reply")
    except StreamError as exc:
        raise ForeignPeer(bytes(body)) from exc
    if kind != Rec.NACK:
        return Reply(Rec(kind))
    return Reply(Rec.NACK, peer_text(str(obj.get("error", "destination failed"))))


def record(kind: Rec, body: bytes = b"") -> bytes:
    return RECORD.pack(kind, len(body)) + body


def json_record(kind: Rec, obj: dict[str, Any]) -> bytes:
    return record(kind, json.dumps(obj, sort_keys=True).encode())


def parse_json(body: bytes | bytearray | memoryview, what: str) -> dict[str, Any]:
    if len(body) > MAX_JSON:
        raise StreamError(f"{what} section too long ({len(body)} bytes)")
    try:
        obj = json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # "[[[[..." nests too deep
        raise StreamError(f"{what} section is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise StreamError(f"{what} section is not an object")
    return obj


@dataclass(frozen=True)
class StreamConfig:
    """What both sides must agree on before any page moves."""

    page_size: int
    ram_size: int
    compress: bool
    compress_method: str
    multifd_channels: int = 0  # 0: multifd off
    multifd_compression: str = "none"
    session: str = ""  # ties multifd channel connections to this stream
    uuid: str = ""  # the source's -uuid, sent with validate-uuid on ("": none sent)
    postcopy: bool = False  # the postcopy-ram capability
    preempt: bool = False  # postcopy-preempt: a channel for requested pages
    switchover_ack: bool = False  # the source waits for the destination's SWITCHOVER_ACK

    def to_json(self) -> dict[str, Any]:
        return {
            "page-size": self.page_size,
            "ram-size": self.ram_size,
            "compress": self.compress,
            "compress-method": self.compress_method,
            "multifd-channels": self.multifd_channels,
            "multifd-compression": self.multifd_compression,
            "session": self.session,
            "uuid": self.uuid,
            "postcopy": self.postcopy,
            "postcopy-preempt": self.preempt,
            "switchover-ack": self.switchover_ack,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> StreamConfig:
        try:
            cfg = cls(
                page_size=_bounded(obj["page-size"]),
                ram_size=_bounded(obj["ram-size"]),
                compress=bool(obj["compress"]),
                # Names a peer chose end up in error messages: made safe to print.
                compress_method=peer_text(str(obj["compress-method"])),
                multifd_channels=_bounded(obj["multifd-channels"]),
                multifd_compression=peer_text(str(obj["multifd-compression"])),
                session=str(obj["session"]),
                uuid=peer_text(str(obj.get("uuid", ""))),
                postcopy=bool(obj["postcopy"]),
                preempt=bool(obj["postcopy-preempt"]),
                switchover_ack=bool(obj.get("switchover-ack", False)),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # int(Infinity)
            raise StreamError("configuration section is incomplete") from exc
        return cfg

    def mismatch(self, local: StreamConfig) -> str | None:
        """QEMU-style description of the first setting that differs, or None."""
        if self.page_size != local.page_size:
            return f"page size mismatch: source {self.page_size}, destination {local.page_size}"
        if self.uuid and local.uuid and self.uuid != local.uuid:  # QEMU's configuration section
            return f"UUID received is {self.uuid} and local is {local.uuid}"
        if self.ram_size != local.ram_size:
            return (
                f"Length mismatch: pc.ram: 0x{self.ram_size:x} in != 0x{local.ram_size:x}: "
                "Invalid argument"
            )
        if self.compress and not local.compress:
            return "Received an unexpected compressed page"
        if self.postcopy and not local.postcopy:  # QEMU's loadvm_postcopy_handle_advise
            return "RAM postcopy is disabled but have 16 byte advise"
        # A source's extra channel the destination does not want, it closes (QEMU 7.2: "Extra
        # incoming migration connection; ignoring"); one it waits for would never come.
        if local.postcopy and local.preempt and not self.preempt:
            return "postcopy-preempt mismatch: the capability is off on the source"
        if bool(self.multifd_channels) != bool(local.multifd_channels):
            side = "destination" if self.multifd_channels else "source"
            return f"multifd mismatch: the capability is off on the {side}"
        if not 0 <= self.multifd_channels <= 255:
            return f"multifd: {self.multifd_channels} channels"
        if self.compress and self.compress_method != local.compress_method:
            return (
                f"compress method mismatch: source {self.compress_method}, "
                f"destination {local.compress_method}"
            )
        return None


def _bounded(value: Any) -> int:
    """A configuration integer; beyond 64 bits it could only be a peer's padding of messages."""
    n = int(value)
    if not -(1 << 63) <= n < 1 << 64:
        raise ValueError(f"{n.bit_length()}-bit integer")
    return n


U32 = np.dtype(">u4")


def encode_batch(
    indices: npt.NDArray[np.intp],
    kinds: npt.NDArray[np.uint8],
    clens: list[int],
    payload: Sequence[bytes | memoryview],
) -> list[bytes | memoryview]:
    """A BATCH record as buffers for ``sendmsg``: raw pages are sent from guest RAM, uncopied."""
    n = len(indices)
    head = b"".join(
        (
            struct.pack(">I", n),
            indices.astype(U32).tobytes(),
            kinds.tobytes(),
            np.asarray(clens, dtype=U32).tobytes(),
        )
    )
    size = len(head) + sum(len(p) for p in payload)
    return [RECORD.pack(Rec.BATCH, size), head, *payload]


@dataclass(frozen=True)
class BatchHead:
    """A BATCH record's validated header; its payload (raw pages, then blobs) follows."""

    indices: npt.NDArray[np.intp]
    kinds: npt.NDArray[np.uint8]
    clens: npt.NDArray[np.intp]  # of the pages with a blob, all of one kind of BLOBS

    def of(self, kind: Kind) -> npt.NDArray[np.intp]:
        return self.indices[self.kinds == int(kind)]  # an IntEnum compares slower


def read_batch_head(sock: Reader, length: int, pages: int) -> BatchHead:
    """Read and validate every count, index, kind and length before any page is read."""
    if length < 4:
        raise StreamError("truncated page batch")
    (n,) = struct.unpack(">I", _read(sock, 4))
    if not 0 < n <= MAX_BATCH:
        raise StreamError(f"page batch of {n} pages (limit {MAX_BATCH})")
    meta = _read(sock, 5 * n)
    indices = np.frombuffer(meta, U32, n).astype(np.intp)
    kinds = np.frombuffer(meta, np.uint8, n, 4 * n)
    if int(indices.max()) >= pages:
        raise StreamError(f"page {int(indices.max())} is outside guest RAM ({pages} pages)")
    known = KNOWN_KIND[kinds]
    if not known.all():
        raise StreamError(f"unknown page kind 0x{int(kinds[~known][0]):02x}")
    blob = BLOB_KIND[kinds]
    m = int(blob.sum())
    clens = np.frombuffer(_read(sock, 4 * m), U32, m).astype(np.intp)
    xbzrle = kinds[blob] == int(Kind.XBZRLE)
    if xbzrle.any() and not xbzrle.all():  # each blob kind is read as one run
        raise StreamError("page batch mixes compressed and XBZRLE pages")
    _check_lengths(clens[~xbzrle], clens[xbzrle])
    raw = int(np.count_nonzero(kinds == int(Kind.PAGE)))
    expected = 4 + 5 * n + 4 * m + raw * PAGE_SIZE + int(clens.sum())
    if length != expected:
        raise StreamError(f"page batch length {length} does not match its contents ({expected})")
    return BatchHead(indices, kinds, clens)


def encode_copies(
    pages: npt.NDArray[np.intp], sources: npt.NDArray[np.intp]
) -> list[bytes | memoryview]:
    head = struct.pack(">I", len(pages))
    body: list[bytes | memoryview] = [
        head,
        pages.astype(U32).tobytes(),
        sources.astype(U32).tobytes(),
    ]
    return [RECORD.pack(Rec.COPY, sum(len(b) for b in body)), *body]


def read_copies(
    sock: socket.socket, length: int, pages: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """A COPY record's (pages, source pages), every count and index checked."""
    if length < 4:
        raise StreamError("truncated page copy record")
    (n,) = struct.unpack(">I", _read(sock, 4))
    if not 0 < n <= MAX_BATCH or length != 4 + 8 * n:
        raise StreamError(f"page copy record of {n} pages in {length} bytes")
    both = np.frombuffer(_read(sock, 8 * n), U32).astype(np.intp)
    if int(both.max()) >= pages:
        raise StreamError(f"page {int(both.max())} is outside guest RAM ({pages} pages)")
    return both[:n], both[n:]


def _check_lengths(compressed: npt.NDArray[np.intp], xbzrle: npt.NDArray[np.intp]) -> None:
    """Each blob's length, before any blob is read (QEMU's texts where it has them)."""
    if len(compressed) and (int(compressed.max()) > MAX_COMPRESSED or int(compressed.min()) == 0):
        bad = int(compressed.max()) if int(compressed.max()) > MAX_COMPRESSED else 0
        raise StreamError(f"Invalid compressed data length: {bad}")
    if len(xbzrle) and int(xbzrle.max()) > PAGE_SIZE:
        raise StreamError("Failed to load XBZRLE page - len overflow!")
    if len(xbzrle) and int(xbzrle.min()) == 0:  # an unchanged page is never sent
        raise StreamError("Failed to load XBZRLE page - decode error!")


def _read(sock: Reader, n: int) -> bytearray:
    data = read_exact(sock, n)
    if data is None:
        raise StreamError("truncated stream")
    return data


def recv_into(sock: Reader, view: memoryview) -> None:
    """Fill ``view`` (e.g. guest pages) straight from the socket."""
    got, n = 0, len(view)
    while got < n:
        # MSG_WAITALL: one call for the whole view on a blocking socket, not one per segment
        # (a timed socket is non-blocking underneath and returns what has come).
        k = sock.recv_into(view[got:], 0, socket.MSG_WAITALL)
        if not k:
            raise StreamError("truncated stream")
        got += k


class PageDigest:
    """A CRC-32 per page; equal tables on both sides prove equal RAM (up to CRC collisions)."""

    def __init__(self, pages: int) -> None:
        self.crc = np.full(pages, ZERO_CRC, dtype=np.uint32)

    def set_zero(self, indices: npt.NDArray[np.intp]) -> None:
        self.crc[indices] = ZERO_CRC

    def hexdigest(self) -> str:
        # Taken inside the downtime: SHA-256 runs on the CPU's SHA extensions, ~1 ms for the
        # 2 MiB table of a 2 GiB guest (BLAKE2b took twice that).
        return hashlib.sha256(self.crc.tobytes()).hexdigest()[:32]
