"""Record QEMU monitor sessions as oracle data (used by tests/data/qemu-*/record.py).

A case is ``cases/NAME.cmds``: its first line the QEMU options, then one monitor command a
line. Each case runs a fresh QEMU with ``-monitor stdio`` on pipes, feeds its commands one at
a time, waits for the next ``(qemu) `` prompt and stores ``(qemu) CMD`` plus the exact output
(``\\r\\n`` turned into ``\\n``; QEMU's readline echo dropped) in NAME.txt; what QEMU wrote to
stderr meanwhile follows as ``# stderr: LINE`` lines, then one ``# file: NAME SIZE`` line per
file the command created or resized in the case's scratch directory. A case file's first line
is ``# argv: ...`` (the QEMU options it ran with).

A two-endpoint case prefixes every line with ``src: `` or ``dst: ``; an endpoint's first line
is its options, the others its commands, run in file order. Its recording has one
``# argv: NAME: ...`` line per endpoint and a ``# endpoint: NAME`` line wherever the commands
switch endpoint.

In options and commands, ``$SCRATCH`` is the case's scratch directory, ``$PORT`` a free TCP
port on 127.0.0.1, and a recorder may make files of its own (``Recorder.made``, e.g.
``$IMAGE``); outputs name them the same way, so a recording does not depend on the run.
``CMD @until REGEX`` repeats CMD until REGEX matches in its output (``re.MULTILINE``) and
stores that output, marked ``# polled until: REGEX``. An endpoint that exits is marked
``# exited: CODE`` (after the command that ended it, or where the case waits for it with the
line ``@exit``). A command that timed out or was sent to an endpoint that had exited, or an
``@until`` that a finished migration can no longer meet, ends the case with a
``# recorder error: ...`` line.
"""

from __future__ import annotations

import re
import select
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qmp_recorder import free_port

PROMPT = b"(qemu) "
UNTIL = " @until "
EXIT = "@exit"
ENDPOINT = re.compile(r"^(src|dst): ")
POLL_INTERVAL = 0.1  # seconds between two polls of an ``@until`` command
POLL_TIMEOUT = 120.0  # an ``@until`` condition not met by then is a recorder error
# A migration that ended (7.2: "Migration status: failed", 11.1: "Status: \t\tcompleted").
FINISHED = re.compile(r"^(Migration )?[Ss]tatus:\s+(completed|failed|cancelled)\b", re.MULTILINE)


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


class Monitor:
    """One QEMU with ``-monitor stdio`` on pipes; ``banner`` is its first line."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [*argv, "-monitor", "stdio"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
        )
        self.banner = _read_until_prompt(self.proc).decode().rstrip("\r\n")

    def command(self, cmd: str) -> str:
        """``(qemu) CMD``, the output, then ``# stderr:`` lines."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        self.proc.stdin.flush()
        try:
            raw, exited = _read_until_prompt(self.proc), ""
        except EOFError as end:  # the command ended QEMU (quit, or a failed incoming migration)
            raw, exited = str(end).encode(), f"# exited: {self.proc.wait(10)}\n"
        # The echo (readline redraws) ends at the first CRLF; the output follows it.
        _echo, _, body = raw.partition(b"\r\n")
        out = f"(qemu) {cmd}\n" + body.decode().replace("\r\n", "\n")
        return out + self._stderr() + exited

    def step(self, line: str) -> str:
        """One line of a case: a command, ``CMD @until REGEX``, or ``@exit``."""
        if line == EXIT:
            return self.wait_exit()
        if self.proc.poll() is not None:
            raise EOFError("the endpoint had exited")
        typed, _, until = line.partition(UNTIL)
        return self.poll_until(typed, until) if until else self.command(typed)

    def wait_exit(self, timeout: float = 30.0) -> str:
        """QEMU's last stderr lines and ``# exited: CODE`` once it exits by itself."""
        code = self.proc.wait(timeout)
        return self._stderr() + f"# exited: {code}\n"

    def _stderr(self) -> str:
        return "".join(f"# stderr: {line}\n" for line in _drain(self.proc).splitlines())

    def poll_until(self, cmd: str, pattern: str) -> str:
        """The output of the first of repeated ``cmd`` in which the regex ``pattern`` matches."""
        deadline = time.monotonic() + POLL_TIMEOUT
        while not re.search(pattern, out := self.command(cmd), re.MULTILINE):
            if time.monotonic() > deadline or self.proc.poll() is not None or FINISHED.search(out):
                raise TimeoutError(f"{cmd!r} never matched {pattern!r}; last:\n{out}")
            time.sleep(POLL_INTERVAL)
        return out + f"# polled until: {pattern}\n"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@dataclass
