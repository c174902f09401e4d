"""QEMU 11.1's `file:` URI without mapped-ram (engine/file_stream.py): the plain migration
stream saved into a file from its offset on, and restored by an `-incoming defer` destination.

QEMU 11.1's texts for bad paths, offsets and files that are no stream are replayed from its
recordings (tests/data/qemu-11.1/migrate_errors, migrate_file_plain, incoming_file_*,
migrate_file); these tests hold the mechanism: what is saved is what is restored (digest
checked), a damaged file never runs a guest, a failed write or a cancel leaves the guest
running here.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shlex
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from engine import file_stream, wire
from engine.errors import MigrationError
from engine.machine import Machine, MachineOptions
from engine.params11 import TABLE_11_1
from engine.state import MigrationStatus, RunState
from hmp.cli import main as cli_main
from tests import test_cli_oracle as cli_oracle
from tests import test_qmp_oracle as seven
from tests import test_qmp_oracle11 as oracle11
from tests.qmp_helpers import RawClient, endpoint, options
from tests.test_machine import Watch
from tests.test_thread_leaks import fds, join_migration_threads

MiB = 1 << 20
DATA11 = Path(__file__).parent / "data" / "qemu-11.1"
WRITER = "random-writer,rate=2000,wss=1M"


def machine(machines: list[Machine], **kw: object) -> Machine:
    m = Machine(MachineOptions(ram_size=32 * MiB, config_table=TABLE_11_1, **kw))  # type: ignore[arg-type]
    m.set_capabilities({"events": True})
    machines.append(m)
    return m


def ram_hash(m: Machine) -> str:
    return hashlib.sha256(m.ram.buf).hexdigest()


def save(machines: list[Machine], path: Path, offset: int = 0, workload: str = WRITER) -> str:
    """A running guest saved into ``path``: the hash of its RAM as saved."""
    src = machine(machines, workload=workload)
    src.migrate(f"file:{path},offset={offset}")
    info = src.wait_migration(30)
    assert info.status is MigrationStatus.COMPLETED, info
    assert src.query_status().status is RunState.POSTMIGRATE  # QEMU's, after a save
    return ram_hash(src)


def load(dst: Machine, uri: str) -> MigrationStatus:
    """`migrate_incoming URI` on ``dst``: how it ended (waits on its events, bounded)."""
    ended = threading.Event()
    dst.events.subscribe(
        lambda name, data: (
            ended.set()
            if name == "MIGRATION" and data["status"] in ("completed", "failed")
            else None
        )
    )
    dst.migrate_incoming(uri)
    assert ended.wait(30), dst.query_migrate()
    status = dst.query_migrate().status
    assert status is not None
    return status


def test_a_saved_stream_restores_the_same_ram_from_its_offset(
    machines: list[Machine], tmp_path: Path
) -> None:
    path = tmp_path / "x.img"
    saved = save(machines, path, offset=4095)  # no alignment without mapped-ram, as in 11.1
    data = path.read_bytes()
    assert data[:4095] == bytes(4095)  # before the offset: nothing was written
    assert data[4095 : 4095 + len(wire.MAGIC)] == wire.MAGIC
    dst = machine(machines, incoming="defer")
    assert load(dst, f"file:{path},offset=4095") is MigrationStatus.COMPLETED
    assert dst.query_status().status is RunState.RUNNING
    assert ram_hash(dst) == saved


def test_a_save_cuts_the_file_at_its_offset(machines: list[Machine], tmp_path: Path) -> None:
    """QEMU 11.1's ftruncate to the offset: what lies before it stays, the rest is the save."""
    path = tmp_path / "x.img"
    path.write_bytes(b"\xff" * (64 * MiB))  # longer than any save of 32 MiB of RAM
    save(machines, path, offset=4096)
    data = path.read_bytes()
    assert len(data) < 64 * MiB and data[:4096] == b"\xff" * 4096
    assert data[4096 : 4096 + len(wire.MAGIC)] == wire.MAGIC
    dst = machine(machines, incoming="defer")
    assert load(dst, f"file:{path},offset=4096") is MigrationStatus.COMPLETED


