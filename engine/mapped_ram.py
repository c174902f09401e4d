"""QEMU 11.1's `file:` migration with the mapped-ram capability: each page at a fixed offset.

The file (from the URI's ``offset=``): a header, a bitmap of the pages that hold data, then,
at the next MiB, page ``i`` at ``pages_at + i * PAGE_SIZE``. A pass writes every dirty page
that holds data where it belongs (a page re-dirtied is simply overwritten) and clears the
bit of a zero page, which is never written (the file stays sparse). Passes repeat, as
precopy's do, until what is left fits ``downtime-limit`` at the measured write rate; then the
vCPUs stop, the last pass runs, and the bitmap and the header with the RAM digest go last, so
a file cut short has no valid header. With multifd, ``multifd-channels`` threads write
batches in parallel with ``os.pwrite`` (which releases the GIL). A restore (`-incoming defer`
+ `migrate_incoming file:PATH`) reads the header, the bitmap and each page back with
``os.preadv`` into guest RAM (in parallel the same way), and checks the digest before the
guest may run.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.errors import MigrationError
from engine.guest import PAGE_SHIFT, PAGE_SIZE, GuestRam
from engine.outgoing_status import OutgoingStatus
from engine.snapshot import MigrationInfo
from engine.state import MigrationStatus, RunState
from engine.stats import SourceStats
from engine.transport import AddressError, RateLimiter
from engine.vm import Vm
from engine.wire import PageDigest

log = logging.getLogger(__name__)
HEADER = struct.Struct(">4sIIQQ16s")  # magic, version, page size, RAM size, pages at, digest
MAGIC, VERSION = b"QHMR", 1
ALIGN = 1 << 20  # pages start at a MiB boundary, as QEMU's mapped-ram aligns them
BATCH = 256  # pages per write job
MAX_PASSES = 30  # then stop and copy whatever is left, as a bounded precopy would


@dataclass(frozen=True)
class FileUri:
    path: str
    offset: int = 0

    @classmethod
    def parse(cls, uri: str) -> FileUri:
        """``file:PATH[,offset=N]`` with QEMU 11.1's texts."""
        path, sep, option = uri.removeprefix("file:").partition(",offset=")
        if not sep:
            return cls(path)
        try:
            offset = int(option, 0)
        except ValueError:
            raise AddressError(f"file URI has bad offset {option}: Invalid argument") from None
        return cls(path, offset)


