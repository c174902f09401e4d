"""Re-record the QEMU 11.1 oracle cases: ``python tests/data/qemu-11.1/record.py [CASE...]``.

Each case (``cases/NAME.cmds``) runs ``qemu11-system-x86_64`` (QEMU 11.1 in a Debian trixie
chroot, see README.md) and is stored in NAME.txt in the format tests/data/hmp_recorder.py
describes, with each endpoint's banner (``# banner: ...``). QEMU runs in the chroot with its
working directory at ``/``, so cases name files under ``$SCRATCH``, a directory under
/tmp/qemu11 (the path the chroot shares with this machine). The recorder makes two files
there, once for all cases:

- ``$IMAGE``, a 32 MiB RAM image made of this machine's /usr/bin binaries, for
  ``-device loader`` so that guest RAM is not all zero;
- ``$DIRTIER``, a multiboot kernel for ``-kernel`` that keeps incrementing a word in each of
  256 pages (1 MiB at 80 MiB) for ever, so that a migration has pages to send again (an idle
  guest stops dirtying RAM once its BIOS has halted);
- ``$EMPTY``, an empty file (what `migrate_incoming file:` makes of one).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hmp_recorder import Recorder, record_in_temporary_folders

SHARED = "/tmp/qemu11"  # bind-mounted at the same path inside the chroot
QEMU = ["qemu11-system-x86_64", "-machine", "pc,accel=tcg", "-smp", "1", "-display", "none"]
QEMU += ["-nodefaults"]
IMAGE_SIZE = 32 << 20
LOAD = 0x4000000  # where the dirtier's code goes: above the image at 0x100000


def beside(name: str, make: Callable[[Path], None]) -> Callable[[Path], Path]:
    """What gives the file ``name`` in a case folder's parent (one for all cases), made once."""

    def path(folder: Path) -> Path:
        if not (made := folder.parent / name).exists():
            make(made)
        return made

    return path


def make_image(path: Path) -> None:
    """IMAGE_SIZE bytes of the larger /usr/bin files, in name order: real, varied content."""
    with path.open("wb") as out:
        for binary in sorted(Path("/usr/bin").iterdir()):
            if out.tell() >= IMAGE_SIZE:
                break
            if binary.is_file() and not binary.is_symlink() and binary.stat().st_size > 100_000:
                out.write(binary.read_bytes()[: IMAGE_SIZE - out.tell()])
    if path.stat().st_size < IMAGE_SIZE:
        raise RuntimeError(f"/usr/bin holds less than {IMAGE_SIZE} bytes of large files")


def make_dirtier(path: Path) -> None:
    """A multiboot kernel (a.out kludge: a flat binary loaded at LOAD) dirtying 256 pages."""
    magic, flags = 0x1BADB002, 1 << 16  # the header's load addresses are valid
    header = struct.pack("<3I", magic, flags, -(magic + flags) & 0xFFFFFFFF)
    header += struct.pack("<5I", LOAD, LOAD, 0, 0, LOAD + 32)  # header, load, end, bss, entry
    code = bytes.fromhex(
        "bf00000005"  # again: mov edi, 0x5000000
        "b900010000"  # mov ecx, 256
        "ff07"  # page: inc dword [edi]
        "81c700100000"  # add edi, 4096
        "e2f6"  # loop page
        "ebea"  # jmp again
    )
    path.write_bytes(header + code)


def main() -> None:
    Path(SHARED).mkdir(exist_ok=True)
    made = {
        "$IMAGE": beside("image.bin", make_image),
        "$DIRTIER": beside("dirtier.bin", make_dirtier),
        "$EMPTY": beside("empty.bin", lambda path: path.write_bytes(b"")),
    }
    recorder = Recorder(Path(__file__).parent, QEMU, made=made, banner=True)
    record_in_temporary_folders(recorder, sys.argv[1:], SHARED)


if __name__ == "__main__":
    main()
