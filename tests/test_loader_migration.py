"""A paused guest whose RAM is a loader image and zeros, migrated plain and with multifd, set
against QEMU 7.2 doing the same (tests/data/qemu-7.2/loader_migration.json, recorded by
record_loader.py there).

Our `info migrate` must have QEMU's lines, volatile figures as patterns, and QEMU's relations
between the figures: the RAM is the image and zeros (so ``normal`` is the image's non-zero
pages: QEMU's counts add its ROMs' few), and with multifd ``downtime ram`` (like ``precopy
ram``) counts the main stream only, the channels' bytes showing in ``multifd bytes``.
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from engine.machine import Loader, Machine, MachineOptions
from engine.state import MigrationStatus
from hmp.cli import parse_argv
from hmp.harness.transcript import matches
from hmp.monitor.session import Monitor

DATA = Path(__file__).parent / "data" / "qemu-7.2"
QEMU = json.loads((DATA / "loader_migration.json").read_text())
MiB = 1 << 20
RAM = 64 * MiB
ROM_PAGES = 64  # at most what QEMU's pc machine adds to the RAM it migrates


def recorder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("record_loader", DATA / "record_loader.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The recorded image on disk, and its number of non-zero pages."""
    data = recorder().image_bytes()
    path = tmp_path_factory.mktemp("loader") / "image.bin"
    path.write_bytes(data)
    pages = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    return path, sum(page != bytes(4096) for page in pages)


def hmp(machine: Machine, line: str) -> str:
    out = io.StringIO()
    Monitor(machine, out=out, err=out).execute(line)
    return out.getvalue()


def migrate_like_qemu(image: Path, setup: list[str]) -> list[str]:
    """QEMU's recorded session, ours: the source's `info migrate` once completed."""
    loader = Loader(str(image), QEMU["loader_addr"])
    src = Machine(MachineOptions(ram_size=RAM, start_paused=True, loaders=(loader,)))
    dst = Machine(MachineOptions(ram_size=RAM, incoming="tcp:127.0.0.1:0"))
    try:
        for line in setup:
            assert hmp(src, line) == hmp(dst, line) == ""
        address = dst.query_migrate().socket_address
        assert address is not None
        assert hmp(src, f"migrate -d {address[0]}") == ""
        assert src.wait_migration(60).status is MigrationStatus.COMPLETED
        return hmp(src, "info migrate").splitlines()
    finally:
        src.close()
        dst.close()


def figures(lines: list[str]) -> dict[str, int]:
    out = {}
    for line in lines:
        label, _, value = line.partition(": ")
        if value.split(" ")[0].isdigit():
            out[label] = int(value.split(" ")[0])
    return out


def check_relations(fig: dict[str, Any], multifd: bool) -> None:
    """What QEMU 7.2's figures say about each other after a paused guest's migration."""
    main_stream = fig["transferred ram"] - fig["multifd bytes"]
    assert abs(fig["downtime ram"] - main_stream) <= 1  # kbytes, each rounded down
    assert "precopy ram" not in fig  # the guest never ran: nothing was sent while it did
    assert fig["normal bytes"] == fig["normal"] * 4
    if multifd:
        assert fig["multifd bytes"] >= fig["normal bytes"]  # every non-zero page went there
        assert fig["downtime ram"] < fig["normal bytes"] / 10  # the main stream: zero pages
    else:
        assert fig["multifd bytes"] == 0


@pytest.mark.parametrize("case", sorted(QEMU["cases"]))
def test_loader_migration_counts_like_qemu(case: str, image: tuple[Path, int]) -> None:
    path, nonzero = image
    qemu = QEMU["cases"][case]
    ours = migrate_like_qemu(path, qemu["setup"])
    assert len(ours) == len(qemu["patterns"]), ours
    for pattern, line in zip(qemu["patterns"], ours, strict=True):
        assert matches(pattern, line, {}), (pattern, line)
    check_relations(qemu["figures"], case == "multifd")  # the recording says so
    check_relations(figures(ours), case == "multifd")
    assert figures(ours)["normal"] == nonzero  # RAM is the image and zeros
    assert figures(ours)["duplicate"] == RAM // 4096 - nonzero
    assert 0 <= qemu["figures"]["normal"] - nonzero < ROM_PAGES


def test_loader_ram_is_the_image_and_zeros(image: tuple[Path, int]) -> None:
    path, _ = image
    opts = parse_argv(["-m", "64", "-device", f"loader,file={path},addr=0x100000,force-raw=on"])
    assert opts is not None and opts.workload_name() == "zero"
    machine = Machine(opts)
    try:
        expected = bytearray(RAM)
        expected[0x100000 : 0x100000 + path.stat().st_size] = path.read_bytes()
        assert bytes(machine.ram.buf) == bytes(expected)
    finally:
        machine.close()
    idle = Machine(MachineOptions(ram_size=RAM, workload="idle", loaders=opts.loaders))
    try:
        assert any(idle.ram.buf[:0x100000])  # asked for: the synthetic OS around the image
    finally:
        idle.close()
