"""``qemu-hmp replay [--against-qemu] FILE...``: re-run transcripts, a unified diff per
mismatch; ``--against-qemu`` runs the qemu-hmp endpoints as real QEMUs instead."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hmp.harness.runner import COMMAND_TIMEOUT, replay


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="qemu-hmp replay", description="Replay transcripts.")
    ap.add_argument("files", nargs="+", type=Path, metavar="FILE")
    ap.add_argument("--update", action="store_true", help="rewrite expectations that differ")
    ap.add_argument("--timeout", type=float, default=COMMAND_TIMEOUT, help="seconds a command")
    ap.add_argument(
        "--against-qemu",
        action="store_true",
        help="start each qemu-hmp endpoint as a real QEMU of the transcript's release "
        "(qemu-system-x86_64, or with `@qemu 11.1` qemu11-system-x86_64; -M none, same -m, "
        "-incoming, -S and -device loader; $QEMU_HMP_QEMU, $QEMU_HMP_QEMU_11_1 name others)",
    )
    args = ap.parse_args(argv)
    if args.against_qemu and args.update:
        ap.error("--update rewrites what qemu-hmp answers: not with --against-qemu")
    failed = 0
    for path in args.files:
        result = replay(
            path.read_text(),
            str(path),
            timeout=args.timeout,
            update=args.update,
            against_qemu=args.against_qemu,
        )
        if args.update and not result.errors and not result.passed:
            path.write_text(result.actual)
            sys.stdout.write(f"updated {path} ({result.seconds:.1f}s)\n")
        elif result.passed:
            sys.stdout.write(f"passed {path} ({result.seconds:.1f}s)\n")
        else:
            failed += 1
            sys.stdout.write(f"FAILED {path} ({result.seconds:.1f}s)\n")
            sys.stdout.write(result.diff())
    return 1 if failed else 0
