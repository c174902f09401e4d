"""What the host takes from a measured run: the share of this machine's CPU time that its
hypervisor gave to other guests meanwhile (``steal`` in /proc/stat), and the stalls a thread
that never blocks sees on an otherwise idle machine.

On a shared virtual machine the share moves from run to run (here 0-30%), and it comes in
stalls of several milliseconds that no thread of ours can avoid (the counter misses some of
them): benchmarks report both beside the figures they bend (run times; a faulting vCPU's
wait p99, whose path crosses both CPUs several times)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STAT = Path("/proc/stat")


@dataclass(frozen=True)
class CpuTimes:
    """All CPUs' time so far, in clock ticks: the total and what was stolen of it."""

    total: int
    steal: int


def parse_cpu_times(stat: str) -> CpuTimes | None:
    """The aggregate ``cpu`` line of /proc/stat's text; None without one (or without steal,
    before Linux 2.6.11)."""
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu" and len(fields) >= 9:
            # user nice system idle iowait irq softirq steal [guest guest_nice]: the guest
            # times are already counted in user and nice.
            ticks = [int(f) for f in fields[1:9]]
            return CpuTimes(sum(ticks), ticks[7])
    return None


def cpu_times() -> CpuTimes | None:
    """This machine's now; None where /proc/stat cannot be read or parsed."""
    try:
        return parse_cpu_times(STAT.read_text())
    except (OSError, ValueError):
        return None


def steal_percent(before: CpuTimes | None, after: CpuTimes | None) -> float | None:
    """The share of CPU time stolen between two readings, %; None when either is missing or
    no time passed."""
    if before is None or after is None or after.total <= before.total:
        return None
    return 100 * (after.steal - before.steal) / (after.total - before.total)


class StealMeter:
    """``with StealMeter() as meter:`` around a run; ``meter.percent`` is the steal over it
    (None until the block ends, or where /proc/stat cannot be read)."""

    def __init__(self) -> None:
        self.percent: float | None = None
        self._before: CpuTimes | None = None

    def __enter__(self) -> StealMeter:
        self._before = cpu_times()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.percent = steal_percent(self._before, cpu_times())


@dataclass(frozen=True)
class Stalls:
    """What a busy thread lost over ``seconds``: its gaps longer than ``over_ms``."""

    seconds: float
    over_ms: float
    count: int
    longest_ms: float
    lost_ms: float  # in those gaps

    @property
    def per_s(self) -> float:
        return self.count / self.seconds


def stalls(
    seconds: float, over_ms: float = 1.0, clock: Callable[[], float] = time.perf_counter
) -> Stalls:
    """Read ``clock`` back to back for ``seconds`` (this thread never blocks; run it when the
    process has nothing else running): a gap between two reads longer than ``over_ms`` is
    time the CPU was taken from it, by the host or another task."""
    over = over_ms / 1000
    start = last = clock()
    count, longest, lost = 0, 0.0, 0.0
    while True:
        now = clock()
        gap, last = now - last, now
        if gap > over:
            count, longest, lost = count + 1, max(longest, gap), lost + gap
        if now - start >= seconds:
            return Stalls(now - start, over_ms, count, longest * 1000, lost * 1000)
