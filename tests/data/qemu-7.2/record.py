"""Re-record the QEMU 7.2 oracle cases: ``python tests/data/qemu-7.2/record.py [CASE...]``.

Each case runs a fresh ``qemu-system-x86_64`` with ``-monitor stdio`` on pipes, feeds its
commands one at a time, waits for the next ``(qemu) `` prompt and stores ``(qemu) CMD`` plus
the exact output (``\\r\\n`` turned into ``\\n``; QEMU's readline echo dropped) in CASE.txt;
what QEMU wrote to stderr meanwhile follows as ``# stderr: LINE`` lines, then one
``# file: NAME SIZE`` line per file the command created or resized (QEMU runs in an empty
scratch directory, so cases name files relatively, e.g. ``pmemsave 0 4096 "dump.bin"``).
A case file's first line is ``# argv: ...`` (the QEMU options it ran with), which the tests
turn into qemu-hmp options.
"""

from __future__ import annotations

import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
QEMU = ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-smp", "1", "-display", "none"]
QEMU += ["-nodefaults"]
PROMPT = b"(qemu) "


def _read_until_prompt(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> bytes:
    assert proc.stdout is not None
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(PROMPT):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            raise TimeoutError(buf.decode(errors="replace"))
        chunk = proc.stdout.read1(65536)
        if not chunk:
            raise EOFError(buf.decode(errors="replace"))
        buf += chunk
    return buf[: -len(PROMPT)]


def _drain(proc: subprocess.Popen[bytes]) -> str:
    """What QEMU wrote to stderr (error_report) since the last command."""
    assert proc.stderr is not None
    data = b""
    while select.select([proc.stderr], [], [], 0.05)[0]:
        chunk = proc.stderr.read1(65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def written(folder: Path, before: dict[str, int]) -> dict[str, int]:
    """The files in ``folder`` created or resized since ``before`` (name → size)."""
    now = {path.name: path.stat().st_size for path in folder.iterdir()}
    return {name: size for name, size in sorted(now.items()) if before.get(name) != size}


def run_case(args: list[str], commands: list[str]) -> str:
    with tempfile.TemporaryDirectory() as scratch:
        return _run_in(Path(scratch), args, commands)


def _run_in(folder: Path, args: list[str], commands: list[str]) -> str:
    proc = subprocess.Popen(
        [*QEMU, *args, "-monitor", "stdio"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=folder,
    )
    assert proc.stdin is not None
    out = [f"# argv: {' '.join(args)}\n"]
    files: dict[str, int] = {}
    try:
        _read_until_prompt(proc)  # the banner
        for cmd in commands:
            proc.stdin.write(cmd.encode() + b"\n")
            proc.stdin.flush()
            raw = _read_until_prompt(proc)
            # The echo (readline redraws) ends at the first CRLF; the output follows it.
            _echo, _, body = raw.partition(b"\r\n")
            out.append(f"(qemu) {cmd}\n" + body.decode().replace("\r\n", "\n"))
            out.extend(f"# stderr: {line}\n" for line in _drain(proc).splitlines())
            new = written(folder, files)
            files.update(new)
            out.extend(f"# file: {name} {size}\n" for name, size in new.items())
    finally:
        proc.kill()
        proc.wait()
    return "".join(out)


def load_cases() -> dict[str, tuple[list[str], list[str]]]:
    """``cases/NAME.cmds``: first line the QEMU options, then one monitor command a line."""
    cases = {}
    for path in sorted((HERE / "cases").glob("*.cmds")):
        first, *cmds = path.read_text().rstrip("\n").split("\n")
        cases[path.stem] = (first.split(), cmds)
    return cases


def main() -> None:
    cases = load_cases()
    for name in sys.argv[1:] or sorted(cases):
        args, commands = cases[name]
        (HERE / f"{name}.txt").write_text(run_case(args, commands))
        print(name)


if __name__ == "__main__":
    main()
