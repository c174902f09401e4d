"""Re-record QEMU 7.2 migrating a paused guest whose RAM is a loader image and zeros:
``python tests/data/qemu-7.2/record_loader.py`` writes loader_migration.json.

The image (IMAGE_PAGES pages at LOADER_ADDR; every fourth page zero, the others seeded random
bytes) goes in with ``-device loader``; the source runs ``-S``, so every byte is downtime
bytes. Two cases: ``plain``, and ``multifd`` with 2 channels (capability on both ends). Per
case: the source's ``info migrate`` after completion, its figures as numbers, and the lines
with volatile figures as patterns (the transcript placeholders; byte and page counts too,
since QEMU's wire format and its ROMs make them differ from ours by design).
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[2]))
from hmp.harness.transcript import generaliser  # noqa: E402

QEMU = ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-display", "none", "-nodefaults"]
QEMU += ["-m", "64"]
IMAGE_PAGES = 2048
LOADER_ADDR = 0x100000
PAGE = 4096
# Byte counts beyond the transcript's volatile ones: QEMU's RAM has ROMs, its wire its format.
OURS_DIFFER = {"total ram": "total ram: {kb} kbytes", "multifd bytes": "multifd bytes: {kb} kbytes"}
CASES = {
    "plain": [],
    "multifd": ["migrate_set_capability multifd on", "migrate_set_parameter multifd-channels 2"],
}


def image_bytes() -> bytes:
    """The image both recorders and tests load: every fourth page zero."""
    rng = random.Random(72)
    pages = (bytes(PAGE) if i % 4 == 0 else rng.randbytes(PAGE) for i in range(IMAGE_PAGES))
    return b"".join(pages)


class Qemu:
    def __init__(self, path: str, args: list[str]) -> None:
        if os.path.exists(path):
            os.unlink(path)  # left by the QEMU of the case before
        self.proc = subprocess.Popen(
            [*QEMU, *args, "-monitor", f"unix:{path},server=on,wait=off"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while not os.path.exists(path):
            time.sleep(0.05)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self._until_prompt()

    def _until_prompt(self) -> bytes:
        data = b""
        while not data.endswith(b"(qemu) "):
            assert select.select([self.sock], [], [], 30)[0], data
            data += self.sock.recv(65536)
        return data

    def hmp(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\n")
        out = self._until_prompt().removesuffix(b"(qemu) ").split(b"\r\n", 1)[1]
        return out.decode().replace("\r\n", "\n")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def figures(lines: list[str]) -> dict[str, int]:
    """``label: N unit`` lines as numbers."""
    out = {}
    for line in lines:
        label, sep, value = line.partition(": ")
        number = value.split(" ")[0]
        if sep and number.isdigit():
            out[label] = int(number)
    return out


def record(setup: list[str], scratch: str, image: str) -> dict[str, Any]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dst = Qemu(os.path.join(scratch, "dst.sock"), ["-incoming", f"tcp:127.0.0.1:{port}"])
    device = f"loader,file={image},addr={LOADER_ADDR:#x},force-raw=on"
    src = Qemu(os.path.join(scratch, "src.sock"), ["-S", "-device", device])
    try:
        for line in setup:
            src.hmp(line)
            dst.hmp(line)
        src.hmp(f"migrate -d tcp:127.0.0.1:{port}")
        while "Migration status: completed" not in (info := src.hmp("info migrate")):
            time.sleep(0.05)
    finally:
        src.kill()
        dst.kill()
    lines = info.splitlines()
    generalise = generaliser(lines, {}, quiet_guest=False)
    return {
        "setup": setup,
        "info_migrate": lines,
        "patterns": [OURS_DIFFER.get(line.partition(":")[0], generalise(line)) for line in lines],
        "figures": figures(lines),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        image = os.path.join(scratch, "image.bin")
        Path(image).write_bytes(image_bytes())
        cases = {name: record(setup, scratch, image) for name, setup in CASES.items()}
    data = {"qemu": QEMU[1:], "image_pages": IMAGE_PAGES, "loader_addr": LOADER_ADDR}
    (HERE / "loader_migration.json").write_text(json.dumps({**data, "cases": cases}, indent=1))


if __name__ == "__main__":
    main()
