"""``qemu-hmp soak``: consecutive migrations ping-pong between qemu-hmp processes, watched.

A completed source is ``postmigrate`` and a completed destination cannot take a second
incoming migration (as in QEMU), so the ping-pong is a relay: each round a fresh process
starts as ``-incoming ... -S``, the current guest migrates into it, the destination is told
``cont`` and becomes the next source, and the old source quits. Every process thus lives
through both roles. Meanwhile one thread per endpoint hammers ``info migrate`` (and reads the
status from ``query-migrate`` over QMP, as a tool would), and the driver samples each
process's threads, file descriptors and RSS from /proc.

Each round migrates plain, compressed (compress-threads workers on both sides) or over multifd
channels (one thread per channel on both sides), in turn by default: the thread and descriptor
counts then show any worker or channel a migration leaves behind.

A migration passes when both sides say ``completed`` (the destination only completes once
its RAM digest equals the source's) and neither process holds more threads or descriptors
after it than before; the soak passes when every migration did and no process's RSS grew
beyond the stated bound.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tabulate import tabulate

from hmp.harness import MIGRATION_ENDED, Endpoint

TIMEOUT_S = 60.0
RSS_BOUND_KIB = 32 * 1024  # growth allowed between the first and the last process's peak
FIGURES = (("threads", "threads", 1), ("fds", "fds", 1), ("RSS MiB", "rss_kib", 1024))
# How each kind of round is set up, on both sides, before `migrate`.
MODES: dict[str, tuple[str, ...]] = {
    "plain": ("migrate_set_capability compress off", "migrate_set_capability multifd off"),
    "compress": ("migrate_set_capability multifd off", "migrate_set_capability compress on"),
    "multifd": (
        "migrate_set_capability compress off",
        "migrate_set_capability multifd on",
        "migrate_set_parameter multifd-channels 4",
        "migrate_set_parameter multifd-compression zstd",
    ),
}
CYCLE = tuple(MODES)


@dataclass(frozen=True)
class Figures:
    """One process's footprint, from /proc."""

    threads: int
    fds: int
    rss_kib: int

    def grew(self, before: Figures) -> bool:
        return self.threads > before.threads or self.fds > before.fds


def figures(pid: int) -> Figures:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return Figures(
        threads=int(fields["Threads"]),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        rss_kib=int(fields["VmRSS"].split()[0]),
    )


