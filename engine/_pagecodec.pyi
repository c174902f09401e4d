"""engine/_pagecodec.c: chunks of 4 KiB pages through the zlib-ng of python-zlib-ng, and
XBZRLE deltas (engine/xbzrle.py)."""

from typing_extensions import Buffer

PAGE_SIZE: int

def bind(path: str) -> None:
    """Bind the zlib-ng 2.x library at ``path``; ImportError for any other."""

def xbzrle_encode(
    ram: Buffer, pages: list[int], cache: Buffer, addr: Buffer, age: Buffer, now: int, last: bool
) -> tuple[list[int], bytes, bytes, list[int]]: ...
def xbzrle_cache_zero(
    pages: list[int], cache: Buffer, addr: Buffer, age: Buffer, now: int
) -> None: ...
def xbzrle_decode_into(
    ram: Buffer, pages: list[int], payload: Buffer, sizes: list[int]
) -> list[int]: ...
def scan_pages(ram: Buffer, pages: Buffer, zero: Buffer, crcs: Buffer | None) -> None: ...
def crc_pages(ram: Buffer, pages: Buffer, crcs: Buffer) -> None: ...
def bind_lz4(path: str) -> None:
    """Bind the LZ4 (1.9 or later) library at ``path``; ImportError for any other."""

def lz4_compress(
    ram: Buffer, pages: list[int], level: int
) -> tuple[bytes, list[int], list[int]]: ...
def lz4_decompress_into(
    ram: Buffer, pages: list[int], payload: Buffer, sizes: list[int]
) -> list[int]: ...
def lz4_pack(ram: Buffer, pages: Buffer, crcs: Buffer, scratch: Buffer, level: int) -> bytes: ...
def lz4_unpack_into(
    ram: Buffer, pages: Buffer, payload: Buffer, crcs: Buffer, scratch: Buffer
) -> None: ...
def fingerprints(ram: Buffer, pages: Buffer, prints: Buffer, crcs: Buffer) -> None: ...
def dedupe(
    pages: Buffer,
    prints: Buffer,
    keys: Buffer,
    owners: Buffer,
    sent_key: Buffer,
    sent_gen: Buffer,
    pending_gen: Buffer,
    bitmap: Buffer,
    gen: int,
    source: Buffer,
) -> int: ...
def populate_pages(ram: Buffer, pages: Buffer) -> None: ...
def bind_zstd(path: str) -> None:
    """Bind the zstd (1.4 or later) library at ``path``; ImportError for any other."""

class PageTable:
    missing: int
    def __init__(self, missing: int, zero_crc: int) -> None: ...
    def place(
        self,
        ram: Buffer,
        present: Buffer,
        written: Buffer,
        crc: Buffer,
        pages: Buffer,
        data: Buffer | None,
        chunk: int,
    ) -> int: ...
    def wait(self, present: Buffer, page: int, timeout: float) -> bool: ...
    def wait_complete(self, timeout: float) -> bool: ...
    def serve(
        self,
        fd: int,
        ram: Buffer,
        present: Buffer,
        written: Buffer,
        crc: Buffer,
        batch: int,
        zero: int,
        raw: int,
        known: bytes,
        max_batch: int,
        max_record: int,
        chunk: int,
        other: bool,
    ) -> tuple[int, int] | None: ...

class ZstdPacker:
    def __init__(self, level: int, window_log: int) -> None: ...
    def pack(self, ram: Buffer, pages: Buffer, crcs: Buffer) -> bytes: ...

class ZstdUnpacker:
    def __init__(self, window_log_max: int) -> None: ...
    def unpack_into(self, ram: Buffer, pages: Buffer, payload: Buffer, crcs: Buffer) -> None: ...

class Deflater:
    def __init__(self, level: int) -> None: ...
    def compress(self, ram: Buffer, pages: list[int]) -> tuple[bytes, list[int], list[int]]: ...

class Inflater:
    def __init__(self) -> None: ...
    def decompress_into(
        self, ram: Buffer, pages: list[int], payload: Buffer, sizes: list[int]
    ) -> list[int]: ...
