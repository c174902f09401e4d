"""Re-record the QEMU 7.2 oracle cases: ``python tests/data/qemu-7.2/record.py [CASE...]``.

Each case (``cases/NAME.cmds``: the QEMU options, then one monitor command a line) runs a
fresh ``qemu-system-x86_64`` in an empty scratch directory (cases name files relatively, e.g.
``pmemsave 0 4096 "dump.bin"``) and is stored in NAME.txt in the format tests/data/hmp_recorder.py
describes; the tests turn its ``# argv: ...`` line into qemu-hmp options.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hmp_recorder import Recorder, record_in_temporary_folders

QEMU = ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-smp", "1", "-display", "none"]
QEMU += ["-nodefaults"]


def main() -> None:
    record_in_temporary_folders(Recorder(Path(__file__).parent, QEMU), sys.argv[1:], None)


if __name__ == "__main__":
    main()
