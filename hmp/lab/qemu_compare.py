"""qemu-hmp against real QEMU (7.2, or 11.1 with ``--qemu 11.1``) on the same memory image,
side by side in one run.

The image is made of this machine's own binaries, libraries and source text, page-aligned,
with runs of zero pages making up about 30%, like the blob QEMU 7.2 was first measured with:
files that are already compressed (man pages, .gz docs, archives, images) are left out, so
stdlib zlib level 1 shrinks it about as much as the blob (QEMU reports 2.34 against the
blob's 2.37; with them it was 2.08). Both guests load it with ``-device loader`` at 1 MiB
(qemu-hmp with ``--workload zero``: the rest of RAM is zero, as QEMU's is), both monitors get
the same commands (one of CONFIGS, max-bandwidth 100G) and a blocking ``migrate``; the
figures are each side's own ``query-migrate``, read over QMP (the same client for both).
A config of QEMU 11.1 runs ``qemu11-system-x86_64`` (a chroot that sees only /tmp/qemu11, so
its image and sockets live there) beside ``qemu-hmp --qemu 11.1``; its multifd destinations
are ``-incoming defer`` + ``migrate_incoming``, as 11.1 requires.

A run goes over loopback or over a shaped link: a network namespace of its own whose
loopback a token bucket limits (``shaped_link``); both programs then run inside it.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from hmp.harness import MIGRATION_ENDED, Endpoint, QmpClient, free_port, resolve_argv
from hmp.lab import host
from hmp.lab.experiment import peak_rss_kib

PAGE = 4096
IMAGE_MIB = 384
GUEST_MIB = 512
SOURCES = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/bin",
    "/usr/include",
    "/usr/lib/python3.11",
    "/usr/share/perl",
    "/usr/share/doc",
)
# gzip, xz, bzip2, zstd, zip, PNG, JPEG: content that no longer compresses
PACKED = (
    b"\x1f\x8b",
    b"\xfd7zXZ",
    b"BZh",
    b"\x28\xb5\x2f\xfd",
    b"PK\x03\x04",
    b"\x89PNG",
    b"\xff\xd8\xff",
)
QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class Release:
    """A QEMU to compare with: its program, and the one folder it sees (a chroot's bind
    mount, at the same path inside and out; "" when it sees everything)."""

    name: str
    program: str
    root: str = ""


RELEASES = {
    "7.2": Release("7.2", QEMU),
    "11.1": Release("11.1", "qemu11-system-x86_64", "/tmp/qemu11"),
}
QEMU_ARGS = ["-machine", "pc,accel=tcg", "-m", str(GUEST_MIB), "-smp", "1", "-display", "none"]
QEMU_ARGS += ["-nodefaults", "-S", "-monitor", "stdio"]
MIGRATE_TIMEOUT_S = 300.0
POLL_S = 0.2  # QEMU's query-migrate while its monitor waits in `migrate`


@dataclass(frozen=True)
class Config:
    """One configuration, as the monitor commands typed at both sides before ``migrate``."""

    label: str
    capabilities: tuple[str, ...] = ()  # on both sides
    both: tuple[str, ...] = ()  # parameters set on both sides ("name value")
    source: tuple[str, ...] = ()
    destination: tuple[str, ...] = ()
    qemu: bool = True  # QEMU has it too (False: one of qemu-hmp's extensions)
    release: str = "7.2"  # the QEMU, and the dialect of ours (`--qemu`)
    defer: bool = False  # the destination is `-incoming defer`, then `migrate_incoming`

    def commands(self, port: int, source: bool) -> list[str]:
        cmds = [f"migrate_set_capability {cap} on" for cap in self.capabilities]
        params = [*self.both, *(self.source if source else self.destination)]
        cmds += [f"migrate_set_parameter {param}" for param in params]
        if source:
            cmds += ["migrate_set_parameter max-bandwidth 100G", f"migrate tcp:127.0.0.1:{port}"]
        elif self.defer:
            cmds += [f"migrate_incoming tcp:127.0.0.1:{port}"]
        return cmds

    def incoming(self, port: int) -> str:
        """The destination's ``-incoming``."""
        return "defer" if self.defer else f"tcp:127.0.0.1:{port}"


def _multifd(method: str, qemu: bool = True) -> Config:
    both = ("multifd-channels 2", f"multifd-compression {method}")
    return Config(f"multifd 2 ch, {method}", ("multifd",), both, qemu=qemu)