def _layout(ram: GuestRam, offset: int) -> tuple[int, int]:
    """Where the bitmap and the pages start."""
    bitmap_at = offset + HEADER.size
    pages_at = -(-(bitmap_at + -(-ram.pages // 8)) // ALIGN) * ALIGN
    return bitmap_at, pages_at


def open_file(uri: FileUri, *, save: bool) -> int:
    """The URI's file, as QEMU 11.1 opens it: to save, created if need be and cut at the
    offset (what lies before the offset stays); to restore, read-only. QEMU's texts."""
    try:
        fd = os.open(uri.path, os.O_WRONLY | os.O_CREAT if save else os.O_RDONLY, 0o600)
    except OSError as exc:
        verb = "create" if save else "open"
        raise AddressError(f"Could not {verb} '{uri.path}': {exc.strerror}") from exc
    if save:
        try:
            os.ftruncate(fd, uri.offset)
        except OSError as exc:
            os.close(fd)
            raise MigrationError(
                f"failed to truncate migration file to offset {uri.offset:x}: {exc.strerror}"
            ) from exc
    return fd


def _channels(threads: int) -> ThreadPoolExecutor | None:
    return ThreadPoolExecutor(threads, thread_name_prefix="multifd_file") if threads else None


class FileOutgoing(OutgoingStatus, threading.Thread):
    """A live migration into a mapped-ram file: the source side of `migrate file:...`."""

    def __init__(
        self,
        uri: FileUri,
        ram: GuestRam,
        vm: Vm,
        param: Callable[[str], int],
        channels: int,
        on_event: Callable[[str, dict[str, Any]], None],
    ) -> None:
        super().__init__(name="live_migration", daemon=True)
        self.uri, self.ram, self.vm, self._param, self._on_event = uri, ram, vm, param, on_event
        self.channels = channels  # 0: no multifd, the migration thread writes
        self.stats = SourceStats(total=ram.size, compress=False)
        self._status = MigrationStatus.SETUP
        self._error: str | None = None
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._digest = PageDigest(ram.pages)
        self._present = np.zeros(ram.pages, dtype=bool)
        self._limiter = RateLimiter(lambda: param("max-bandwidth"))  # as over a socket
        # The file is opened before `migrate` returns: QEMU reports that error at once.
        self._fd = open_file(uri, save=True)

    def cancel(self) -> None:
        with self._lock:
            if self._status not in (
                MigrationStatus.SETUP,
                MigrationStatus.ACTIVE,
                MigrationStatus.DEVICE,
            ):
                return
            self._status = MigrationStatus.CANCELLING
        self._on_event("MIGRATION", {"status": str(MigrationStatus.CANCELLING)})
        self._cancel.set()
        self._limiter.end()

    def parameters_changed(self) -> None:
        """A live max-bandwidth: a writer waiting on the old rate re-checks now."""
        self._limiter.wake()

    close = cancel

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def run(self) -> None:
        was_running = self.vm.running
        pool = _channels(self.channels)
        try:
            self._save(pool)
        except MigrationError as exc:
            self._finish(MigrationStatus.FAILED, exc.desc, was_running)
        except OSError as exc:
            error = f"Unable to write to file: {exc.strerror}"
            self._finish(MigrationStatus.FAILED, error, was_running)
        except _Cancelled:
            self._finish(MigrationStatus.CANCELLED, None, was_running)
        except Exception as exc:  # a bug must still leave the guest running
            log.exception("file migration to %s", self.uri.path)
            self._finish(MigrationStatus.FAILED, f"internal error: {exc!r}", was_running)
        else:
            self._finish(MigrationStatus.COMPLETED, None, was_running)
        finally:
            if pool is not None:
                pool.shutdown()

    def _save(self, pool: ThreadPoolExecutor | None) -> None:
        bitmap_at, pages_at = _layout(self.ram, self.uri.offset)
        os.ftruncate(self._fd, pages_at + self.ram.size)  # sparse: zero pages take no space
        self.ram.start_dirty_log()
        dirty = np.ones(self.ram.pages, dtype=bool)
        self.stats.set_remaining(self.ram.pages)
        self.stats.bitmap_synced(0)
        self.stats.setup_done(self._param("downtime-limit"))
        self._set_status(MigrationStatus.SETUP, MigrationStatus.ACTIVE)
        for _ in range(MAX_PASSES):
            start = time.monotonic()
            written = self._pass(np.flatnonzero(dirty), pages_at, pool)
            rate = written / max(time.monotonic() - start, 1e-6)  # bytes/s this file takes
            dirty = self.ram.take_dirty()
            left = int(np.count_nonzero(dirty)) * PAGE_SIZE
            self.stats.set_remaining(left // PAGE_SIZE)
            self.stats.bitmap_synced(int(np.count_nonzero(dirty)))
            self._on_event("MIGRATION_PASS", {"pass": self.stats.dirty_sync_count})
            if left <= rate * self._param("downtime-limit") / 1000:
                break
        self.stats.start_downtime()
        self._limiter.unlimited = True  # as QEMU lifts max-bandwidth for stop-and-copy
        self.vm.force_stop(RunState.FINISH_MIGRATE)
        self._set_status(MigrationStatus.ACTIVE, MigrationStatus.DEVICE)  # as 11.1's, after STOP
        dirty |= self.ram.take_dirty()
        self._pass(np.flatnonzero(dirty), pages_at, pool)
        bitmap = np.packbits(self._present, bitorder="little").tobytes()
        os.pwrite(self._fd, bitmap, bitmap_at)
        digest = bytes.fromhex(self._digest.hexdigest())
        header = HEADER.pack(MAGIC, VERSION, PAGE_SIZE, self.ram.size, pages_at, digest)
        os.pwrite(self._fd, header, self.uri.offset)
        os.fsync(self._fd)
        self.stats.add_stream(len(bitmap) + len(header))
        self.stats.completed()

    def _pass(
        self, pages: npt.NDArray[np.intp], pages_at: int, pool: ThreadPoolExecutor | None
    ) -> int:
        """Write the pages that hold data, clear the zero ones; the bytes written."""
        jobs = [pages[i : i + BATCH] for i in range(0, len(pages), BATCH)]
        if pool is None:
            return sum(self._write(batch, pages_at, multifd=False) for batch in jobs)
        return sum(pool.map(lambda batch: self._write(batch, pages_at, multifd=True), jobs))

    def _write(self, batch: npt.NDArray[np.intp], pages_at: int, *, multifd: bool) -> int:
        if self._cancel.is_set():
            raise _Cancelled
        zero = self.ram.zero_mask(batch)
        self._present[batch[zero]] = False
        self._digest.set_zero(batch[zero])
        data = batch[~zero]
        self._present[data] = True
        self._digest.crc[data] = self.ram.crc_pages(data)
        nbytes = 0
        for page in data.tolist():  # one pwrite per page: each at its fixed offset
            nbytes += os.pwrite(self._fd, self.ram.page(page), pages_at + (page << PAGE_SHIFT))
        self._limiter.charge(nbytes)
        self._limiter.wait_window()
        if multifd:
            self.stats.add_multifd(nbytes, len(data), int(zero.sum()))
        else:
            self.stats.add_ram(nbytes, self.vm.running)
            self.stats.add_pages(
                zero=int(zero.sum()), normal=len(data), compressed=0, compressed_bytes=0, busy=0
            )
        return nbytes

    def _set_status(self, old: MigrationStatus, status: MigrationStatus) -> None:
        """From ``old`` only: anything else is a cancel that came first."""
        with self._lock:
            if self._status is not old:
                raise _Cancelled
            self._status = status
        self._on_event("MIGRATION", {"status": str(status)})

    def _finish(self, status: MigrationStatus, error: str | None, was_running: bool) -> None:
        self._limiter.end()
        self.ram.stop_dirty_log()
        os.close(self._fd)
        if status is MigrationStatus.COMPLETED:
            self.vm.set_state(RunState.POSTMIGRATE)
        elif was_running:
            self.vm.start()
        with self._lock:
            self._status, self._error = status, error
        self._on_event("MIGRATION", {"status": str(status)})
        self._done.set()


class _Cancelled(Exception):
    pass


def restore(uri: FileUri, ram: GuestRam, channels: int) -> None:
    """Read a mapped-ram file back into guest RAM; MigrationError if it is not one or its
    pages do not match its digest (RAM is then not to be run)."""
    fd = open_file(uri, save=False)
    try:
        head = os.pread(fd, HEADER.size, uri.offset)
        if len(head) != HEADER.size:
            raise MigrationError("the file is not a qemu-hmp mapped-ram migration file")
        magic, version, page_size, ram_size, pages_at, digest = HEADER.unpack(head)
        if magic != MAGIC or version != VERSION or page_size != PAGE_SIZE:
            raise MigrationError("the file is not a qemu-hmp mapped-ram migration file")
        if ram_size != ram.size:
            raise MigrationError(
                f"Length mismatch: pc.ram: 0x{ram_size:x} in != 0x{ram.size:x}: Invalid argument"
            )
        bitmap_at, expected_at = _layout(ram, uri.offset)
        if pages_at != expected_at:
            raise MigrationError("the file's page area is not where its header says")
        raw = os.pread(fd, -(-ram.pages // 8), bitmap_at)
        present = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[: ram.pages]
        pages = np.flatnonzero(present)
        zero = np.flatnonzero(present == 0)
        ram.page_array[zero[~ram.zero_mask(zero)]] = 0  # only where a page holds data now
        jobs = [pages[i : i + BATCH] for i in range(0, len(pages), BATCH)]

        def read(batch: npt.NDArray[np.intp]) -> None:
            for page in batch.tolist():
                if os.preadv(fd, [ram.page(page)], pages_at + (page << PAGE_SHIFT)) != PAGE_SIZE:
                    raise MigrationError("the migration file ends before its pages")

        if channels:
            with ThreadPoolExecutor(channels, thread_name_prefix="multifd_file") as pool:
                list(pool.map(read, jobs))
        else:
            for batch in jobs:
                read(batch)
        check = PageDigest(ram.pages)
        check.crc[pages] = ram.crc_pages(pages)
        if bytes.fromhex(check.hexdigest()) != digest:
            raise MigrationError("RAM digest mismatch: the file's pages are not what was saved")
    finally:
        os.close(fd)


class FileIncoming(threading.Thread):
    """`migrate_incoming file:PATH`: a restore on its own thread, with a status to query."""

    def __init__(
        self,
        uri: FileUri,
        ram: GuestRam,
        vm: Vm,
        channels: int,
        autostart: Callable[[], bool],
        failed: Callable[[str], None],
        on_event: Callable[[str, dict[str, Any]], None],
    ) -> None:
        super().__init__(name="migration_incoming", daemon=True)
        self.uri, self.ram, self.vm, self.channels = uri, ram, vm, channels
        self._autostart, self._failed, self._on_event = autostart, failed, on_event
        self.status = MigrationStatus.SETUP
        self._error: str | None = None
        self._done = threading.Event()

    def info(self) -> MigrationInfo:
        return MigrationInfo(status=self.status, error_desc=self._error)

    def run(self) -> None:
        self._set(MigrationStatus.ACTIVE)
        try:
            restore(self.uri, self.ram, self.channels)
        except MigrationError as exc:
            self._error = exc.desc
            self._set(MigrationStatus.FAILED)
            self._failed(exc.desc)
        except Exception as exc:  # a bug must not run a guest half loaded
            log.exception("restore from %s", self.uri.path)
            self._error = f"internal error: {exc!r}"
            self._set(MigrationStatus.FAILED)
            self._failed(self._error)
        else:
            if self._autostart():
                self.vm.start()
            else:
                self.vm.set_state(RunState.PAUSED)
            self._set(MigrationStatus.COMPLETED)
        self._done.set()

    def _set(self, status: MigrationStatus) -> None:
        self.status = status
        self._on_event("MIGRATION", {"status": str(status)})

    def close(self) -> None:
        """A restore reads a local file: it ends by itself, so nothing to break."""

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)
