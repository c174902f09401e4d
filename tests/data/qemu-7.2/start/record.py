"""Re-record what QEMU 7.2 prints before its first prompt (tests/test_start.py replays it).

``python tests/data/qemu-7.2/start/record.py``: for each case (the QEMU options below), a
fresh ``qemu-system-x86_64 -monitor stdio`` on pipes; NAME.txt holds ``# argv: OPTIONS``, then
the exact stdout up to and including the first ``(qemu) `` (``\\r\\n`` turned into ``\\n``),
ended by a newline, then ``# stderr: LINE`` lines.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from record import PROMPT, QEMU, _drain, _read_until_prompt  # noqa: E402

CASES = {"m2G": ["-m", "2G"]}


def record(args: list[str]) -> str:
    proc = subprocess.Popen(
        [*QEMU, *args, "-monitor", "stdio"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        shown = (_read_until_prompt(proc) + PROMPT).decode().replace("\r\n", "\n")
        errors = [f"# stderr: {line}\n" for line in _drain(proc).splitlines()]
    finally:
        proc.kill()
        proc.wait()
    return f"# argv: {' '.join(args)}\n" + shown + "\n" + "".join(errors)


def main() -> None:
    for name, args in CASES.items():
        (HERE / f"{name}.txt").write_text(record(args))
        print(name)


if __name__ == "__main__":
    main()
