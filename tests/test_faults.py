"""Faults with real qemu-hmp processes: peers killed, peers that stall, signals, broken stdio.

Commands are typed at the monitors; every wait reads QMP (``query-migrate``,
``query-status``), as a tool would, with a timeout. Kill points are chosen by a seeded RNG
(the case list is the same on every run); a point is reached by watching the source: a number
of `query-migrate` polls after `migrate -d` (setup), a ``dirty-sync-count`` (iterate), or
`query-status` saying finish-migrate (stop-and-copy).
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hmp.harness.endpoint import Endpoint

T = 20.0  # seconds any one wait may take
RNG = random.Random(0x5EED)
Spawn = Callable[..., Endpoint]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    made: list[Endpoint] = []

    def start(*args: str) -> Endpoint:
        ep = Endpoint(["qemu-hmp", *args], qmp=True)
        made.append(ep)
        return ep

    yield start
    for ep in made:
        ep.kill()


def ready(*eps: Endpoint) -> None:
    for ep in eps:  # the processes start together; this only waits for each in turn
        ep.wait_ready(T)


def wait_for(ep: Endpoint, command: str, done: Callable[[Any], bool]) -> Any:
    """Poll QMP ``command`` back to back until ``done`` holds of its answer: that answer."""
    return ep.qmp.poll(command, done, T, interval=0)


def status_is(*wanted: str) -> Callable[[Any], bool]:
    return lambda info: info.get("status") in wanted


def migration_status(ep: Endpoint) -> str:
    return str(ep.qmp.execute("query-migrate").get("status"))


def vm_status(ep: Endpoint) -> str:
    return ep.execute("info status", T).strip()


def processes_named(marker: str) -> list[int]:
    """Processes whose command line holds ``marker`` (to prove none was left behind)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(entry))
        except (OSError, ValueError):
            continue
    return pids


# -- a peer killed at a point of the migration --------------------------------------------------


@dataclass(frozen=True)
class KillPoint:
    victim: str  # "source" | "destination"
    phase: str  # "setup" | "iterate" | "stop-and-copy"
    depth: int  # polls after migrate -d, dirty sync count, or polls into stop-and-copy

    def __str__(self) -> str:
        return f"{self.victim}-{self.phase}-{self.depth}"


DEPTHS = {"setup": (0, 2), "iterate": (2, 4), "stop-and-copy": (0, 3)}
KILLS = [
    KillPoint(victim, phase, RNG.randint(*DEPTHS[phase]))
    for phase in DEPTHS
    for victim in ("source", "destination")
]
GUEST = ("-m", "8M")


def reach(src: Endpoint, point: KillPoint) -> None:
    if point.phase == "setup":
        for _ in range(point.depth):
            src.qmp.execute("query-migrate")
    elif point.phase == "iterate":

        def deep_enough(info: Any) -> bool:
            return info.get("ram", {}).get("dirty-sync-count", 0) >= point.depth

        wait_for(src, "query-migrate", deep_enough)
        assert vm_status(src) == "VM status: running"
    else:
        wait_for(src, "query-status", lambda info: info["status"] == "finish-migrate")
        for _ in range(point.depth):
            src.qmp.execute("query-migrate")


@pytest.mark.parametrize("point", KILLS, ids=str)
def test_peer_killed(spawn: Spawn, point: KillPoint) -> None:
    dst = spawn(*GUEST, "-incoming", "tcp:127.0.0.1:0")
    src = spawn(*GUEST, "--workload", "random-writer,rate=5000,wss=2M", "--seed", "4")
    ready(dst, src)
    uri = dst.listening_uri()
    if point.phase == "setup":  # a slow wire: the 8 MiB guest cannot be done before the kill
        src.execute("migrate_set_parameter x-link-bandwidth 1M", T)
    if point.phase == "iterate":  # dirtying faster than it may send: passes go on
        src.execute("migrate_set_parameter max-bandwidth 4M", T)
    if point.phase == "stop-and-copy":  # converges at once, then copies over a slow link
        src.execute("migrate_set_parameter x-link-bandwidth 4M", T)
        src.execute("migrate_set_parameter downtime-limit 10000", T)
    src.execute(f"migrate -d {uri}", T)
    reach(src, point)
    if point.victim == "destination":
        dst.kill()
        wait_for(src, "query-migrate", status_is("failed"))
        assert vm_status(src) == "VM status: running"  # the guest goes on at the source
        return
    src.kill()
    wait_for(dst, "query-migrate", status_is("failed"))
    assert vm_status(dst) == "VM status: paused (inmigrate)"
    assert dst.listening_uri() == uri  # listening again: a new source may retry
    retry = spawn(*GUEST, "--seed", "5")
    ready(retry)
    retry.execute(f"migrate {uri}", T)
    assert migration_status(retry) == "completed"
    wait_for(dst, "query-migrate", status_is("completed"))
    assert vm_status(dst) == "VM status: running"


# -- peers that stall ------------------------------------------------------------------------


def test_cancel_is_prompt_when_the_destination_never_reads(spawn: Spawn) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        src = spawn("-m", "32M", "--workload", "random")
        ready(src)
        src.execute(f"migrate -d tcp:127.0.0.1:{server.getsockname()[1]}", T)
        conn, _ = server.accept()  # accepted, never read
        with conn:
            last: list[int | None] = [None]

            def stalled(info: Any) -> bool:  # two equal figures in a row: blocked in send
                figure = info.get("ram", {}).get("transferred")
                same = info.get("status") == "active" and figure == last[0]
                last[0] = figure
                return same

            wait_for(src, "query-migrate", stalled)
            t0 = time.monotonic()
            src.execute("migrate_cancel", T)
            wait_for(src, "query-migrate", status_is("cancelled"))
            assert time.monotonic() - t0 < 2.0
    assert vm_status(src) == "VM status: running"


