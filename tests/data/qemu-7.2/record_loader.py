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
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[2]))
sys.path.insert(0, str(HERE))
from qemu_on_socket import QEMU, QemuOnSocket  # noqa: E402

from hmp.harness.transcript import generaliser  # noqa: E402

RAM = ["-m", "64"]
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
    dst = QemuOnSocket(
        os.path.join(scratch, "dst.sock"), [*RAM, "-incoming", f"tcp:127.0.0.1:{port}"]
    )
    device = f"loader,file={image},addr={LOADER_ADDR:#x},force-raw=on"
    src = QemuOnSocket(os.path.join(scratch, "src.sock"), [*RAM, "-S", "-device", device])
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
    data = {"qemu": [*QEMU[1:], *RAM], "image_pages": IMAGE_PAGES, "loader_addr": LOADER_ADDR}
    (HERE / "loader_migration.json").write_text(json.dumps({**data, "cases": cases}, indent=1))


if __name__ == "__main__":
    main()