class Case:
    """Each endpoint's options, and the commands in the order they run."""

    argv: dict[str, list[str]] = field(default_factory=dict)
    steps: list[tuple[str, str]] = field(default_factory=list)  # (endpoint, command)

    @classmethod
    def parse(cls, text: str) -> Case:
        case = cls()
        for line in text.rstrip("\n").split("\n"):
            match = ENDPOINT.match(line)
            name, rest = (match[1], line[match.end() :]) if match else ("", line)
            if name in case.argv:
                case.steps.append((name, rest))
            else:
                case.argv[name] = rest.split()
        return case


@dataclass
class Recorder:
    """Runs cases with ``qemu`` (the binary and the options every case shares).

    ``made`` maps a placeholder (``$IMAGE``) to what makes its file for a case run in a folder.
    """

    here: Path
    qemu: list[str]
    made: dict[str, Callable[[Path], Path]] = field(default_factory=dict)
    banner: bool = False  # store each endpoint's first line as ``# banner: ...``

    def cases(self) -> dict[str, Case]:
        paths = sorted((self.here / "cases").glob("*.cmds"))
        return {path.stem: Case.parse(path.read_text()) for path in paths}

    def run(self, case: Case, folder: Path) -> str:
        names = self._placeholders(case, folder)

        def fill(text: str) -> str:
            for name, value in names.items():
                text = text.replace(name, value)
            return text

        # A port is a number: put back only where it follows a colon (host:port).
        back = [(f":{v}", f":{n}") if n == "$PORT" else (v, n) for n, v in names.items()]

        def unfill(text: str) -> str:
            for value, name in back:
                text = text.replace(value, name)
            return text

        out: list[str] = []
        monitors: dict[str, Monitor] = {}
        try:
            for name, argv in case.argv.items():
                out.append(f"# argv: {f'{name}: ' if name else ''}{' '.join(argv)}\n")
                monitors[name] = Monitor([*self.qemu, *map(fill, argv)], folder)
                if self.banner:
                    out.append(f"# banner: {monitors[name].banner}\n")
            out.extend(unfill(text) for text in self._steps(case, monitors, folder, fill))
        finally:
            for monitor in monitors.values():
                monitor.close()
        return "".join(out)

    def _placeholders(self, case: Case, folder: Path) -> dict[str, str]:
        """The placeholders ``case`` names, with this run's values."""
        lines = [*(" ".join(argv) for argv in case.argv.values()), *(cmd for _, cmd in case.steps)]
        values: dict[str, Callable[[], str]] = {
            "$SCRATCH": lambda: str(folder),
            "$PORT": lambda: str(free_port()),
        }
        text = "\n".join(lines)
        names = {name: value() for name, value in values.items() if name in text}
        return names | {name: str(make(folder)) for name, make in self.made.items() if name in text}

    def _steps(
        self, case: Case, monitors: dict[str, Monitor], folder: Path, fill: Callable[[str], str]
    ) -> list[str]:
        out: list[str] = []
        files = written(folder, {})
        current = ""  # a one-endpoint case names none
        for name, cmd in case.steps:
            if name != current:
                out.append(f"# endpoint: {name}\n")
                current = name
            try:
                text = monitors[name].step(fill(cmd))
            except (TimeoutError, subprocess.TimeoutExpired, EOFError) as err:
                out.append(f"# recorder error: {cmd}: {err}\n".replace("\n", " ").rstrip() + "\n")
                break
            out.append(text)
            new = written(folder, files)
            files.update(new)
            out.extend(f"# file: {file} {size}\n" for file, size in new.items())
        return out

    def record(self, names: list[str], folder: Callable[[str], Path]) -> None:
        """Record ``names`` (all cases when empty), each in the scratch ``folder(name)``."""
        cases = self.cases()
        for name in names or sorted(cases):
            (self.here / f"{name}.txt").write_text(self.run(cases[name], folder(name)))
            print(name)


def record_in_temporary_folders(recorder: Recorder, names: list[str], parent: str | None) -> None:
    """Each case in a fresh scratch directory (under ``parent``), removed afterwards."""
    with tempfile.TemporaryDirectory(dir=parent) as root:

        def folder(name: str) -> Path:
            path = Path(root) / name
            path.mkdir()
            return path

        recorder.record(names, folder)
