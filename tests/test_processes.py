"""Two real qemu-hmp processes migrate a 512 MiB guest, over TCP and over a unix socket."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from hmp.harness.endpoint import Endpoint, free_port

GLOBALS = """\
globals:
store-global-state: on
only-migratable: off
send-configuration: on
send-section-footer: on
decompress-error-check: on
clear-bitmap-shift: 18
"""
# QEMU 7.2's `info migrate` on a completed source, line for line; figures by pattern.
SOURCE_DONE = [
    *GLOBALS.splitlines(),
    "Migration status: completed",
    r"total time: \d+ ms",
    r"downtime: \d+ ms",
    r"setup: \d+ ms",
    r"transferred ram: \d+ kbytes",
    r"throughput: \d+\.\d\d mbps",
    "remaining ram: 0 kbytes",
    "total ram: 524288 kbytes",
    r"duplicate: \d+ pages",
    "skipped: 0 pages",
    r"normal: \d+ pages",
    r"normal bytes: \d+ kbytes",
    r"dirty sync count: \d+",
    "page size: 4 kbytes",
    "multifd bytes: 0 kbytes",
    r"pages-per-second: \d+",
    r"precopy ram: \d+ kbytes",
    r"downtime ram: \d+ kbytes",
]


def sha256_of_guest(endpoint: Endpoint, path: Path) -> str:
    assert endpoint.execute(f'pmemsave 0 0x20000000 "{path}"', 30) == ""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_512m_idle_guest_between_two_processes(transport: str, tmp_path: Path) -> None:
    uri = f"tcp:127.0.0.1:{free_port()}" if transport == "tcp" else f"unix:{tmp_path}/m.sock"
    with (
        Endpoint(["qemu-hmp", "-m", "512M", "-incoming", uri], name="dst") as dst,
        Endpoint(["qemu-hmp", "-m", "512M", "--seed", "3"], name="src", qmp=True) as src,
    ):
        dst.wait_ready(60)
        src.wait_ready(60)
        assert dst.execute("info status", 10) == "VM status: paused (inmigrate)\n"
        assert src.execute("migrate_set_parameter max-bandwidth 0", 10) == ""
        assert src.execute(f"migrate {uri}", 60) == ""  # blocks until completed
        lines = src.execute("info migrate", 10).splitlines()
        expected = SOURCE_DONE
        if not any(line.startswith("precopy ram") for line in lines):
            # QEMU prints it only when non-zero (a paused guest sends all as downtime ram).
            expected = [p for p in SOURCE_DONE if not p.startswith("precopy")]
        assert len(lines) == len(expected), lines
        for line, pattern in zip(lines, expected, strict=True):
            assert re.fullmatch(pattern, line), (line, pattern)
        ram = src.qmp.execute("query-migrate")["ram"]
        assert ram["duplicate"] + ram["normal"] == 512 * 256
        assert dst.execute("info migrate", 10) == GLOBALS + "Migration status: completed\n" + (
            "total time: 0 ms\n"
        )
        assert src.execute("info status", 10) == "VM status: paused (postmigrate)\n"
        assert dst.execute("info status", 10) == "VM status: running\n"
        # The destination checked the digest before it ran; check every byte once more.
        assert sha256_of_guest(src, tmp_path / "src.bin") == sha256_of_guest(
            dst, tmp_path / "dst.bin"
        )
