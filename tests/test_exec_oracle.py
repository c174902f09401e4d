"""Replay QEMU 7.2 saving to and restoring from exec: commands (tests/data/qemu-7.2/exec,
recorded by its record_exec.py) on our machines: outputs byte for byte (`info migrate` of a
completed save with its figures masked), stderr lines as QEMU's (ours say ``qemu-hmp:``).

Where QEMU's behaviour is not kept, the test says so: a command that read everything and
then failed (`exit 3`) completes in QEMU, which never looks at its status; here it fails.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from info_layout import layout
from test_machine import ram_hash

from engine.machine import Machine, MachineOptions
from hmp.monitor import Monitor

DATA = Path(__file__).parent / "data" / "qemu-7.2" / "exec"
MiB = 1 << 20
QEMU_PREFIX = "# stderr: qemu-system-x86_64: "
RAM_FAILED = "failed to save SaveStateEntry with id(name): 2(ram): -5"


def steps(text: str) -> list[tuple[str, str, list[str]]]:
    """(command, output, QEMU's own stderr lines) of each recorded step."""
    out: list[tuple[str, str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("(qemu) "):
            out.append((line.removeprefix("(qemu) "), "", []))
        elif line.startswith(QEMU_PREFIX) and out:
            out[-1][2].append(line.removeprefix(QEMU_PREFIX))
        elif out and not line.startswith("# "):
            out[-1] = (out[-1][0], out[-1][1] + line + "\n", out[-1][2])
    return out


class Side:
    def __init__(self, opts: MachineOptions, cwd: Path) -> None:
        self.cwd = cwd
        self.stderr: list[str] = []
        self._lock = threading.Lock()
        self.machine = Machine(opts, notify=self._note)
        self.out, self.err = io.StringIO(), io.StringIO()
        self.mon = Monitor(self.machine, self.out, self.err)

    def _note(self, message: str) -> None:
        with self._lock:
            self.stderr.append(message)

    def run(self, command: str) -> tuple[str, list[str]]:
        """The output, and every stderr line since the last command (ours and the engine's)."""
        self.out.seek(0), self.out.truncate()
        self.mon.execute(command)
        with self._lock:
            notes, self.stderr = self.stderr, []
        errs = [x.removeprefix("qemu-hmp: ") for x in self.err.getvalue().splitlines()]
        self.err.seek(0), self.err.truncate()
        return self.out.getvalue(), notes + errs


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)  # exec: commands run where the recording's did
    yield tmp_path


def test_failed_saves_match_qemu(cwd: Path) -> None:
    src = Side(MachineOptions(ram_size=8 * MiB, workload="random", seed=2), cwd)
    ours_err: list[str] = []
    qemu_err: list[str] = []
    try:
        for command, expected, qemu_lines in steps((DATA / "failures.txt").read_text()):
            if "exit 3" in command:
                break  # where we differ on purpose: next test
            if command.startswith("info migrate"):
                src.machine.wait_migration(60)
            ours, err = src.run(command)
            assert ours == expected, command
            ours_err += err
            qemu_err += qemu_lines
    finally:
        src.machine.close()
    # Whether a write failure first says "failed to save SaveStateEntry…" depends on whether
    # the command died before or after the setup was written, in QEMU as here.
    assert [x for x in ours_err if x != RAM_FAILED] == [x for x in qemu_err if x != RAM_FAILED]
    assert RAM_FAILED in ours_err


def test_a_command_that_fails_after_reading_all_fails_here_completes_in_qemu(cwd: Path) -> None:
    recorded = steps((DATA / "failures.txt").read_text())
    i = next(i for i, (c, _, _) in enumerate(recorded) if "exit 3" in c)
    assert "Migration status: completed\n" in recorded[i + 1][1]  # QEMU's
    src = Side(MachineOptions(ram_size=8 * MiB, workload="random", seed=2), cwd)
    try:
        ours, err = src.run(recorded[i][0])
        reason = "the command 'cat > /dev/null; exit 3' exited with status 3"
        assert (ours, err) == ("", [reason, reason])
        assert src.run("info status")[0] == "VM status: running\n"
    finally:
        src.machine.close()


def test_save_and_restore_match_qemu(cwd: Path) -> None:
    text = (DATA / "save.txt").read_text()
    src_text, _, dst_text = text.partition("# endpoint: dst\n")
    src = Side(MachineOptions(ram_size=8 * MiB, workload="random", seed=2), cwd)
    try:
        for command, expected, _ in steps(src_text):
            ours, err = src.run(command)
            assert err == []
            if command == "info migrate":
                assert layout(ours) == layout(expected)
            else:
                assert ours == expected, command
        saved = ram_hash(src.machine)
    finally:
        src.machine.close()
    assert "-S -incoming exec:gzip -dc guest.gz" in dst_text.splitlines()[0]
    dst = Side(MachineOptions(ram_size=8 * MiB, incoming="defer", start_paused=True), cwd)
    try:
        done = threading.Event()
        dst.machine.events.subscribe(
            lambda name, data: done.set() if data.get("status") == "completed" else None
        )
        dst.machine.set_capabilities({"events": True})  # to wait on; QEMU's session never shows it
        assert dst.run('migrate_incoming "exec:gzip -dc guest.gz"') == ("", [])
        assert done.wait(60)
        for command, expected, _ in steps(dst_text):
            assert dst.run(command)[0] == expected, command
        assert (cwd / "dst.bin").read_bytes() == (cwd / "src.bin").read_bytes()  # QEMU's MiB
        assert ram_hash(dst.machine) == saved  # and all of RAM
    finally:
        dst.machine.close()


def test_multifd_to_a_command_fails_as_qemu_reports_it(cwd: Path) -> None:
    """QEMU's migrate_fd_connect reports multifd's refusal on the monitor, without "Error: ",
    and leaves the migration failed with no reason; the guest runs on."""
    src = Side(MachineOptions(ram_size=8 * MiB, workload="random", seed=2), cwd)
    try:
        for command, expected, qemu_lines in steps((DATA / "multifd.txt").read_text()):
            assert src.run(command) == (expected, qemu_lines), command
    finally:
        src.machine.close()