def settled(pid: int, before: Figures, timeout: float = 5.0) -> Figures:
    """The figures once threads and descriptors are back to ``before`` (a migration's last
    thread may still be closing its socket when the status says completed), or at the timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        now = figures(pid)
        if not now.grew(before) or time.monotonic() > deadline:
            return now
        threading.Event().wait(0.01)  # another process's threads: nothing to wait on but /proc


class Hammer(threading.Thread):
    """``info migrate`` on one endpoint, back to back, until its migration has ended (which
    ``query-migrate`` tells after each)."""

    def __init__(self, ep: Endpoint, timeout: float) -> None:
        super().__init__(name=f"hammer {ep.name}", daemon=True)
        self.ep, self.timeout = ep, timeout
        self.calls, self.max_ms, self.status = 0, 0.0, ""
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.timeout
            while self.status not in MIGRATION_ENDED and time.monotonic() < deadline:
                t0 = time.monotonic()
                self.ep.execute("info migrate", 10)  # the load, and its latency, under test
                self.max_ms = max(self.max_ms, (time.monotonic() - t0) * 1000)
                self.calls += 1
                self.status = self.ep.qmp.execute("query-migrate").get("status", "none")
        except Exception as exc:  # reported with the round, never lost in a thread
            self.error = exc


@dataclass
class Round:
    index: int
    mode: str  # a key of MODES
    src_status: str
    dst_status: str
    total_ms: int | None
    transferred_kb: int | None
    info_calls: int
    info_max_ms: float
    src_before: Figures
    src_after: Figures
    dst_before: Figures
    dst_after: Figures
    samples: list[dict[str, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        leak = self.src_after.grew(self.src_before) or self.dst_after.grew(self.dst_before)
        return self.src_status == self.dst_status == "completed" and not leak


@dataclass(frozen=True)
class SoakOptions:
    migrations: int = 50
    ram: str = "16M"
    workload: str = "random-writer,rate=2000,wss=4M"
    mode: str = "cycle"  # a key of MODES, or cycle: each in turn
    sample_s: float = 0.05


class Soak:
    def __init__(self, opts: SoakOptions, log: Callable[[str], None] = lambda _s: None) -> None:
        self.opts = opts
        self.log = log
        self.rounds: list[Round] = []
        self.peak_rss: list[int] = []  # each process's peak, in order of birth

    def _spawn(self, seed: int, incoming: bool) -> Endpoint:
        argv = ["qemu-hmp", "-m", self.opts.ram, "--workload", self.opts.workload]
        argv += ["--seed", str(seed)]
        if incoming:
            argv += ["-incoming", "tcp:127.0.0.1:0", "-S"]
        ep = Endpoint(argv, name=f"p{seed}", qmp=True)
        ep.wait_ready(TIMEOUT_S)
        self.peak_rss.append(0)
        return ep

    def _mode(self, index: int) -> str:
        return CYCLE[index % len(CYCLE)] if self.opts.mode == "cycle" else self.opts.mode

    def run(self) -> list[Round]:
        src = self._spawn(0, incoming=False)
        try:
            for index in range(self.opts.migrations):
                dst = self._spawn(index + 1, incoming=True)
                try:
                    self.rounds.append(self._round(index, src, dst))
                except BaseException:
                    dst.kill()
                    raise
                self.log(self.row(self.rounds[-1]))
                dst.execute("cont", 10)  # the destination is the next source
                src.execute("quit", 10)
                src.close()
                src = dst
        finally:
            src.kill()
        return self.rounds

    def _round(self, index: int, src: Endpoint, dst: Endpoint) -> Round:
        mode = self._mode(index)
        for ep in (src, dst):
            for command in MODES[mode]:
                answer = ep.execute(command, 10)
                if answer:
                    raise RuntimeError(f"{ep.name}: {command}: {answer.strip()}")
        uri = dst.listening_uri()
        src_before, dst_before = figures(src.proc.pid), figures(dst.proc.pid)
        src.execute(f"migrate -d {uri}", 10)
        hammers = [Hammer(src, TIMEOUT_S), Hammer(dst, TIMEOUT_S)]
        for h in hammers:
            h.start()
        samples = []
        t0 = time.monotonic()
        while any(h.is_alive() for h in hammers):
            row = {"t_ms": int((time.monotonic() - t0) * 1000)}
            for role, ep in (("src", src), ("dst", dst)):
                f = figures(ep.proc.pid)
                row |= {f"{role}_threads": f.threads, f"{role}_fds": f.fds}
                row[f"{role}_rss"] = f.rss_kib
            samples.append(row)
            alive = [h for h in hammers if h.is_alive()]
            if alive:
                alive[0].join(self.opts.sample_s)
        for h in hammers:
            if h.error:
                raise h.error
        info = src.qmp.execute("query-migrate")
        src_after = settled(src.proc.pid, src_before)
        dst_after = settled(dst.proc.pid, dst_before)
        births = len(self.peak_rss)
        for pos, role in ((births - 2, "src"), (births - 1, "dst")):
            peak = max([r[f"{role}_rss"] for r in samples] + [self.peak_rss[pos]])
            self.peak_rss[pos] = peak
        return Round(
            index=index,
            mode=mode,
            src_status=hammers[0].status,
            dst_status=hammers[1].status,
            total_ms=info.get("total-time"),
            transferred_kb=info["ram"]["transferred"] // 1024 if "ram" in info else None,
            info_calls=sum(h.calls for h in hammers),
            info_max_ms=max(h.max_ms for h in hammers),
            src_before=src_before,
            src_after=src_after,
            dst_before=dst_before,
            dst_after=dst_after,
            samples=samples,
        )

    @staticmethod
    def row(r: Round) -> str:
        digest = "match" if r.dst_status == "completed" else f"FAILED ({r.dst_status})"
        return (
            f"#{r.index + 1:<3} {r.mode:<8} {r.src_status:<9} "
            f"digest {digest}  {r.total_ms} ms {r.transferred_kb} kB  "
            f"threads/fds src {r.src_before.threads}/{r.src_before.fds}->"
            f"{r.src_after.threads}/{r.src_after.fds} dst {r.dst_before.threads}/"
            f"{r.dst_before.fds}->{r.dst_after.threads}/{r.dst_after.fds}  "
            f"info migrate x{r.info_calls} (max {r.info_max_ms:.1f} ms)"
        )

    def rss_growth_kib(self) -> int:
        """Peak RSS of the last process that was both destination and source, minus the first's."""
        done = self.peak_rss[1 : len(self.rounds)]  # p0 was never a destination
        return done[-1] - done[0] if len(done) >= 2 else 0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rounds) and self.rss_growth_kib() <= RSS_BOUND_KIB

    def summary(self) -> str:
        columns = ("src_before", "src_after", "dst_before", "dst_after")
        table = [
            [name]
            + [max(getattr(getattr(r, c), attr) for r in self.rounds) // unit for c in columns]
            for name, attr, unit in FIGURES
        ]
        passed = sum(r.ok for r in self.rounds)
        return (
            tabulate(table, headers=["max of any round", *(c.replace("_", " ") for c in columns)])
            + f"\n{passed}/{len(self.rounds)} migrations completed with matching digests and "
            f"no leaked thread or descriptor; peak RSS growth {self.rss_growth_kib()} KiB "
            f"(bound {RSS_BOUND_KIB} KiB): {'PASS' if self.ok else 'FAIL'}\n"
        )


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="qemu-hmp soak", description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--migrations", type=int, default=SoakOptions.migrations)
    ap.add_argument("-m", "--ram", default=SoakOptions.ram, help="guest RAM of every process")
    ap.add_argument("--workload", default=SoakOptions.workload)
    ap.add_argument(
        "--mode", choices=(*MODES, "cycle"), default="cycle", help="what each round migrates with"
    )
    ap.add_argument("--json", type=Path, help="also write every round and sample here")
    args = ap.parse_args(argv)
    opts = SoakOptions(args.migrations, args.ram, args.workload, args.mode)
    soak = Soak(opts, log=lambda line: print(line, flush=True))  # noqa: T201
    soak.run()
    sys.stdout.write(soak.summary())
    if args.json:
        rounds = [asdict(r) | {"ok": r.ok} for r in soak.rounds]
        report = {"options": asdict(opts), "rounds": rounds, "peak_rss_kib": soak.peak_rss}
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if soak.ok else 1
