"""-smp: QEMU 7.2's syntax and errors (tests/data/qemu-7.2/smp/cli.txt), a writer thread per
vCPU, postcopy's blocktime per vCPU and for all at once, and its `info migrate` rendering
(the two-vCPU postcopy itself is replayed from QEMU's recording by test_postcopy_oracle)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from engine import postcopy
from engine.guest import GuestRam
from engine.machine import Machine, MachineOptions
from hmp.cli import UsageError, parse_smp
from hmp.monitor.render import int_list

DATA = Path(__file__).parent / "data" / "qemu-7.2" / "smp" / "cli.txt"
QEMU = "qemu-system-x86_64: "
WAIT_S = 10.0  # an upper bound only


def recorded() -> list[tuple[str, int, list[str]]]:
    """(value, vCPUs QEMU ran or 0, its stderr messages) for each recorded -smp."""
    cases: list[tuple[str, int, list[str]]] = []
    for line in DATA.read_text().splitlines():
        if line.startswith("# smp: "):
            value, _, cpus = line.removeprefix("# smp: ").rpartition(" cpus: ")
            cases.append((value, int(cpus), []))
        elif line.startswith("# stderr: "):
            cases[-1][2].append(line.removeprefix("# stderr: ").removeprefix(QEMU))
    return cases


@pytest.mark.parametrize(("value", "cpus", "errors"), recorded())
def test_smp_parses_as_qemu(value: str, cpus: int, errors: list[str]) -> None:
    if cpus:
        assert parse_smp(value) == cpus
        return
    with pytest.raises(UsageError) as err:
        parse_smp(value)
    assert list(err.value.messages) == errors


def test_a_bad_smp_ends_the_process_with_qemu_s_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hmp", "-smp", "foo"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert proc.stderr == "qemu-hmp: Parameter 'smp.cpus' expects integer\n"


def test_each_vcpu_runs_a_writer_over_the_same_working_set() -> None:
    opts = MachineOptions(ram_size=8 << 20, workload="random-writer,rate=3001,wss=1M", smp=3)
    machine = Machine(opts)
    try:
        writers = machine.workload.writers
        assert [w._vcpu for w in writers] == [0, 1, 2]
        assert all(np.array_equal(w.working_set, writers[0].working_set) for w in writers)
        assert sum(w._rate for w in writers) == 3001
        assert all(w.wait_written(1, WAIT_S) for w in writers)
    finally:
        machine.close()


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_blocktime_is_per_vcpu_and_the_total_only_while_all_are_blocked() -> None:
    ram = GuestRam(16 * 4096)
    pages = ram.pages
    present = np.ones(pages, bool)
    present[[1, 2]] = False
    asked = {1: threading.Event(), 2: threading.Event()}
    clock = Clock()

    def request(indices: np.ndarray) -> None:
        asked[int(indices[0])].set()  # the vCPU is registered as waiting by now

    table = postcopy.PresentMap(
        ram, present, np.zeros(pages, bool), np.zeros(pages, np.uint32), request, 2, clock
    )
    stop = threading.Event()
    vcpus = [
        threading.Thread(target=table.fault, args=(np.array([page]), stop, vcpu))
        for vcpu, page in ((0, 1), (1, 2))
    ]
    vcpus[0].start()  # at 0 s vCPU 0 faults; at 10 s vCPU 1 too: both are blocked
    assert asked[1].wait(WAIT_S)
    clock.now = 10.0
    vcpus[1].start()
    assert asked[2].wait(WAIT_S)
    clock.now = 12.0  # waits still going count up to now, in each figure alike
    assert (table.blocktime().total_ms, table.blocktime().vcpu_ms) == (2000, (12000, 2000))
    clock.now = 15.0  # vCPU 0's page arrives: 5 s with both blocked
    table.place(np.array([1]), None)
    vcpus[0].join(WAIT_S)
    clock.now = 30.0
    table.place(np.array([2]), None)
    vcpus[1].join(WAIT_S)
    bt = table.blocktime()
    assert (bt.total_ms, bt.vcpu_ms, bt.faults) == (5000, (15000, 20000), 2)
    assert not table.outstanding().size


@pytest.mark.parametrize(
    ("values", "text"),
    [((7,), "7"), ((404, 0), "0,404"), ((0, 0), "0"), ((5, 3, 4, 9), "3-5,9"), ((1, 2), "1-2")],
)
def test_vcpu_blocktime_prints_as_qemu_s_string_output_visitor(
    values: tuple[int, ...], text: str
) -> None:
    assert int_list(values) == text
