"""Postcopy between two real qemu-hmp processes: a dirtying guest that cannot converge under
max-bandwidth completes, with the source's RAM (pmemsave) on a destination started with -S;
a running destination faults pages in; a destination killed in postcopy leaves the source in
postcopy-paused, saying so as QEMU does."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from hmp.harness.endpoint import Endpoint, free_port

RAM = "32M"
DIRTY = "random-writer,rate=20000,wss=32M"  # 80 MB/s over all of RAM: never converges at 4M
TIMEOUT = 60.0


def guest_sha(ep: Endpoint, path: Path) -> str:
    assert ep.execute(f'pmemsave 0 0x2000000 "{path}"', 30) == ""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def status(ep: Endpoint, *wanted: str) -> dict[str, Any]:
    return ep.qmp.poll("query-migrate", lambda r: r.get("status") in wanted, TIMEOUT)


def start(dst_args: list[str], uri: str) -> tuple[Endpoint, Endpoint]:
    dst = Endpoint(["qemu-hmp", "-m", RAM, *dst_args, "-incoming", uri], name="dst", qmp=True)
    src = Endpoint(["qemu-hmp", "-m", RAM, "--workload", DIRTY], name="src", qmp=True)
    for ep in (dst, src):
        ep.wait_ready(60)
        assert ep.execute("migrate_set_capability postcopy-ram on", 10) == ""
    assert src.execute("migrate_set_parameter max-bandwidth 4M", 10) == ""
    assert src.execute(f"migrate -d {uri}", 10) == ""
    # Still in its first pass over RAM: most of it has not reached the destination.
    src.qmp.poll("query-migrate", lambda r: r.get("ram", {}).get("transferred", 0) > 1 << 20, 30)
    return dst, src


def test_dirtying_guest_completes_with_identical_ram(tmp_path: Path) -> None:
    uri = f"tcp:127.0.0.1:{free_port()}"
    dst, src = start(["-S"], uri)
    with dst, src:
        assert src.execute("migrate_start_postcopy", 10) == ""
        done = status(src, "completed", "failed")
        assert done["status"] == "completed", done
        assert done["ram"]["postcopy-bytes"] > 0
        status(dst, "completed")
        assert dst.execute("info status", 10) == "VM status: paused\n"
        assert src.execute("info status", 10) == "VM status: paused (postmigrate)\n"
        assert guest_sha(src, tmp_path / "src") == guest_sha(dst, tmp_path / "dst")


def test_running_destination_faults_pages_in() -> None:
    uri = f"tcp:127.0.0.1:{free_port()}"
    dst, src = start(["--workload", DIRTY], uri)
    with dst, src:
        assert dst.execute("migrate_set_capability postcopy-blocktime on", 10) == ""
        # The background stream at 1 MiB/s: the destination's vCPU, writing all over RAM
        # from its first slice, meets pages that have not arrived long before it ends.
        assert src.execute("migrate_set_parameter max-postcopy-bandwidth 1M", 10) == ""
        assert src.execute("migrate_start_postcopy", 10) == ""
        status(dst, "postcopy-active", "completed")
        assert dst.execute("info status", 10) == "VM status: running\n"
        src.qmp.poll(
            "query-migrate", lambda r: r.get("ram", {}).get("postcopy-requests", 0) > 0, TIMEOUT
        )
        assert src.execute("migrate_set_parameter max-postcopy-bandwidth 0", 10) == ""
        done = status(src, "completed", "failed")  # the digest matched, or this fails
        assert done["status"] == "completed", done
        info = status(dst, "completed")
        assert info["postcopy-vcpu-blocktime"] == [info["postcopy-blocktime"]]
        lines = dst.execute("info migrate", 10).splitlines()
        assert lines[-2].startswith("postcopy blocktime: ")
        assert lines[-1] == f"postcopy vcpu blocktime: {info['postcopy-blocktime']}"


def test_destination_killed_in_postcopy_leaves_the_source_paused() -> None:
    uri = f"tcp:127.0.0.1:{free_port()}"
    dst, src = start([], uri)
    with dst, src:
        assert src.execute("migrate_set_parameter max-postcopy-bandwidth 64K", 10) == ""
        assert src.execute("migrate_start_postcopy", 10) == ""
        status(dst, "postcopy-active")
        dst.kill()
        status(src, "postcopy-paused")
        assert src.read_stderr(1, 10) == [
            "qemu-hmp: Detected IO failure for postcopy. Migration paused."
        ]
        assert src.execute("info status", 10) == "VM status: paused (finish-migrate)\n"
        # The guest ran on the destination since the switch: it must not restart here.
        assert src.execute("cont", 10) == "Error: Migration is not finalized yet\n"
        lines = src.execute("info migrate", 10).splitlines()
        assert "Migration status: postcopy-paused" in lines