@pytest.mark.parametrize("damage", ["cut", "flipped"])
def test_a_damaged_file_fails_the_restore_and_the_guest_never_runs(
    machines: list[Machine], tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "x.img"
    save(machines, path, workload="idle")  # nothing re-sent: a later copy cannot mend a page
    data = bytearray(path.read_bytes())
    if damage == "cut":
        del data[len(data) // 2 :]
    else:
        data[len(data) // 2] ^= 0x01  # inside a page (or its framing): the digest or the reader
    path.write_bytes(bytes(data))
    dst = machine(machines, incoming="defer")
    assert load(dst, f"file:{path}") is MigrationStatus.FAILED
    error = dst.query_migrate().error_desc
    assert error is not None and error.startswith("load of migration failed: ")
    assert dst.query_status().status is RunState.INMIGRATE


def test_a_file_of_another_ram_size_is_refused(machines: list[Machine], tmp_path: Path) -> None:
    path = tmp_path / "x.img"
    save(machines, path)
    dst = Machine(MachineOptions(ram_size=64 * MiB, config_table=TABLE_11_1, incoming="defer"))
    machines.append(dst)
    dst.set_capabilities({"events": True})
    assert load(dst, f"file:{path}") is MigrationStatus.FAILED
    assert "Length mismatch" in (dst.query_migrate().error_desc or "")
    assert dst.query_status().status is RunState.INMIGRATE


def test_a_write_the_file_refuses_fails_and_the_guest_runs_on(
    machines: list[Machine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: memoryview) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(file_stream, "_write_all", full)  # a disk that fills up
    src = machine(machines, workload=WRITER)
    src.migrate(f"file:{tmp_path / 'x.img'}")
    info = src.wait_migration(30)
    assert info.status is MigrationStatus.FAILED
    assert info.error_desc == "Unable to write to file: No space left on device"
    assert src.query_status().status is RunState.RUNNING


def test_a_cancelled_save_leaves_the_guest_running(machines: list[Machine], tmp_path: Path) -> None:
    src = machine(machines, workload=WRITER)
    src.set_parameters({"max-bandwidth": 1 * MiB})  # 32 MiB take far longer than the test
    watch = Watch(src)
    src.migrate(f"file:{tmp_path / 'x.img'}")
    watch.wait_status("active")
    src.migrate_cancel()
    assert src.wait_migration(10).status is MigrationStatus.CANCELLED
    assert src.query_status().status is RunState.RUNNING
    assert not [t for t in threading.enumerate() if t.name == "file_sink"]


def test_multifd_needs_mapped_ram_and_changes_nothing(
    machines: list[Machine], tmp_path: Path
) -> None:
    """QEMU 11.1 refuses before any status is set (recorded: migrate_file_plain)."""
    src = machine(machines)
    src.set_capabilities({"multifd": True})
    with pytest.raises(MigrationError, match=r"^Migration requires multi-channel URIs"):
        src.migrate(f"file:{tmp_path / 'x.img'}")
    assert src.query_migrate().status is None
    assert not (tmp_path / "x.img").exists()


def test_over_qmp_a_bad_path_is_qemu_11_1s(tmp_path: Path) -> None:
    """The `file:/nonexistent/x` exchange of tests/data/qemu-11.1/qmp/uris.jsonl (the events
    setup, failing, failed before the error; the status keeps it), replayed as recorded."""
    records = oracle11.load("uris")
    wanted = ("qmp_capabilities", "migrate-set-capabilities", "file:/nonexistent/x")
    steps = oracle11.steps(records)
    first = next(i for i, (text, _) in enumerate(steps) if wanted[2] in text)
    chosen = [s for s in steps[:first] if any(w in s[0] for w in wanted)] + steps[first : first + 2]
    assert [text.count("query-migrate") for text, _ in chosen] == [0, 0, 0, 1]
    opts = replace(options(records[0]["argv"]), config_table=TABLE_11_1)
    with endpoint(tmp_path, opts) as server:
        client = RawClient(server.spec.address.path)
        try:
            client.read()  # the greeting
            for text, expected in chosen:
                client.send(text)
                got = seven._collect(client, expected)
                assert oracle11.comparable(got) == oracle11.comparable(expected), text
        finally:
            client.close()


@pytest.mark.parametrize("end", ["completed", "cancelled", "refused"])
def test_a_save_and_its_restore_give_back_every_thread_and_descriptor(
    tmp_path: Path, end: str
) -> None:
    """The sink's and the source's copier threads, the file and the socket pairs: all gone
    once the machines are closed, however the save ended."""
    before_fds, before_threads = fds(), {t.name for t in threading.enumerate()}
    src = Machine(MachineOptions(ram_size=32 * MiB, config_table=TABLE_11_1))
    src.set_capabilities({"events": True})
    watch = Watch(src)
    if end == "refused":  # the file would not be created
        with pytest.raises(MigrationError, match=r"^Could not create"):
            src.migrate(f"file:{tmp_path}")
    elif end == "cancelled":
        src.set_parameters({"max-bandwidth": 1 * MiB})
        src.migrate(f"file:{tmp_path / 'x.img'}")
        watch.wait_status("active")
        src.migrate_cancel()
        assert src.wait_migration(10).status is MigrationStatus.CANCELLED
    else:
        src.migrate(f"file:{tmp_path / 'x.img'}")
        assert src.wait_migration(30).status is MigrationStatus.COMPLETED
        dst = Machine(MachineOptions(ram_size=32 * MiB, config_table=TABLE_11_1, incoming="defer"))
        dst.set_capabilities({"events": True})
        assert load(dst, f"file:{tmp_path / 'x.img'}") is MigrationStatus.COMPLETED
        dst.close()
    src.close()
    assert join_migration_threads() == []
    left = {t.name for t in threading.enumerate()} - before_threads
    assert not {name for name in left if name.startswith(("file_sink", "file_source"))}
    assert fds() <= before_fds


CLI = cli_oracle.load(DATA11 / "cli.argv.out")


@pytest.mark.parametrize("case", CLI, ids=[" ".join(c.options) for c in CLI])
def test_an_incoming_file_that_cannot_be_read_is_qemu_11_1s_error(
    case: cli_oracle.Case,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """tests/data/qemu-11.1/cli.argv.out (record_cli.py): `-incoming file:` on the command
    line, its error named after the option, exit status 1."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("quit\n"))
    status = cli_main(["--qemu", "11.1", *cli_oracle.RECORDER.argv(case.options)])
    assert (capsys.readouterr().err.splitlines(), status) == (case.stderr, case.status)


def test_every_11_1_command_line_was_recorded() -> None:
    cases = [shlex.split(line) for line in (DATA11 / "cases" / "cli.argv").read_text().splitlines()]
    assert [case.options for case in CLI] == cases
