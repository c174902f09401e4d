"""exec: URIs: save a guest through a shell command and restore it (engine/command.py).

Two processes: save, quit, restore in a fresh process, and the restored RAM is the saved RAM
byte for byte. In one process: commands that fail, exit early or hand back nothing, garbage
or a truncated stream fail the migration with a reason, and lose nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import select
import shlex
from pathlib import Path

import pytest
from test_machine import Watch, ram_hash

from engine.errors import ReportedFailure
from engine.machine import Machine, MachineOptions
from engine.state import MigrationStatus, RunState
from hmp.harness.endpoint import Endpoint

MiB = 1 << 20


def guest_hash(endpoint: Endpoint, path: Path, size: int) -> str:
    assert endpoint.execute(f'pmemsave 0 {size:#x} "{path}"', 30) == ""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_save_quit_restore_between_two_processes(tmp_path: Path) -> None:
    size = 64 * MiB
    writer = ["--workload", "random-writer,rate=5000,wss=16M", "--seed", "11"]
    with Endpoint(["qemu-hmp", "-m", "64M", *writer], name="src", cwd=str(tmp_path)) as src:
        src.wait_ready(60)
        assert src.execute('migrate "exec:gzip -c > guest.gz"', 60) == ""  # blocks until done
        assert "Migration status: completed\n" in src.execute("info migrate", 10)
        assert src.execute("info status", 10) == "VM status: paused (postmigrate)\n"
        saved = guest_hash(src, tmp_path / "src.bin", size)
        src.execute("quit", 10)
    argv = ["qemu-hmp", "-m", "64M", "-S", "-incoming", "exec:gzip -dc guest.gz"]
    with Endpoint(argv, name="dst", cwd=str(tmp_path), qmp=True) as dst:
        dst.wait_ready(60)
        dst.qmp.poll("query-migrate", lambda r: r.get("status") == "completed", 60)
        assert dst.execute("info status", 10) == "VM status: paused\n"  # as QEMU 7.2's
        assert guest_hash(dst, tmp_path / "dst.bin", size) == saved
        assert dst.execute("cont", 10) == ""
        assert dst.execute("info status", 10) == "VM status: running\n"


def source(machines: list[Machine]) -> Machine:
    m = Machine(MachineOptions(ram_size=8 * MiB, workload="random", seed=4))
    m.set_capabilities({"events": True})
    machines.append(m)
    return m


def restore(machines: list[Machine], command: str) -> tuple[Machine, Watch]:
    """A destination restoring from ``exec:COMMAND`` (deferred, so every event is seen)."""
    m = Machine(MachineOptions(ram_size=8 * MiB, incoming="defer"))
    machines.append(m)
    watch = Watch(m)
    m.set_capabilities({"events": True})
    m.migrate_incoming(f"exec:{command}")
    return m, watch


def save(m: Machine, command: str) -> str | None:
    """Run ``migrate exec:COMMAND`` to its end; the failure text, or None."""
    m.migrate(f"exec:{command}")
    info = m.wait_migration(60)
    return info.error_desc if info.status is MigrationStatus.FAILED else None


def test_machine_round_trip_and_the_stream_holds_the_digest(
    machines: list[Machine], tmp_path: Path
) -> None:
    src = source(machines)
    saved = tmp_path / "guest.bin"
    assert save(src, f"cat > {shlex.quote(str(saved))}") is None
    assert src.vm.state is RunState.POSTMIGRATE
    # The saved stream ends with DONE: the run state and the digest the restore checks.
    assert b'"digest"' in saved.read_bytes()[-200:]
    dst, watch = restore(machines, f"cat {shlex.quote(str(saved))}")
    watch.wait_status("completed")
    assert ram_hash(dst) == ram_hash(src)
    assert dst.vm.state is RunState.RUNNING  # the source ran: so does the restored guest
    assert dst.query_migrate().socket_address is None  # no address to show: QEMU shows none


@pytest.mark.parametrize(
    "command",
    ["false", "cat > /nonexistent/x", "head -c 1000 > /dev/null"],
    ids=["false", "unwritable", "exits-early"],
)
def test_a_command_that_stops_reading_fails_the_save(machines: list[Machine], command: str) -> None:
    src = source(machines)
    before = ram_hash(src)
    assert save(src, command) == "Unable to write to command: Broken pipe"  # QEMU's text
    assert src.vm.state is RunState.RUNNING
    assert ram_hash(src) == before


def test_a_command_that_fails_after_reading_everything_fails_the_save(
    machines: list[Machine],
) -> None:
    """QEMU says completed here (it never looks at the status); a save that may not be on
    disk must not say so."""
    src = source(machines)
    assert (
        save(src, "cat > /dev/null; exit 3")
        == "the command 'cat > /dev/null; exit 3' exited with status 3"
    )
    assert src.vm.state is RunState.RUNNING
    # The guest is still here, and a save to a working command then completes.
    assert save(src, "cat > /dev/null") is None


def saved_stream(machines: list[Machine], tmp_path: Path) -> bytes:
    src = source(machines)
    path = tmp_path / "guest.gz"
    assert save(src, f"gzip -c > {shlex.quote(str(path))}") is None
    return gzip.decompress(path.read_bytes())


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("empty", "migration stream ended before its header"),
        ("garbage", "not a qemu-hmp migration stream (magic b'this')"),
        ("truncated", "truncated stream"),  # the cut falls inside a record
        (
            "fails",
            "migration stream ended before its header; the command 'exit 3' exited with status 3",
        ),
    ],
)
def test_a_bad_restore_fails_with_its_reason_and_never_runs(
    machines: list[Machine], tmp_path: Path, name: str, reason: str
) -> None:
    stream = saved_stream(machines, tmp_path)
    files = {
        "garbage": b"this is not a migration stream\n" * 100,
        "truncated": stream[: len(stream) // 2],
    }
    if name in files:
        (tmp_path / name).write_bytes(files[name])
    command = {"empty": "true", "fails": "exit 3"}.get(name, f"cat {tmp_path / name}")
    dst, watch = restore(machines, command)
    watch.wait_status("failed")
    info = dst.query_migrate()
    # Where the cut falls between two records, the reader says so in other words.
    cut_between = "migration stream ended before completion"
    assert info.error_desc == reason or (name == "truncated" and info.error_desc == cut_between)
    assert dst.vm.state is RunState.INMIGRATE
    assert watch.statuses() == ["setup", "active", "failed"]  # run once: nothing listens again


def test_a_corrupted_page_in_a_saved_stream_fails_the_digest(
    machines: list[Machine], tmp_path: Path
) -> None:
    stream = bytearray(saved_stream(machines, tmp_path))
    stream[len(stream) // 2] ^= 0x01  # inside a random page
    (tmp_path / "bad").write_bytes(stream)
    dst, watch = restore(machines, f"cat {tmp_path / 'bad'}")
    watch.wait_status("failed")
    assert dst.query_migrate().error_desc == (
        "RAM digest mismatch: destination memory differs from the source"
    )
    assert dst.vm.state is RunState.INMIGRATE


def test_exec_refuses_multifd(machines: list[Machine]) -> None:
    src = source(machines)
    src.set_capabilities({"multifd": True})
    watch = Watch(src)
    with pytest.raises(ReportedFailure, match=r"^multifd is not supported by current protocol$"):
        src.migrate("exec:cat > /dev/null")
    info = src.query_migrate()
    assert (info.status, info.error_desc) == (MigrationStatus.FAILED, None)  # as QEMU 7.2's
    assert watch.statuses() == ["setup", "failed"]
    assert src.vm.state is RunState.RUNNING


def test_quit_during_a_restore_kills_the_command(machines: list[Machine], tmp_path: Path) -> None:
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # opened first: the echo cannot block
    try:
        dst, _ = restore(machines, f"echo $$ > {fifo}; exec sleep 600")
        assert select.select([reader], [], [], 30)[0], "the command never started"
        pid = int(os.read(reader, 64))
    finally:
        os.close(reader)
    machines.remove(dst)
    dst.close()  # bounded: the command is killed and reaped, not waited for
    assert not Path(f"/proc/{pid}").exists()