def _multifd_11(method: str, zero_pages: str) -> Config:
    """QEMU 11.1's multifd: 2 channels, ``method``, zero pages found by ``zero_pages``."""
    both = (
        "multifd-channels 2",
        f"multifd-compression {method}",
        f"zero-page-detection {zero_pages}",
    )
    label = f"11.1 multifd 2 ch, {method}, zero pages: {zero_pages}"
    return Config(label, ("multifd",), both, release="11.1", defer=True)


COMPRESS = Config(
    "compress 2/1, level 1",
    ("compress",),
    source=("compress-threads 2", "compress-level 1"),
    destination=("decompress-threads 1",),
)


def _compress(method: str, auto: bool = False) -> Config:
    """qemu-hmp's compress capability with another codec: 2 threads at each end, level 1."""
    label = f"compress {method} 2/2, level 1" + (", x-compress-auto" if auto else "")
    return Config(
        label,
        ("compress", *(["x-compress-auto"] if auto else [])),
        (f"x-compress-method {method}",),
        ("compress-threads 2", "compress-level 1"),
        ("decompress-threads 2",),
        qemu=False,
    )


# What `bench qemu --configs` names, in the table's order: QEMU 7.2's, then qemu-hmp's
# extensions (measured on our side only).
CONFIGS: dict[str, Config] = {
    "plain": Config("plain"),
    "multifd-none": _multifd("none"),
    "multifd-zlib": _multifd("zlib"),
    "multifd-zstd": _multifd("zstd"),
    "compress": COMPRESS,
    "multifd-lz4": _multifd("x-lz4", qemu=False),
    "multifd-auto": _multifd("x-auto", qemu=False),
    "compress-lz4": _compress("lz4"),
    "compress-zstd": _compress("zstd"),
    "auto-zstd": _compress("zstd", auto=True),
}
# `bench qemu --qemu 11.1`: QEMU 11.1's (no compress; zero-page-detection).
CONFIGS_11: dict[str, Config] = {
    "plain": Config("11.1 plain", release="11.1"),
    "multifd-none": _multifd_11("none", "multifd"),
    "multifd-zstd": _multifd_11("zstd", "multifd"),
    "multifd-zstd-legacy": _multifd_11("zstd", "legacy"),
    "multifd-zstd-none": _multifd_11("zstd", "none"),
}
CONFIGS_BY_RELEASE = {"7.2": CONFIGS, "11.1": CONFIGS_11}


@dataclass(frozen=True)
class Link:
    """Where a run's bytes go: loopback, or a namespace's loopback shaped to ``rate``."""

    name: str
    rate: int = 0  # bytes/s of the shaped link; 0: loopback as it is
    tc_rate: str = ""  # the same rate in tc's spelling

    @property
    def label(self) -> str:
        return self.name if not self.rate else f"{self.name} ({self.rate * 8 / 1e9:g} Gbit/s)"


LINKS = {"loopback": Link("loopback"), "1gbit": Link("1gbit", 125_000_000, "1gbit")}


class LinkUnavailable(Exception):
    """The shaped link cannot be made here (not root, no ``ip``/``tc``, no namespaces)."""


