"""qemu-hmp against real QEMU 7.2 on the same memory image, side by side in one run.

The image is made of this machine's own binaries, libraries and source text, page-aligned,
with runs of zero pages making up about 30%, like the blob QEMU 7.2 was first measured with:
files that are already compressed (man pages, .gz docs, archives, images) are left out, so
stdlib zlib level 1 shrinks it about as much as the blob (QEMU reports 2.34 against the
blob's 2.37; with them it was 2.08). Both
guests load it with ``-device loader`` at 1 MiB, both monitors get the same commands
(compress on, 2 compress / 1 decompress threads, level 1, max-bandwidth 100G) and a
blocking ``migrate``; the figures are each side's own ``query-migrate``, read over QMP (the
same client for both), three rounds each.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from hmp.harness import MIGRATION_ENDED, Endpoint, QmpClient, free_port

PAGE = 4096
IMAGE_MIB = 384
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
QEMU_ARGS = ["-machine", "pc,accel=tcg", "-m", "512", "-smp", "1", "-display", "none"]
QEMU_ARGS += ["-nodefaults", "-S", "-monitor", "stdio"]
MIGRATE_TIMEOUT_S = 300.0
POLL_S = 0.2  # QEMU's query-migrate while its monitor waits in `migrate`


def commands(port: int, source: bool) -> list[str]:
    cmds = ["migrate_set_capability compress on"]
    if source:
        cmds += [
            "migrate_set_parameter compress-threads 2",
            "migrate_set_parameter compress-level 1",
            "migrate_set_parameter max-bandwidth 100G",
            f"migrate tcp:127.0.0.1:{port}",
        ]
    else:
        cmds.append("migrate_set_parameter decompress-threads 1")
    return cmds


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


def wait_for_prompt(out: IO[str], timeout: float = 60.0) -> None:
    seen, deadline = "", time.monotonic() + timeout
    while "(qemu)" not in seen:
        ready, _, _ = select.select([out], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError("QEMU did not show its monitor prompt")
        seen += os.read(out.fileno(), 4096).decode(errors="replace")


def _ended(info: dict[str, Any]) -> bool:
    return info.get("status") in MIGRATION_ENDED


@contextmanager
def qemu(args: Sequence[str], commands: Sequence[str]) -> Iterator[QmpClient]:
    """A QEMU with its monitor on a pipe, typed ``commands`` once it prompts; its QMP client.

    QEMU serves its monitor after it listens (``-incoming``) and binds its QMP socket.
    """
    with tempfile.TemporaryDirectory(prefix="qemu-hmp-compare-") as tmp:
        path = f"{tmp}/qmp.sock"
        proc = subprocess.Popen(
            [QEMU, *args, "-qmp", f"unix:{path},server=on,wait=off"],
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
                yield client
        finally:
            proc.kill()
            proc.wait()


def run_qemu(image: Path, prealloc: bool) -> dict[str, Any]:
    """Real QEMU's ``query-migrate`` once the source's blocking ``migrate`` has ended."""
    port = free_port()
    device = ["-device", f"loader,file={image},addr=0x100000,force-raw=on"]
    args = [*QEMU_ARGS, *(["-mem-prealloc"] if prealloc else [])]
    with (
        qemu([*args, "-incoming", f"tcp:127.0.0.1:{port}"], commands(port, source=False)),
        qemu([*args, *device], commands(port, source=True)) as src,
    ):
        return dict(src.poll("query-migrate", _ended, MIGRATE_TIMEOUT_S, POLL_S))


def run_ours(image: Path, prealloc: bool) -> dict[str, Any]:
    port = free_port()
    argv = ["qemu-hmp", "-m", "512M", "-S", "--workload", "zero"]
    argv += ["-mem-prealloc"] if prealloc else []
    with (
        Endpoint([*argv, "-incoming", f"tcp:127.0.0.1:{port}"], qmp=True) as dst,
        Endpoint(
            [*argv, "-device", f"loader,file={image},addr=0x100000,force-raw=on"], qmp=True
        ) as src,
    ):
        dst.wait_ready(60)
        src.wait_ready(60)
        for command in commands(port, source=False):
            dst.execute(command, 10)
        for command in commands(port, source=True):
            src.execute(command, MIGRATE_TIMEOUT_S)
        return dict(src.qmp.execute("query-migrate"))


def available() -> bool:
    return shutil.which(QEMU) is not None


def compare(
    workdir: Path, prealloc: bool, runs: int = 3
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """QEMU's figures and ours, ``runs`` rounds each for the same image and flags (the
    reference's median of 3). The order alternates, so neither side always starts on a
    machine the other has just left. QEMU must be installed."""
    image = build_image(workdir / f"image-{IMAGE_MIB}M-v2.bin")  # v2: no packed files
    os.sync()
    theirs: list[dict[str, Any]] = []
    ours: list[dict[str, Any]] = []
    for round_ in range(runs):
        sides = [(run_qemu, theirs), (run_ours, ours)]
        for run, results in sides if round_ % 2 == 0 else sides[::-1]:
            results.append(run(image, prealloc))
    return theirs, ours
