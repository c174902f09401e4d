"""Replay the two-endpoint migrations recorded from QEMU 11.1 (tests/data/qemu-11.1/migrate_*)
between two machines in the 11.1 dialect: every command's output in QEMU 11.1's layout, line
for line, with the figures of a running migration matched by pattern (sizes as ``SIZE``,
other numbers as ``N``; the optional ``downtime_bytes`` and ``dirty`` figures left out):
times, rates and counts are this run's.

The source's guest is ``$IMAGE``'s 8192 non-zero pages at 1 MiB, as the recorder's; where
QEMU ran ``-kernel $DIRTIER`` (a guest writing 256 pages for ever), ours runs a
random-writer over 1 MiB. "During" is the recorded `max-bandwidth 8M`; a step recorded in a
state waits (on the machine's events, bounded) until ours is in that state too.
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from engine.machine import Loader, Machine, MachineOptions
from engine.params11 import TABLE_11_1
from hmp.monitor.session import Monitor
from tests.test_machine import Watch

DATA = Path(__file__).parent / "data" / "qemu-11.1"
CASES = [
    "migrate_plain",
    "migrate_multifd_zstd",
    "migrate_cancel",
    "migrate_xbzrle",
    "migrate_auto_converge",
    "migrate_mapped_ram",
    "migrate_file",
    "migrate_switchover_ack",
    "migrate_switchover_ack_src",
    "migrate_switchover_ack_dst",
    "migrate_switchover_ack_plain_dst",
]
# What stands for QEMU's `-kernel $DIRTIER`: a writer over 1 MiB, or for auto-converge one
# that dirties faster than 8 MiB/s sends, so that the throttle starts as it did in QEMU.
DIRTIERS = {"migrate_auto_converge": "random-writer,rate=25000,wss=3M"}
POLL_S = 60.0
SIZE = re.compile(r"\d+(\.\d+)? (B|KiB|MiB|GiB)\b")
NUMBER = re.compile(r"\d+(\.\d+)?")
# Printed only when not zero, and whether they are depends on the guest and the timing (what
# is dirty at the stop): render11's own tests check the rule.
OPTIONAL = re.compile(r", (downtime_bytes|dirty)=\d+")
STATUS = re.compile(r"^Status: \t\t(\w+)", re.MULTILINE)
MiB = 1 << 20


@dataclass
class Step:
    endpoint: str
    command: str
    output: str = ""
    until: str | None = None
    stderr: list[str] = field(default_factory=list)


def load(path: Path) -> tuple[dict[str, list[str]], list[Step]]:
    argv: dict[str, list[str]] = {}
    steps: list[Step] = []
    endpoint = ""
    for line in path.read_text().splitlines():
        if line.startswith("# argv: "):
            name, _, rest = line.removeprefix("# argv: ").partition(": ")
            argv[name] = rest.split()
        elif line.startswith("# endpoint: "):
            endpoint = line.removeprefix("# endpoint: ")
        elif line.startswith("(qemu) "):
            steps.append(Step(endpoint, line.removeprefix("(qemu) ")))
        elif line.startswith("# polled until: "):
            steps[-1].until = line.removeprefix("# polled until: ")
        elif line.startswith("# stderr: "):
            steps[-1].stderr.append(line[10:])
        elif line.startswith(("# banner: ", "# exited: ", "# file: ")):
            pass
        else:
            steps[-1].output += line + "\n"
    return argv, steps


def pattern(text: str) -> str:
    """A recorded or measured output with its figures generalised."""
    return NUMBER.sub("N", SIZE.sub("SIZE", OPTIONAL.sub("", text)))


def options(argv: list[str], image: Path, dirtier: str) -> MachineOptions:
    opts: dict[str, object] = {"config_table": TABLE_11_1}
    it = iter(argv)
    for arg in it:
        value = next(it)
        if arg == "-m":
            opts["ram_size"] = int(value) * MiB
        elif arg == "-incoming":
            opts["incoming"] = "tcp:127.0.0.1:0" if value.startswith("tcp:") else value
        elif arg == "-device":
            opts["loaders"] = (Loader(str(image), 0x100000),)
        elif arg == "-kernel":
            opts["workload"] = dirtier
        else:
            raise AssertionError(f"unexpected option {arg}")
    return MachineOptions(**opts)  # type: ignore[arg-type]


@pytest.mark.parametrize("case", CASES)
def test_migration_matches_qemu_11_1(case: str, tmp_path: Path) -> None:
    argv, steps = load(DATA / f"{case}.txt")
    image = tmp_path / "image"
    pages = np.random.default_rng(11).integers(1, 255, 32 * MiB, dtype=np.uint8)
    image.write_bytes(pages.tobytes())  # 8192 pages, none zero, as the recorder's image
    machines: dict[str, Machine] = {}
    monitors: dict[str, tuple[Monitor, io.StringIO]] = {}
    watches: dict[str, Watch] = {}
    port = ""
    failures: list[str] = []
    try:
        for name in ("dst", "src"):
            dirtier = DIRTIERS.get(case, "random-writer,rate=2000,wss=1M")
            machine = Machine(options(argv[name], image, dirtier))
            machines[name] = machine
            watches[name] = Watch(machine)
            machine.set_capabilities({"events": True})  # for the watch; HMP prints none
            out = io.StringIO()
            monitors[name] = (Monitor(machine, out, io.StringIO()), out)
        for step in steps:
            mon, out = monitors[step.endpoint]
            command = step.command.replace("$PORT", port or "0").replace("$SCRATCH", str(tmp_path))
            recorded = STATUS.match(step.output)
            if recorded and recorded.group(1) != "setup":  # wait until ours is there too
                watches[step.endpoint].wait_status(recorded.group(1), timeout=60)
            machine, deadline = machines[step.endpoint], time.monotonic() + POLL_S
            while "Time (ms):" in step.output and not machine.query_migrate().total_time:
                assert time.monotonic() < deadline, f"{step.command}: no total time"
                machine.wait_migration(0.002)  # QEMU prints the line once a ms has passed
            deadline = time.monotonic() + POLL_S
            while True:  # an `@until` is polled, as the recorder did, within a bound
                out.seek(0), out.truncate()
                mon.execute(command)
                if not step.until or re.search(step.until, out.getvalue(), re.MULTILINE):
                    break
                assert time.monotonic() < deadline, f"{command}: no {step.until!r} in time"
                machines["src"].wait_migration(0.1)  # returns early if the migration ends
            if not port and (address := machines["dst"].query_migrate().socket_address):
                port = address[0].rsplit(":", 1)[1]
            expected = step.output.replace("$PORT", port).replace("$SCRATCH", str(tmp_path))
            if pattern(out.getvalue()) != pattern(expected):
                failures.append(
                    f"{step.endpoint}: (qemu) {command}\n--- qemu\n{expected}--- ours\n"
                    f"{out.getvalue()}"
                )
    finally:
        for machine in machines.values():
            machine.close()
    assert not failures, "\n".join(failures)
