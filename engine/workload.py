"""What lives in guest RAM and what writes to it (``--workload NAME[,key=value,...]``).

Profiles, all deterministic from ``--seed``:

``zero``
    Nothing is written; every page stays a zero page.
``random``
    Every page is random bytes (incompressible).
``idle``
    OS-like memory: 15% of pages non-zero, in runs of 1-64 pages (kernel regions, page cache,
    heaps), the rest zero -- the classic articles' idle guests sent about 15% (2 GiB) and 9%
    (4 GiB) of their RAM. A run is one kind: text (page cache of prose and source-like
    files), binary (x86-64-like instruction streams, .rodata strings, ELF symbol and
    relocation tables) or data (arrays of structs of pointers, small integers, doubles, ids,
    names; page tables). A pool of distinct pages per kind is generated once and placed
    round-robin (a page recurs only thousands of pages later, beyond any codec window); the
    page number stamped in each page's last word makes every page distinct.
    With ``rate=PAGES_PER_S`` (default 0: frozen) an idle OS's background writes (timers,
    counters, logs): a vCPU thread rewrites a random 8-byte word in random pages of its own
    non-zero memory, ``wss`` bytes of it (default 256M), so what it dirties compresses like
    the rest of the guest.
``random-writer[,rate=PAGES_PER_S][,wss=SIZE]``
    ``idle`` content plus a vCPU thread writing a random 8-byte word into random pages of a
    working set of ``wss`` bytes (default 256M) anywhere in RAM (mostly fresh zero pages),
    ``rate`` pages per second (default 25000, ~100 MB/s, about 1 GbE: the articles' dirtying
    guest).
The content itself is engine/content.py's.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engine import content
from engine.guest import PAGE_SIZE, GuestRam, VcpuGate
from engine.numbers import strtosz

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

PROFILES = ("idle", "random-writer", "zero", "random")
WRITERS = ("idle", "random-writer")  # profiles that may run a writer
_WRITER_KEYS = {"rate", "wss"}
DEFAULT_RATE = 25_000  # pages/s: ~100 MB/s, close to 1 GbE -- the interesting regime
# 64 GiB/s of page writes, beyond any memory bus: a writer's per-slice arrays stay bounded.
MAX_RATE = 1 << 24
DEFAULT_WSS = 256 * MiB


@dataclass(frozen=True)
class WorkloadSpec:
    name: str = "idle"
    rate: int = 0  # pages written per second (idle and random-writer)
    wss: int | None = None  # working-set bytes; None: min(DEFAULT_WSS, RAM)

    @classmethod
    def parse(cls, text: str) -> WorkloadSpec:
        """``NAME[,key=value,...]``; ValueError with a one-line reason."""
        name, *opts = text.split(",")
        name = name.strip()
        if name not in PROFILES:
            raise ValueError(f"unknown workload '{name}' (choose from {', '.join(PROFILES)})")
        keys = _WRITER_KEYS if name in WRITERS else set()
        seen: dict[str, str] = {}
        for opt in opts:
            key, eq, value = opt.partition("=")
            key = key.strip()
            if not eq or not key:
                raise ValueError(f"workload option '{opt}' is not key=value")
            if key not in keys:
                raise ValueError(f"workload '{name}' has no option '{key}'")
            if key in seen:
                raise ValueError(f"workload option '{key}' given twice")
            seen[key] = value.strip()
        rate = DEFAULT_RATE if name == "random-writer" else 0
        if "rate" in seen:
            if not re.fullmatch(r"[0-9]+", seen["rate"]):  # ASCII: int() would take ٣ or 1_0
                raise ValueError(f"workload rate '{seen['rate']}' is not an integer")
            rate = int(seen["rate"])
            if rate <= 0:
                raise ValueError(f"workload rate must be positive, not {rate}")
            if rate > MAX_RATE:
                raise ValueError(f"workload rate must be at most {MAX_RATE} pages/s, not {rate}")
        wss = None
        if "wss" in seen:
            try:  # QEMU's size spelling, as for -m and the monitor's sizes
                wss = strtosz(seen["wss"])
            except ValueError:
                raise ValueError(f"invalid size '{seen['wss']}'") from None
            if wss < PAGE_SIZE:
                raise ValueError(f"workload wss must be at least {PAGE_SIZE} bytes")
        return cls(name, rate, wss)

    def __str__(self) -> str:
        if not self.rate:
            return self.name
        wss = f",wss={self.wss}" if self.wss is not None else ""
        return f"{self.name},rate={self.rate}{wss}"


# -- the dirtying vCPU ------------------------------------------------------------------------


class Pace:
    """How many page writes a vCPU owes: ``rate`` per second of the time it ran.

    Paused and throttled time does not count; a thread that woke late (a busy host) still
    owes the time it was due to run, so the dirty rate is what the spec says and each
    throttle step removes its share of it. What it cannot catch up within ``CATCH_UP_S``
    is dropped and counted as missed: the host is too slow for the rate asked.
    """

    CATCH_UP_S = 0.1

    def __init__(self, rate: int, now: float) -> None:
        self.rate = rate
        self._last = now
        self._owed = 0.0
        self.missed = 0  # page writes dropped because the thread fell behind

    def owed(self, now: float, lost: float) -> int:
        """Writes due now; ``lost``: time since the last call the vCPU did not run."""
        self._owed += self.rate * max(0.0, now - self._last - lost)
        self._last = now
        cap = self.rate * self.CATCH_UP_S
        if self._owed > cap:
            self.missed += int(self._owed - cap)
            self._owed = cap
        count = int(self._owed)
        self._owed -= count
        return count


def throttle_nap(pct: int, slice_s: float) -> float:
    """QEMU's throttle: after each slice of running, sleep so that ``pct``% of time is asleep."""
    return slice_s * pct / (100 - pct) if pct else 0.0


