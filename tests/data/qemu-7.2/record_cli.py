"""Re-record QEMU 7.2's answers to command lines: ``python tests/data/qemu-7.2/record_cli.py``.

``cases/cli.argv`` holds one case a line, shell words: QEMU options run after BASE (and after
``-monitor stdio`` unless the case has a -monitor of its own), with ``quit`` on stdin. For
each, ``cli.argv.out`` gets ``$ OPTIONS``, then what QEMU wrote to stderr, one ``# stderr: LINE``
each, then ``# exit STATUS``. QEMU runs in an empty scratch directory, so relative socket
paths land there; tests/test_cli_oracle.py runs qemu-hmp the same way.
"""

from __future__ import annotations

import shlex
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
BASE = ["-M", "none", "-nodefaults", "-display", "none", "-m", "16"]


def load_cases(here: Path = HERE) -> list[list[str]]:
    lines = (here / "cases" / "cli.argv").read_text().splitlines()
    return [shlex.split(line) for line in lines if line.strip()]


def argv(case: list[str]) -> list[str]:
    """The options a case runs with, after the program name."""
    monitor = [] if "-monitor" in case else ["-monitor", "stdio"]
    return [*BASE, *monitor, *case]


def run_case(case: list[str], qemu: str = "qemu-system-x86_64", parent: str | None = None) -> str:
    """``parent``: where the scratch directory goes (a chroot's QEMU sees only its folder)."""
    with tempfile.TemporaryDirectory(dir=parent) as scratch:
        proc = subprocess.run(
            [qemu, *argv(case)],
            input=b"quit\n",
            capture_output=True,
            cwd=scratch,
            timeout=30,
        )
    lines = proc.stderr.decode("utf-8", "surrogateescape").splitlines()
    stderr = "".join(f"# stderr: {line}\n" for line in lines)
    return f"$ {shlex.join(case)}\n{stderr}# exit {proc.returncode}\n"


def main() -> None:
    (HERE / "cli.argv.out").write_text("".join(run_case(case) for case in load_cases()))


if __name__ == "__main__":
    main()
