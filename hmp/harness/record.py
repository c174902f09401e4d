"""``qemu-hmp record --out FILE``: run a session from a script or typed lines, write it down.

The output is a transcript (hmp/transcript.py) whose volatile figures are already patterns.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from hmp.harness.runner import COMMAND_TIMEOUT, Session, run_steps
from hmp.harness.transcript import INDENT, Kind, Step, classify, render

RECORD_HELP = """\
Each input line is one step: `NAME> HMP LINE`, `$ NAME: COMMAND LINE`, `@wait ...`,
`@kill NAME`; `# text` becomes prose. Write {port} where a port goes: it is allocated now
and at each replay. Volatile figures of `info migrate` are recorded as patterns.
"""


def script_steps(lines: Iterable[str], names: set[str]) -> Iterable[Step]:
    """Steps of a record script; a line that is no step is reported and skipped."""
    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            yield Step(Kind.PROSE, line.removeprefix("#").strip(), lineno)
            continue
        step = classify(line.removeprefix(INDENT), names, lineno)
        if step is None:
            sys.stderr.write(f"qemu-hmp record: line {lineno}: not a step: {line}\n")
        else:
            yield step


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="qemu-hmp record", description="Record a transcript.", epilog=RECORD_HELP
    )
    ap.add_argument("--out", type=Path, required=True, help="the transcript to write")
    ap.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="'NAME: COMMAND'",
        help="start an endpoint first, e.g. 'dst: qemu-hmp -incoming tcp:127.0.0.1:{port}'",
    )
    ap.add_argument("script", nargs="?", type=Path, help="steps to run (default: stdin)")
    ap.add_argument("--timeout", type=float, default=COMMAND_TIMEOUT, help="seconds a command")
    args = ap.parse_args(argv)
    if args.script is None and sys.stdin.isatty():
        sys.stderr.write(RECORD_HELP + "End with Ctrl-D.\n")
    lines = [f"$ {spec}" for spec in args.endpoint]
    source = args.script.read_text().splitlines() if args.script else sys.stdin
    errors: list[str] = []
    recorded: list[Step] = []
    with Session(timeout=args.timeout, generalise=True) as session:
        steps = script_steps([*lines, *source], set())
        for step in run_steps(steps, session, errors, record=True):
            recorded.append(step)
            sys.stdout.write(render([step]))  # live view of the session
            sys.stdout.flush()
    args.out.write_text(render(recorded))
    for error in errors:
        sys.stderr.write(f"qemu-hmp record: {error}\n")
    return 1 if errors else 0
