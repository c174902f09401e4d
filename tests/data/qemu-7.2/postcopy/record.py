"""Re-record QEMU 7.2's postcopy: ``python tests/data/qemu-7.2/postcopy/record.py [CASE...]``.

Each case (``cases/NAME.cmds``) runs as ../record.py's do (tests/data/hmp_recorder.py's
format: ``(qemu) CMD``, the exact output, ``# stderr:`` lines; two-endpoint cases prefix
``src: ``/``dst: ``) and is stored in NAME.txt. The source guest is the one of
../../qemu-11.1/record.py: ``$IMAGE`` (32 MiB of real binaries at 1 MiB) so that RAM is not
all zero and a 1M max-bandwidth keeps precopy going for seconds, and ``$DIRTIER`` (a kernel
that increments a word in each of 256 pages at 80 MiB for ever) so that, after the switch,
the destination's vCPU touches pages it does not have yet and asks the source for them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
from hmp_recorder import Recorder, record_in_temporary_folders  # noqa: E402

QEMU = ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-smp", "1", "-display", "none"]
QEMU += ["-nodefaults"]


def _qemu11_record():  # type: ignore[no-untyped-def]
    """../../qemu-11.1/record.py, whose guest files these cases use too."""
    spec = importlib.util.spec_from_file_location(
        "qemu11_record", HERE.parent.parent / "qemu-11.1" / "record.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    guest = _qemu11_record()
    made = {
        "$IMAGE": guest.beside("image.bin", guest.make_image),
        "$DIRTIER": guest.beside("dirtier.bin", guest.make_dirtier),
    }
    recorder = Recorder(HERE, QEMU, made=made)
    record_in_temporary_folders(recorder, sys.argv[1:], None)


if __name__ == "__main__":
    main()