def test_a_silent_source_does_not_hang_the_destination(spawn: Spawn) -> None:
    dst = spawn("-m", "4M", "-incoming", "tcp:127.0.0.1:0")
    ready(dst)
    port = int(dst.listening_uri().rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)):  # connects, sends nothing
        wait_for(dst, "query-migrate", status_is("active"))
        assert dst.execute("migrate_cancel", T) == ""  # no outgoing migration: a no-op
        assert vm_status(dst) == "VM status: paused (inmigrate)"
        t0 = time.monotonic()
        dst.execute("quit", T)
        assert dst.proc.wait(T) == 0
        assert time.monotonic() - t0 < 5.0


# -- signals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("victim", "sig"),
    [("source", signal.SIGTERM), ("source", signal.SIGINT), ("destination", signal.SIGTERM)],
    ids=["source-SIGTERM", "source-SIGINT", "destination-SIGTERM"],
)
def test_signal_with_a_migration_running(
    spawn: Spawn, tmp_path: Path, victim: str, sig: signal.Signals
) -> None:
    path = tmp_path / "mig.sock"
    marker = f"fault-{os.getpid()}-{victim}-{sig.name}"
    dst = spawn("-m", "16M", "-incoming", f"unix:{path}", "-name", f"{marker}-dst")
    src = spawn("-m", "16M", "--workload", "random", "-name", f"{marker}-src")
    ready(dst, src)
    src.execute("migrate_set_parameter max-bandwidth 2M", T)
    src.execute(f"migrate -d unix:{path}", T)
    wait_for(dst, "query-migrate", status_is("active"))
    target, survivor = (src, dst) if victim == "source" else (dst, src)
    target.proc.send_signal(sig)
    assert target.proc.wait(T) == 0  # QEMU exits cleanly on these signals
    errors = target.read_stderr(timeout=T)
    assert errors == [f"qemu-hmp: terminating on signal {sig.value}"]
    assert processes_named(f"{marker}-{'src' if victim == 'source' else 'dst'}") == []
    if victim == "source":  # the stream broke off cleanly: the destination waits again
        wait_for(dst, "query-migrate", status_is("failed"))
        assert dst.listening_uri() == f"unix:{path}"
    else:  # the destination closed its listener (the socket file is gone)
        wait_for(src, "query-migrate", status_is("failed"))
        assert vm_status(src) == "VM status: running"
        assert not path.exists()
    assert survivor.alive


# -- broken stdio ----------------------------------------------------------------------------

RECORD = [
    sys.executable,
    "-m",
    "hmp",
    "record",
    "--endpoint",
    "a: qemu-hmp -m 4M -name {marker}",
]


def run_closed(argv: list[str], stdin: bytes, stdout: int | None) -> tuple[int, str]:
    """Run ``argv``; with ``stdout`` None its output pipe is closed before anything is read."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
    )
    if proc.stdout is not None:
        proc.stdout.close()  # the reader is gone, as with `| head -c0`
    _, err = proc.communicate(stdin, timeout=T)
    return proc.returncode, err.decode()


@pytest.mark.parametrize("fault", ["disk-full", "stdout-closed"])
def test_record_with_broken_output(tmp_path: Path, fault: str) -> None:
    marker = f"record-{os.getpid()}-{fault}"
    argv = [a.replace("{marker}", marker) for a in RECORD]
    if fault == "disk-full":
        argv += ["--out", "/dev/full"]
        with open(os.devnull, "wb") as devnull:
            rc, err = run_closed(argv, b"a> info status\n", devnull.fileno())
        assert "qemu-hmp: No space left on device" in err
    else:
        argv += ["--out", str(tmp_path / "t.hmpt")]
        rc, err = run_closed(argv, b"a> info status\n", None)
        assert "qemu-hmp: output closed early (broken pipe)" in err
    assert rc == 1 and "Traceback" not in err
    assert processes_named(marker) == []  # the recorded endpoint was closed too


def test_monitor_with_stdout_closed() -> None:
    rc, err = run_closed([sys.executable, "-m", "hmp", "-m", "4M"], b"info status\n" * 50, None)
    assert rc == 1 and "Traceback" not in err
    assert err == "qemu-hmp: output closed early (broken pipe)\n"


def test_sigterm_delivered_to_another_thread_still_ends_the_process(spawn: Spawn) -> None:
    """The kernel may hand a process's signal to any thread; Python's handler runs only in the
    main thread, which sat in read() on stdin for good. Deliver it to a non-main thread."""
    ep = spawn("-m", "16M")
    ready(ep)
    pid = ep.proc.pid
    others = [int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid]
    assert others  # the QMP threads at least
    libc = ctypes.CDLL(None, use_errno=True)
    sys_tgkill = 234  # x86-64
    assert libc.syscall(sys_tgkill, pid, others[0], signal.SIGTERM) == 0
    assert ep.proc.wait(T) == 0
    assert "qemu-hmp: terminating on signal 15" in ep.read_stderr(None, 1.0)