class RandomWriter:
    """A vCPU thread storing one random word into each of ``rate`` random pages per second.

    Work is done in 10 ms slices (QEMU's throttle timeslice). Between slices the thread parks
    while the VM is paused and sleeps the throttle share (p/(100-p) of a slice) when
    auto-converge throttles the vCPU; :class:`Pace` makes the writes ``rate`` per second of
    running time, so a p% throttle cuts the dirty rate by p%. It reads the gate's state but
    waits only on its own event, so :meth:`stop` is prompt in any state. ``report`` hears,
    once, that this host cannot write as fast as ``rate`` asks.
    """

    SLICE_S = VcpuGate.SLICE_S
    PAUSE_POLL_S = 0.005  # how soon a resumed vCPU notices

    def __init__(
        self,
        ram: GuestRam,
        gate: VcpuGate,
        rate: int,
        wss: int,
        seed: tuple[int, int],
        among: npt.NDArray[np.intp] | None = None,
        report: Callable[[str], None] = lambda _msg: None,
        clock: Callable[[], float] = time.monotonic,
        vcpu: int = 0,
    ) -> None:
        """``clock`` paces the writes (tests give it a host that falls behind); ``vcpu``: the
        index of the vCPU this thread is (its own random stream; its postcopy waits)."""
        self._ram = ram
        self._vcpu = vcpu
        self._report = report
        self._clock = clock
        self._gate = gate
        self._rate = rate
        rng = np.random.Generator(np.random.PCG64([*seed, 1, *([vcpu] if vcpu else [])]))
        if among is not None and among.size:
            # ``wss`` bytes of these pages (ascending), as one stretch starting anywhere.
            n = min(among.size, max(1, wss // PAGE_SIZE))
            first = int(rng.integers(0, among.size - n + 1))
            self.working_set = among[first : first + n].astype(np.intp)
        else:
            # One allocation somewhere in RAM, 2 MiB aligned where possible.
            n = max(1, min(wss, ram.size) // PAGE_SIZE)
            align = 512 if n + 512 <= ram.pages else 1
            base = int(rng.integers(0, (ram.pages - n) // align + 1)) * align
            self.working_set = np.arange(base, base + n, dtype=np.intp)
        self._rng = rng
        self._stop = threading.Event()
        self._progress = threading.Condition()
        self._written = 0
        self.parked = threading.Event()  # set while the vCPU is paused
        name = f"vcpu-writer-{vcpu}" if vcpu else "vcpu-writer"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def pages_written(self) -> int:
        with self._progress:
            return self._written

    def wait_written(self, count: int, timeout: float) -> bool:
        """Wait until at least ``count`` page writes happened; False on timeout."""
        with self._progress:
            return self._progress.wait_for(lambda: self._written >= count, timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _hold(self) -> float | None:
        """Park while paused, then serve the throttle sleep. Returns the vCPU time lost
        (pause time counts whole), or None once stopped."""
        gate, stop = self._gate, self._stop
        lost = 0.0
        if not gate.running:
            parked_at = time.monotonic()
            self.parked.set()
            while not gate.running:
                if stop.wait(self.PAUSE_POLL_S):
                    return None
            self.parked.clear()
            lost = time.monotonic() - parked_at
        nap = throttle_nap(gate.throttle_pct, self.SLICE_S)
        if nap:
            if stop.wait(nap):
                return None
            lost += nap
        return None if stop.is_set() else lost

    def _run(self) -> None:
        words = self._ram.page_array.view(np.uint64)
        working_set, span = self.working_set, self.working_set.size
        clock = self._clock
        pace = Pace(self._rate, clock())
        due = clock()  # when the next slice starts; absolute, so wakeup lag evens out
        warned = False
        faulted = 0.0  # time the last slice waited for postcopy pages: not running either
        while (held := self._hold()) is not None:
            lost, faulted = held + faulted, 0.0
            due = max(due + lost, clock() - self.SLICE_S)
            count = pace.owed(clock(), lost)
            if count:
                pages = working_set[self._rng.integers(0, span, size=count)]
                slot = self._rng.integers(0, PAGE_SIZE // 8, size=count)
                values = self._rng.bit_generator.random_raw(count)
                # A page not yet migrated (postcopy) is fetched before the vCPU writes it.
                t0 = clock()
                present = self._ram.fault(pages, self._stop, self._vcpu)
                faulted = clock() - t0
                if present and self._gate.enter():
                    try:  # a stop that came after _hold() won at enter()
                        self._ram.before_write(pages)  # background-snapshot saves them first
                        words[pages, slot] = values
                        self._ram.mark_dirty(pages)
                    finally:
                        self._gate.leave()
                    with self._progress:
                        self._written += count
                        self._progress.notify_all()
            if not warned and pace.missed > self._rate:  # more than a second's writes lost
                warned = True
                self._report(
                    f"warning: the guest's writer cannot keep up with {self._rate} pages/s on"
                    " this host: its dirty rate is lower than asked"
                )
            due += self.SLICE_S
            self._stop.wait(min(self.SLICE_S, max(0.0, due - clock())))


# -- the facade the machine uses --------------------------------------------------------------


class Workload:
    """What one guest runs: ``fill`` its RAM once, then ``start``/``stop`` its writer."""

    def __init__(self, spec: WorkloadSpec | str, seed: int) -> None:
        self.spec = WorkloadSpec.parse(spec) if isinstance(spec, str) else spec
        self.seed = seed
        self.writers: list[RandomWriter] = []  # one a vCPU, while started
        self._runs = 0  # writers started so far; each restart continues with fresh indices
        self._written_before = 0

    @property
    def writer(self) -> RandomWriter | None:
        """vCPU 0's writer (None while stopped)."""
        return self.writers[0] if self.writers else None

    def fill(self, ram: GuestRam) -> None:
        # SFC64: the fastest of numpy's bit generators (random: 2 GiB of raw draws).
        rng = np.random.Generator(np.random.SFC64([self.seed, 0]))
        if self.spec.name in ("idle", "random-writer"):
            content.fill_idle(ram, rng)
        elif self.spec.name == "random":
            content.fill_random(ram, rng)

    def start(
        self,
        ram: GuestRam,
        gate: VcpuGate,
        report: Callable[[str], None] = lambda _m: None,
        vcpus: int = 1,
    ) -> None:
        """Start the guest's writers, if the profile has one and they are not running: one
        thread a vCPU, sharing the profile's rate and working set."""
        if not self.spec.rate or self.writers:
            return
        wss = self.spec.wss if self.spec.wss is not None else DEFAULT_WSS
        self._runs += 1
        among = None  # random-writer's working set is anywhere
        if self.spec.name == "idle":  # an idle OS rewrites its own memory
            everything = np.arange(ram.pages, dtype=np.intp)
            among = everything[~ram.zero_mask(everything)]
        seed = (self.seed, self._runs)
        rate, extra = divmod(self.spec.rate, vcpus)
        for vcpu in range(vcpus):
            share = rate + (vcpu < extra)
            if not share:  # more vCPUs than pages a second: this one has nothing to write
                continue
            # The first chose the working set; the others write the same pages.
            ws = self.writers[0].working_set if self.writers else among
            self.writers.append(RandomWriter(ram, gate, share, wss, seed, ws, report, vcpu=vcpu))
        for writer in self.writers:
            writer.start()

    def stop(self) -> None:
        for writer in self.writers:
            writer.stop()
            self._written_before += writer.pages_written
        self.writers = []

    @property
    def pages_written(self) -> int:
        """Pages written by the guest since it booted (all writer runs)."""
        return self._written_before + sum(writer.pages_written for writer in list(self.writers))
