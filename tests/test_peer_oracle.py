"""Replay the QEMU 7.2 sessions with a silent or never-reading peer (tests/data/qemu-7.2/peers,
recorded by its record_peers.py) against our monitor.

Outputs are compared byte for byte, ``{port}`` standing for the peer's or our listening port;
in stalled_source, whose `info migrate` figures are measurements, every number is masked
first. Where the two differ by design (docs/reliability.md), the replay checks what we do
instead, and nothing else:

* a destination whose peer hangs up reports ``load of migration failed: REASON`` as QEMU does
  (REASON is ours) and listens again, where QEMU exits;
* a silent peer is dropped after SETUP_TIMEOUT_S (QEMU waits for ever): each ``# peer: wait``
  recorded must be shorter, so ours still says what QEMU said at that point;
* a source that has sent nothing for a while says ``warning: migration: no progress for N s``
  (QEMU says nothing); the replay waits for that line where QEMU's recorder waited.
"""

from __future__ import annotations

import io
import re
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_machine import Watch
from test_stalls import Reports

from engine.destination import SETUP_TIMEOUT_S
from engine.machine import Machine, MachineOptions
from engine.state import MigrationStatus
from hmp.monitor import Monitor

DATA = Path(__file__).parent / "data" / "qemu-7.2" / "peers"
MiB = 1 << 20
STALL_S = 0.2
NUMBER = re.compile(r"\d+(\.\d+)?")
MASKED = {"stalled_source"}


@dataclass
class Step:
    kind: str  # "command" or "peer"
    text: str
    output: str = ""
    stderr: list[str] = field(default_factory=list)


def load(path: Path) -> tuple[list[str], list[Step], int | None]:
    """The QEMU options, the steps, and QEMU's exit status if it ended."""
    first, *lines = path.read_text().rstrip("\n").split("\n")
    steps: list[Step] = []
    status = None
    for line in lines:
        if line.startswith("(qemu) "):
            steps.append(Step("command", line.removeprefix("(qemu) ")))
        elif line.startswith("# peer: "):
            steps.append(Step("peer", line.removeprefix("# peer: ")))
        elif line.startswith("# stderr: qemu-system-x86_64: "):
            steps[-1].stderr.append(line.removeprefix("# stderr: qemu-system-x86_64: "))
        elif line.startswith("# exit: "):
            status = int(line.removeprefix("# exit: "))
        else:
            steps[-1].output += line + "\n"
    return first.removeprefix("# argv: ").split(), steps, status


class Replay:
    def __init__(self, case: str, opts: MachineOptions) -> None:
        self.case = case
        self.reports = Reports()
        self.out, self.err = io.StringIO(), io.StringIO()
        self.machine = Machine(opts, notify=self._report)
        self.mon = Monitor(self.machine, self.out, self.err)
        self.port = 0
        self.watch = Watch(self.machine)
        self.machine.set_capabilities({"events": True})

    def _report(self, line: str) -> None:
        self.mon.error_report(line)
        self.reports(line)

    def execute(self, command: str) -> tuple[str, list[str]]:
        self.out.seek(0), self.out.truncate(), self.err.seek(0), self.err.truncate()
        self.mon.execute(command.replace("{port}", str(self.port)))
        return self.output(), self.stderr()

    def output(self) -> str:
        text = self.out.getvalue().replace(f":{self.port}", ":{port}")
        return NUMBER.sub("N", text) if self.case in MASKED else text

    def stderr(self) -> list[str]:
        lines = self.err.getvalue().splitlines()
        self.err.seek(0), self.err.truncate()
        return [line.removeprefix("qemu-hmp: ") for line in lines]

    def expected(self, step: Step) -> str:
        return NUMBER.sub("N", step.output) if self.case in MASKED else step.output


def options(argv: list[str]) -> MachineOptions:
    """QEMU's options as ours; a loader of random data becomes our random workload."""
    if "-incoming" in argv:
        return MachineOptions(ram_size=16 * MiB, incoming="tcp:127.0.0.1:0")
    assert argv[:2] == ["-m", "128"] and argv[2] == "-device", argv
    return MachineOptions(ram_size=32 * MiB, workload="random", seed=51, stall_warning_s=STALL_S)


CASES = sorted(DATA.glob("*.txt"))


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_matches_qemu_with_a_peer(path: Path, stack: ExitStack) -> None:
    argv, steps, exit_status = load(path)
    replay = Replay(path.stem, options(argv))
    stack.callback(replay.machine.close)
    incoming = "-incoming" in argv
    if incoming:
        address = replay.machine.query_migrate().socket_address
        assert address is not None
        replay.port = int(address[0].rsplit(":", 1)[1])
    peer: socket.socket | None = None
    for step in steps:
        if step.kind == "command":
            output, stderr = replay.execute(step.text)
            if step.text == "migrate_cancel":
                replay.machine.wait_migration(10)
                stderr += replay.stderr()  # reported once the migration thread ended
            assert output == replay.expected(step), f"(qemu) {step.text}"
            assert stderr == step.stderr, f"(qemu) {step.text}"
        elif step.text == "connect":
            peer = stack.enter_context(socket.create_connection(("127.0.0.1", replay.port)))
            replay.watch.wait_status("active")
        elif step.text == "listen":
            server = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
            replay.port = server.getsockname()[1]
        elif step.text.startswith("wait ") and incoming:
            assert float(step.text.split()[1]) < SETUP_TIMEOUT_S  # ours still waits, as QEMU
        elif step.text.startswith("wait "):
            replay.reports.wait()  # by now QEMU's source had sent nothing for a while
            assert replay.stderr() == [f"warning: migration: no progress for {STALL_S:g} s"]
        elif step.text == "close":
            assert peer is not None
            peer.close()
            replay.watch.wait_status("failed")
            [ours] = replay.stderr()
            [qemu] = [line for line in step.stderr if line.startswith("load of migration failed: ")]
            assert ours.startswith("load of migration failed: ") and qemu
            info = replay.machine.query_migrate()  # where QEMU exits, ours listens again
            assert exit_status == 1 and info.status is MigrationStatus.FAILED
            assert info.socket_address == (f"tcp:127.0.0.1:{replay.port}",)
        else:
            raise AssertionError(f"unknown peer step {step.text}")
