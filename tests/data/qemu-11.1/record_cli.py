"""Re-record QEMU 11.1's answers to command lines: ``python tests/data/qemu-11.1/record_cli.py``.

tests/data/qemu-7.2/record_cli.py's cases and format (same BASE, ``quit`` on stdin), with
``qemu11-system-x86_64`` (its chroot, README.md) in a scratch folder under /tmp/qemu11, the
path the chroot shares: ``cases/cli.argv`` → ``cli.argv.out``. tests/test_file_uri11.py
replays them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

HERE = Path(__file__).parent
SHARED = "/tmp/qemu11"
_spec = importlib.util.spec_from_file_location(
    "record_cli", HERE.parent / "qemu-7.2" / "record_cli.py"
)
assert _spec is not None and _spec.loader is not None
SEVEN = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(SEVEN)
argv = SEVEN.argv


def load_cases() -> list[list[str]]:
    return SEVEN.load_cases(HERE)


def main() -> None:
    Path(SHARED).mkdir(exist_ok=True)
    out = "".join(SEVEN.run_case(case, "qemu11-system-x86_64", SHARED) for case in load_cases())
    (HERE / "cli.argv.out").write_text(out)


if __name__ == "__main__":
    main()
