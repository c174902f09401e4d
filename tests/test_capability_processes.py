"""zero-copy-send with multifd and background-snapshot between separate qemu-hmp processes.

zero-copy: the destination's RAM equals the source's byte for byte (pmemsave), and `info
migrate`'s fallbacks line counts exactly the channel flushes at which the kernel said it had
copied (each channel logs what its error queue reported, in the source's -D log).
background-snapshot: the guest is stopped for a pmemsave, so the start-time RAM is known by
construction; the snapshot starts there and is held by a FIFO gate while the resumed guest
visibly writes; restored in a new process, RAM equals that pmemsave exactly.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from engine.guest import PAGE_SIZE
from hmp.harness.endpoint import Endpoint, free_port

MiB = 1 << 20
SIZE = 32 * MiB
CHANNEL_LOG = re.compile(
    r"multifdsend_\d+: (\d+) zero-copy sends, (\d+) completed, (\d+) copied by the kernel; "
    r"(\d+) flushes saw a copy"
)
FALLBACKS = re.compile(r"Zero-copy-send fallbacks happened: (\d+) times")
SYNCS = re.compile(r"dirty sync count: (\d+)")


def pmemsave(endpoint: Endpoint, path: Path) -> bytes:
    assert endpoint.execute(f'pmemsave 0 {SIZE:#x} "{path}"', 30) == ""
    return path.read_bytes()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_zero_copy_multifd_between_two_processes(tmp_path: Path) -> None:
    uri = f"tcp:127.0.0.1:{free_port()}"
    log = tmp_path / "src.log"
    src_argv = ["qemu-hmp", "-m", "32M", "--workload", "random", "--seed", "12", "-D", str(log)]
    with (
        Endpoint(["qemu-hmp", "-m", "32M", "-incoming", uri], name="dst") as dst,
        Endpoint(src_argv, name="src") as src,
    ):
        dst.wait_ready(60)
        src.wait_ready(60)
        for side in (dst, src):
            assert side.execute("migrate_set_capability multifd on", 10) == ""
        assert src.execute("migrate_set_capability zero-copy-send on", 10) == ""
        assert src.execute(f"migrate {uri}", 60) == ""  # blocks until done
        info = src.execute("info migrate", 10)
        assert "Migration status: completed\n" in info
        assert info.splitlines()[-1].startswith("Zero-copy-send fallbacks happened: ")
        fallbacks = int(FALLBACKS.findall(info)[0])
        syncs = int(SYNCS.findall(info)[0])
        assert src.execute("info status", 10) == "VM status: paused (postmigrate)\n"
        assert dst.execute("info status", 10) == "VM status: running\n"
        assert digest(pmemsave(src, tmp_path / "src.bin")) == digest(
            pmemsave(dst, tmp_path / "dst.bin")
        )
        src.execute("quit", 10)  # every channel thread has ended and logged
    channels = [tuple(map(int, m)) for m in CHANNEL_LOG.findall(log.read_text())]
    assert len(channels) == 2  # multifd-channels' default
    for sends, completed, copied, flushes in channels:
        assert sends > 0 and completed == sends  # every buffer held until the kernel let go
        assert 0 < copied <= completed  # loopback hands the pages to a socket: it copies
        assert 0 < flushes <= syncs + 1  # at most one per multifd sync (the last one too)
    assert fallbacks == sum(flushes for *_, flushes in channels)


def test_background_snapshot_restores_its_start_time_ram(tmp_path: Path) -> None:
    writer = ["--workload", "random-writer,rate=20000,wss=8M", "--seed", "6"]
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    held = os.open(gate, os.O_RDWR)  # both ends: a byte written waits for the command
    try:
        src_argv = ["qemu-hmp", "-m", "32M", *writer]
        with Endpoint(src_argv, name="src", cwd=str(tmp_path), qmp=True) as src:
            src.wait_ready(60)
            assert src.execute("stop", 10) == ""
            at_start = pmemsave(src, tmp_path / "start.bin")  # RAM at the snapshot's instant
            nonzero = sum(
                at_start[i : i + PAGE_SIZE].count(0) != PAGE_SIZE for i in range(0, SIZE, PAGE_SIZE)
            )
            assert nonzero * PAGE_SIZE > 16 * 65536  # the stream cannot fit in a pipe: it waits
            assert src.execute("migrate_set_capability background-snapshot on", 10) == ""
            save = 'migrate -d "exec:head -c 1 gate > /dev/null; cat > snap.bin"'
            assert src.execute(save, 10) == ""
            src.qmp.poll("query-migrate", lambda r: r.get("status") == "active", 30)
            assert src.execute("cont", 10) == ""
            # Held by the gate: the snapshot is active while the running guest changes RAM
            # (bounded: the writer's first stores come within its first tick).
            for _ in range(100):
                assert "Migration status: active\n" in src.execute("info migrate", 10)
                if pmemsave(src, tmp_path / "now.bin") != at_start:
                    break
            else:
                raise AssertionError("the guest never wrote while the snapshot was held")
            os.write(held, b"\n")  # the gate opens
            src.qmp.poll("query-migrate", lambda r: r.get("status") == "completed", 60)
            assert src.execute("info status", 10) == "VM status: running\n"
            assert pmemsave(src, tmp_path / "after.bin") != at_start  # it wrote on
            src.execute("quit", 10)
    finally:
        os.close(held)
    argv = ["qemu-hmp", "-m", "32M", "-S", "-incoming", "exec:cat snap.bin"]
    with Endpoint(argv, name="dst", cwd=str(tmp_path), qmp=True) as dst:
        dst.wait_ready(60)
        dst.qmp.poll("query-migrate", lambda r: r.get("status") == "completed", 60)
        assert dst.execute("info status", 10) == "VM status: paused\n"  # as QEMU 7.2's
        assert digest(pmemsave(dst, tmp_path / "dst.bin")) == digest(at_start)
