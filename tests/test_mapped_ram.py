"""`file:` migrations with QEMU 11.1's mapped-ram, for real: a live save into a file where
each page sits at a fixed offset (zero pages not written), with and without multifd's
parallel writers, and a restore that reads it back and proves RAM equal before the guest
runs; and what a bad file does to a restore."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from engine.errors import MigrationError
from engine.guest import PAGE_SIZE
from engine.machine import Machine, MachineOptions
from engine.mapped_ram import HEADER, FileUri, _layout
from engine.params11 import TABLE_11_1
from engine.state import MigrationStatus, RunState
from tests.test_machine import MiB, Watch

SIZE = 32 * MiB


def machine(machines: list[Machine], **kw: object) -> Machine:
    m = Machine(MachineOptions(ram_size=SIZE, config_table=TABLE_11_1, **kw))  # type: ignore[arg-type]
    machines.append(m)
    m.set_capabilities({"events": True, "mapped-ram": True})
    return m


def save(machines: list[Machine], path: Path, channels: int, **kw: object) -> Machine:
    src = machine(machines, seed=7, **kw)
    if channels:
        src.set_capabilities({"multifd": True})
        src.set_parameters({"multifd-channels": channels})
    src.migrate(f"file:{path}")
    info = src.wait_migration(60)
    assert info.status is MigrationStatus.COMPLETED, info
    assert src.query_status().status is RunState.POSTMIGRATE
    return src


def load(machines: list[Machine], path: Path, channels: int = 0) -> Machine:
    dst = machine(machines, incoming="defer")
    if channels:
        dst.set_capabilities({"multifd": True})
    watch = Watch(dst)
    dst.migrate_incoming(f"file:{path}")
    watch.wait_status("completed")
    return dst


def digest(m: Machine) -> str:
    return hashlib.sha256(m.ram.buf).hexdigest()


@pytest.mark.parametrize("channels", [0, 4])
def test_save_and_restore_a_writing_guest(
    machines: list[Machine], tmp_path: Path, channels: int
) -> None:
    path = tmp_path / "guest.img"
    src = save(machines, path, channels, workload="idle,rate=2000,wss=4M")
    ram = src.query_migrate().ram
    assert ram is not None and ram.dirty_sync_count >= 2  # live: passes until it converged
    if channels:
        assert ram.multifd_bytes == ram.normal * PAGE_SIZE  # the channels wrote every page
    dst = load(machines, path, channels)
    assert digest(dst) == digest(src)
    assert dst.query_status().status is RunState.RUNNING


def test_each_page_sits_at_its_offset_and_zero_pages_take_no_space(
    machines: list[Machine], tmp_path: Path
) -> None:
    path = tmp_path / "guest.img"
    src = save(machines, path, channels=2)
    _, pages_at = _layout(src.ram, 0)
    nonzero = np.flatnonzero(~src.ram.zero_mask(np.arange(src.ram.pages)))
    assert 0 < len(nonzero) < src.ram.pages // 2  # the idle guest: mostly zero pages
    with open(path, "rb") as f:
        for page in nonzero[:: max(1, len(nonzero) // 50)].tolist():
            f.seek(pages_at + page * PAGE_SIZE)
            assert f.read(PAGE_SIZE) == bytes(src.ram.page(page))
    st = os.stat(path)
    assert st.st_size == pages_at + SIZE
    assert st.st_blocks * 512 < (len(nonzero) + 512) * PAGE_SIZE  # sparse: no zero page written


def test_an_offset_moves_the_whole_layout(machines: list[Machine], tmp_path: Path) -> None:
    path = tmp_path / "guest.img"
    path.write_bytes(b"keep" * 1024)  # what lies before the offset is left alone
    src = machine(machines, seed=8)
    src.migrate(f"file:{path},offset=4096")
    assert src.wait_migration(60).status is MigrationStatus.COMPLETED
    assert path.read_bytes()[:4096] == b"keep" * 1024
    dst = load(machines, Path(f"{path},offset=4096"))
    assert digest(dst) == digest(src)


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        ("truncate", "the file is not a qemu-hmp mapped-ram migration file"),
        ("page", "RAM digest mismatch: the file's pages are not what was saved"),
        ("size", "Length mismatch: pc.ram: 0x2000000 in != 0x1000000: Invalid argument"),
        ("missing", "Could not open"),
    ],
)
def test_a_bad_file_fails_the_restore_and_the_guest_stays_waiting(
    machines: list[Machine], tmp_path: Path, damage: str, error: str
) -> None:
    path = tmp_path / "guest.img"
    src = save(machines, path, channels=0)
    _, pages_at = _layout(src.ram, 0)
    if damage == "truncate":
        os.truncate(path, HEADER.size - 1)
    elif damage == "page":
        page = int(np.flatnonzero(~src.ram.zero_mask(np.arange(src.ram.pages)))[0])
        with open(path, "r+b") as f:
            f.seek(pages_at + page * PAGE_SIZE)
            f.write(b"\xff" * 8)
    elif damage == "missing":
        path = tmp_path / "nothing.img"
    size = SIZE // 2 if damage == "size" else SIZE
    dst = Machine(MachineOptions(ram_size=size, incoming="defer", config_table=TABLE_11_1))
    machines.append(dst)
    watch = Watch(dst)
    dst.set_capabilities({"events": True, "mapped-ram": True})
    dst.migrate_incoming(f"file:{path}")
    watch.wait_status("failed")
    info = dst.query_migrate()
    assert info.error_desc is not None and info.error_desc.startswith(error)
    assert dst.query_status().status is RunState.INMIGRATE


def test_file_uri_rules(machines: list[Machine], tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="file URI has bad offset x: Invalid argument"):
        FileUri.parse("file:/x,offset=x")
    src = machine(machines)
    with pytest.raises(MigrationError, match=f"Could not create '{tmp_path}': Is a directory"):
        src.migrate(f"file:{tmp_path}")
    assert src.query_migrate().error_desc == f"Could not create '{tmp_path}': Is a directory"
    with pytest.raises(
        MigrationError, match=r"Migration requires seekable transport \(e.g. file\)"
    ):
        src.migrate("tcp:127.0.0.1:1")


def test_max_bandwidth_paces_the_file_and_a_cancel_ends_the_wait(
    machines: list[Machine], tmp_path: Path
) -> None:
    src = machine(machines, seed=9)
    src.set_parameters({"max-bandwidth": 1 * MiB})  # ~5 MiB of pages: seconds at this rate
    watch = Watch(src)
    src.migrate(f"file:{tmp_path / 'slow.img'}")
    watch.wait_event("MIGRATION", count=2)  # setup, active
    info = src.query_migrate()
    assert info.status is MigrationStatus.ACTIVE and info.ram is not None
    assert info.ram.remaining > 0
    src.migrate_cancel()
    assert src.wait_migration(10).status is MigrationStatus.CANCELLED
    assert src.query_status().status is RunState.RUNNING
