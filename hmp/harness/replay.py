"""``qemu-hmp replay FILE...``: re-run transcripts, a unified diff per mismatch."""

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
    args = ap.parse_args(argv)
    failed = 0
    for path in args.files:
        result = replay(path.read_text(), str(path), timeout=args.timeout, update=args.update)
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