def _run(argv: Sequence[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode:
        raise LinkUnavailable(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")


@contextmanager
def shaped_link(link: Link) -> Iterator[list[str]]:
    """A network namespace whose loopback is shaped to the link's rate, removed afterwards;
    yields the prefix that starts a program inside it (none for plain loopback)."""
    if not link.rate:
        yield []
        return
    if os.geteuid() != 0:
        raise LinkUnavailable("a network namespace needs root")
    if not (shutil.which("ip") and shutil.which("tc")):
        raise LinkUnavailable("ip and tc (iproute2) are not installed")
    name = f"qemu-hmp-bench-{os.getpid()}"
    _run(["ip", "netns", "add", name])
    try:
        inside = ["ip", "netns", "exec", name]
        _run([*inside, "ip", "link", "set", "lo", "up"])
        tbf = ["tbf", "rate", link.tc_rate, "burst", "256kb", "latency", "50ms"]
        _run([*inside, "tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", *tbf])
        # Its queue as a host's default one (pfifo_fast: three bands by the packets'
        # priority), so postcopy's urgent packets overtake a bulk stream there; one stream
        # alone, or several of one priority, queue as in a plain FIFO.
        _run([*inside, "tc", "qdisc", "add", "dev", "lo", "parent", "1:1", "pfifo_fast"])
        yield inside
    finally:
        _run(["ip", "netns", "del", name])


# A 1-byte TCP ping-pong on 127.0.0.1, run inside the link's namespace: its median round trip.
_PING = """
import socket, statistics, threading, time
server = socket.create_server(("127.0.0.1", 0))
def echo():
    conn, _ = server.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := conn.recv(1):
        conn.sendall(data)
threading.Thread(target=echo, daemon=True).start()
client = socket.create_connection(server.getsockname())
client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rounds = []
for _ in range(200):
    t0 = time.perf_counter()
    client.sendall(b"x")
    client.recv(1)
    rounds.append(time.perf_counter() - t0)
print(statistics.median(rounds))
"""


def round_trip_s(prefix: Sequence[str]) -> float:
    """The link's idle round trip (median of 200 TCP ping-pongs of a byte), measured inside it."""
    done = subprocess.run(
        [*prefix, sys.executable, "-c", _PING], capture_output=True, text=True, timeout=60
    )
    if done.returncode:
        raise LinkUnavailable(f"round-trip probe: {done.stderr.strip() or done.returncode}")
    return float(done.stdout)


def build_image(
    path: Path, seed: int = 1, size: int = IMAGE_MIB << 20, sources: Sequence[str] = SOURCES
) -> Path:
    """A deterministic (for this machine's files) image of real binaries and text."""
    if path.exists() and path.stat().st_size == size:
        return path
    files = sorted(
        str(p)
        for root in sources
        for p in Path(root).rglob("*")
        if p.is_file() and not p.is_symlink() and p.stat().st_size >= PAGE
    )
    rng = random.Random(seed)
    rng.shuffle(files)
    with open(path, "wb") as out:
        for name in files:
            if out.tell() >= size:
                break
            try:
                data = Path(name).read_bytes()[: 8 << 20]
            except OSError:
                continue
            if data.startswith(PACKED):
                continue
            out.write(data + bytes(-len(data) % PAGE))
            # ~30% zero pages overall: after each file, a zero run ~0.43x its length
            out.write(bytes(int(len(data) * 0.43 / PAGE + 0.5) * PAGE))
        out.truncate(size)
    return path


def image_path(workdir: Path) -> Path:
    image = build_image(workdir / f"image-{IMAGE_MIB}M-v2.bin")  # v2: no packed files
    os.sync()
    return image


def wait_for_prompt(out: IO[str], timeout: float = 60.0) -> None:
    seen, deadline = "", time.monotonic() + timeout
    while "(qemu)" not in seen:
        ready, _, _ = select.select([out], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError("QEMU did not show its monitor prompt")
        seen += os.read(out.fileno(), 4096).decode(errors="replace")


def _ended(info: dict[str, Any]) -> bool:
    return info.get("status") in MIGRATION_ENDED


@dataclass
class Run:
    """One migration's source ``query-migrate`` and both processes' peak RSS."""

    info: dict[str, Any]
    rss_kib: dict[str, int] = field(default_factory=dict)  # "src", "dst"
    steal: float | None = None  # the host's CPU steal over the run, % (hmp/lab/host.py)


@dataclass
class _Qemu:
    client: QmpClient
    pid: int


@contextmanager
def qemu(
    args: Sequence[str],
    commands: Sequence[str],
    prefix: Sequence[str] = (),
    release: Release = RELEASES["7.2"],
) -> Iterator[_Qemu]:
    """A QEMU with its monitor on a pipe, typed ``commands`` once it prompts; its QMP client.

    QEMU serves its monitor after it listens (``-incoming``) and binds its QMP socket.
    ``prefix`` starts it elsewhere (``ip netns exec NS``, which execs: the pid stays QEMU's;
    the chroot wrapper of 11.1 execs too).
    """
    root = release.root or None
    with tempfile.TemporaryDirectory(prefix="qemu-hmp-compare-", dir=root) as tmp:
        path = f"{tmp}/qmp.sock"
        proc = subprocess.Popen(
            [*prefix, release.program, *args, "-qmp", f"unix:{path},server=on,wait=off"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            wait_for_prompt(proc.stdout)
            with QmpClient(path) as client:
                proc.stdin.write("".join(f"{command}\n" for command in commands))
                proc.stdin.flush()
                yield _Qemu(client, proc.pid)
        finally:
            proc.kill()
            proc.wait()


def _loader(image: Path) -> list[str]:
    return ["-device", f"loader,file={image},addr=0x100000,force-raw=on"]


def run_qemu(
    image: Path, config: Config = COMPRESS, prealloc: bool = False, prefix: Sequence[str] = ()
) -> Run:
    """Real QEMU's ``query-migrate`` once the source's blocking ``migrate`` has ended."""
    port = free_port()
    args = [*QEMU_ARGS, *(["-mem-prealloc"] if prealloc else [])]
    release = RELEASES[config.release]
    with qemu(
        [*args, "-incoming", config.incoming(port)], config.commands(port, False), prefix, release
    ) as dst:
        # A deferred destination listens once its typed migrate_incoming has run.
        dst.client.poll("query-migrate", _listening, MIGRATE_TIMEOUT_S, POLL_S)
        with qemu([*args, *_loader(image)], config.commands(port, True), prefix, release) as src:
            info = dict(src.client.poll("query-migrate", _ended, MIGRATE_TIMEOUT_S, POLL_S))
            return Run(info, {"src": peak_rss_kib(src.pid), "dst": peak_rss_kib(dst.pid)})


def _listening(info: dict[str, Any]) -> bool:
    return "socket-address" in info


@contextmanager
def _ours(
    image: Path, config: Config, prealloc: bool, prefix: Sequence[str]
) -> Iterator[tuple[Endpoint, Endpoint, int]]:
    """Both qemu-hmp endpoints, up and configured but for ``migrate``: (src, dst, port)."""
    port = free_port()
    argv = ["qemu-hmp", "--qemu", config.release, "-m", f"{GUEST_MIB}M", "-S"]
    argv += ["--workload", "zero", *(["-mem-prealloc"] if prealloc else [])]
    with (
        Endpoint(
            [*prefix, *resolve_argv([*argv, "-incoming", config.incoming(port)])], qmp=True
        ) as dst,
        Endpoint([*prefix, *resolve_argv([*argv, *_loader(image)])], qmp=True) as src,
    ):
        dst.wait_ready(60)
        src.wait_ready(60)
        for endpoint, commands in (
            (dst, config.commands(port, source=False)),
            (src, config.commands(port, source=True)[:-1]),
        ):
            for command in commands:
                answer = endpoint.execute(command, 10)
                if answer:
                    raise RuntimeError(f"{command}: {answer.strip()}")
        yield src, dst, port


def run_ours(
    image: Path, config: Config = COMPRESS, prealloc: bool = False, prefix: Sequence[str] = ()
) -> Run:
    with _ours(image, config, prealloc, prefix) as (src, dst, port):
        src.execute(f"migrate tcp:127.0.0.1:{port}", MIGRATE_TIMEOUT_S)
        info = dict(src.qmp.execute("query-migrate"))
        return Run(info, {"src": peak_rss_kib(src.proc.pid), "dst": peak_rss_kib(dst.proc.pid)})


def monitor_latency_ms(
    image: Path, config: Config, prefix: Sequence[str] = ()
) -> tuple[list[float], Run]:
    """qemu-hmp's ``info migrate`` round trips, typed back to back at the source's monitor for
    the whole of one migration (``migrate -d``), and that run (not a timed one: the probes
    take CPU from it)."""
    with _ours(image, config, False, prefix) as (src, dst, port):
        answer = src.execute(f"migrate -d tcp:127.0.0.1:{port}", 10)
        if answer:
            raise RuntimeError(f"migrate -d: {answer.strip()}")
        times: list[float] = []
        deadline = time.monotonic() + MIGRATE_TIMEOUT_S
        while not _ended(info := src.qmp.execute("query-migrate")):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{config.label}: no end within {MIGRATE_TIMEOUT_S:g} s")
            t0 = time.perf_counter()
            src.execute("info migrate", 10)
            times.append((time.perf_counter() - t0) * 1000)
        rss = {"src": peak_rss_kib(src.proc.pid), "dst": peak_rss_kib(dst.proc.pid)}
        return times, Run(dict(info), rss)


def available(release: str = "7.2") -> bool:
    return shutil.which(RELEASES[release].program) is not None


def compare(
    workdir: Path,
    prealloc: bool = False,
    runs: int = 3,
    config: Config = COMPRESS,
    prefix: Sequence[str] = (),
) -> tuple[list[Run], list[Run]]:
    """QEMU's runs and ours, ``runs`` rounds each for the same image and commands. The order
    alternates, so neither side always starts on a machine the other has just left. QEMU
    must be installed for a config it has; an extension's runs only ours."""
    root = RELEASES[config.release].root
    if root and not workdir.resolve().is_relative_to(root):
        raise ValueError(f"QEMU {config.release} sees only {root}: the workdir must be in it")
    image = image_path(workdir)
    theirs: list[Run] = []
    ours: list[Run] = []
    for round_ in range(runs):
        sides = [(run_qemu, theirs), (run_ours, ours)] if config.qemu else [(run_ours, ours)]
        for run, results in sides if round_ % 2 == 0 else sides[::-1]:
            with host.StealMeter() as meter:
                result = run(image, config, prealloc, prefix)
            result.steal = meter.percent
            results.append(result)
    return theirs, ours
