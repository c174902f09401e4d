"""Replay QEMU 7.2's -uuid and validate-uuid (tests/data/qemu-7.2/uuid, recorded by its
record_uuid.py): `info uuid`, the destination's refusal of another UUID and its warning when
it has none, `info migrate` and `info status` on both sides afterwards, and the -uuid syntax
with QEMU's parse error.

Where the two differ by design: QEMU's destination exits on the refusal and its source then
fails on the broken socket ("Connection reset by peer"); ours answers with the reason, so the
source fails with QEMU's refusal text, and the destination listens again (README).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import hmp_replay
import pytest
from info_layout import layout
from qmp_helpers import RawClient, endpoint
from reports import Reports
from test_machine import ram_hash

from engine.machine import MachineOptions

DATA = Path(__file__).parent / "data" / "qemu-7.2" / "uuid"
MiB = 1 << 20
A = "12345678-1234-5678-9abc-def012345678"
B = "87654321-4321-8765-cba9-876543210fed"
QEMU_ERR = "# stderr: qemu-system-x86_64: "


def sides(text: str) -> dict[str, tuple[str, list[tuple[str, str]], list[str]]]:
    """Per endpoint: its argv, its (command, output) steps and QEMU's stderr messages."""
    out: dict[str, tuple[str, list[tuple[str, str]], list[str]]] = {}
    for name, part in zip(("src", "dst"), text.split("# endpoint: dst\n"), strict=True):
        argv, steps, errs = "", [], []
        for line in part.splitlines():
            if line.startswith("# argv: "):
                argv = line.removeprefix("# argv: ")
            elif line.startswith(QEMU_ERR):
                errs.append(line.removeprefix(QEMU_ERR))
            elif line.startswith("(qemu) "):
                steps.append((line.removeprefix("(qemu) "), ""))
            elif not line.startswith("# "):
                steps[-1] = (steps[-1][0], steps[-1][1] + line + "\n")
        out[name] = (argv, steps, errs)
    return out


class Side(hmp_replay.Side):
    def __init__(self, opts: MachineOptions) -> None:
        self.reports = Reports()
        super().__init__(opts, events=True, notify=self.reports)

    @property
    def notes(self) -> list[str]:
        return self.reports.lines


def uuid_of(argv: str) -> str | None:
    match = re.search(r"-uuid (\S+)", argv)
    return match.group(1) if match else None


@pytest.mark.parametrize("case", ["differ", "equal", "dst_unset", "src_unset"])
def test_validate_uuid_matches_qemu(case: str) -> None:
    recorded = sides((DATA / f"{case}.txt").read_text())
    src_argv, src_steps, _ = recorded["src"]
    dst_argv, dst_steps, dst_errs = recorded["dst"]
    dst = Side(MachineOptions(ram_size=8 * MiB, incoming="tcp:127.0.0.1:0", uuid=uuid_of(dst_argv)))
    src = Side(MachineOptions(ram_size=8 * MiB, workload="random", seed=8, uuid=uuid_of(src_argv)))
    try:
        address = dst.machine.query_migrate().socket_address
        assert address is not None
        assert dst.run(dst_steps[0][0]) == dst_steps[0][1]  # info uuid
        refused = case == "differ"
        for command, expected in src_steps:
            if command.startswith("info migrate"):
                src.machine.wait_migration(60)
                ours = src.run(command)
                if refused:
                    # QEMU's destination exited: its source says so (which errno is the
                    # kernel's choice, docs/reliability.md); ours says why.
                    broken = re.compile(r"Unable to write to socket: [A-Za-z ]+(?=\)\n)")
                    assert broken.search(expected)
                    reason = f"UUID received is {A} and local is {B}"
                    assert ours == broken.sub(reason, expected)
                    assert src.notes == [reason]
                else:
                    assert layout(ours) == layout(expected)
                continue
            assert src.run(command.replace("{port}", address[0].rsplit(":", 1)[1])) == expected
        if refused:
            dst.watch.wait_status("failed")
            assert dst_errs[0] == f"UUID received is {A} and local is {B}"  # QEMU's
            assert dst.notes == [f"load of migration failed: {dst_errs[0]}"]
            assert dst.run("info status") == "VM status: paused (inmigrate)\n"
            return
        dst.watch.wait_status("completed")
        for command, expected in dst_steps[1:]:
            assert dst.run(command) == expected, command
        assert dst.notes == dst_errs  # the warning when only the source has a UUID
        assert ram_hash(src.machine) == ram_hash(dst.machine)
    finally:
        src.machine.close()
        dst.machine.close()


def cli_cases() -> list[tuple[str, int, list[str], list[str]]]:
    """(value, exit status, stderr messages, stdout lines) QEMU gave for each -uuid."""
    cases: list[tuple[str, int, list[str], list[str]]] = []
    for line in (DATA / "cli.txt").read_text().splitlines():
        if line.startswith("# uuid: "):
            value, _, status = line.removeprefix("# uuid: ").rpartition(" exit: ")
            cases.append((eval(value), int(status), [], []))  # a repr the recorder wrote
        elif line.startswith(QEMU_ERR):
            cases[-1][2].append(line.removeprefix(QEMU_ERR))
        elif line.startswith("# stdout: "):
            cases[-1][3].append(line.removeprefix("# stdout: "))
    return cases


def test_uuid_option_matches_qemu() -> None:
    cases = cli_cases()
    assert len(cases) == 10
    for value, status, errs, outs in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "hmp", "-m", "8M", "-uuid", value],
            input="info uuid\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == status, value
        assert proc.stderr.splitlines() == [f"qemu-hmp: {e}" for e in errs], value
        assert proc.stdout.splitlines()[1:] == outs, value  # after the echoed command


def qmp_sessions() -> list[tuple[list[str], list[tuple[str, list[str]]]]]:
    """Each recorded QMP session: its argv, then each text sent and QEMU's raw lines."""
    sessions: list[tuple[list[str], list[tuple[str, list[str]]]]] = []
    for line in (DATA / "qmp.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "argv" in rec:
            sessions.append((rec["argv"], []))
        elif "send" in rec:
            sessions[-1][1].append((rec["send"], []))
        elif "raw" in rec:
            sessions[-1][1][-1][1].append(rec["raw"])
    return sessions


def test_query_uuid_matches_qemu(tmp_path: Path) -> None:
    sessions = qmp_sessions()
    assert len(sessions) == 2
    for i, (argv, exchanges) in enumerate(sessions):
        uuid = uuid_of(" ".join(argv))
        opts = MachineOptions(ram_size=4 * MiB, uuid=uuid.lower() if uuid else None)
        with endpoint(tmp_path, opts, name=f"q{i}"):
            client = RawClient(str(tmp_path / f"q{i}.sock"))
            try:
                client.line()  # the greeting
                for text, qemu in exchanges:
                    client.send(text)
                    assert [client.line() for _ in qemu] == qemu, text
            finally:
                client.close()
