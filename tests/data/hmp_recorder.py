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

In options and commands, ``$SCRATCH`` is the case's scratch directory, ``$PORT`` and
``$RPORT`` free TCP ports on 127.0.0.1 (a destination's, and a second one, e.g. to recover a
postcopy migration on), ``$PROXY`` the port of a relay the recorder runs to ``$PORT``, and a
recorder may make files of its own (``Recorder.made``, e.g. ``$IMAGE``); outputs name them the
same way, so a recording does not depend on the run.
``CMD @until REGEX`` repeats CMD until REGEX matches in its output (``re.MULTILINE``) and
stores that output, marked ``# polled until: REGEX``. An endpoint that exits is marked
``# exited: CODE`` (after the command that ended it, or where the case waits for it with the
line ``@exit``). The line ``@kill`` SIGKILLs the endpoint (``# killed``, then its last stderr
lines and ``# exited: -9``); ``@stop`` and ``@cont`` SIGSTOP and SIGCONT it (``# stopped``,
``# continued``), to hold it still while its peer acts (type nothing to it meanwhile);
``@rss`` notes its resident memory (``# rss: N kB``, VmRSS of /proc/PID/status);
``@cut`` shuts down every connection through the ``$PROXY`` relay at once (``# cut: N
connections``, one per channel), as a broken network would. ``Recording.parse`` reads a
recording back into its steps. A command that timed out or was sent to an endpoint that had
exited, or an ``@until`` that a finished migration can no longer meet, ends the case with a
``# recorder error: ...`` line.
"""

from __future__ import annotations

import re
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qmp_recorder import free_port

PROMPT = b"(qemu) "
UNTIL = " @until "
EXIT = "@exit"
KILL = "@kill"
CUT = "@cut"
RSS = "@rss"
SIGNALS = {"@stop": (signal.SIGSTOP, "# stopped\n"), "@cont": (signal.SIGCONT, "# continued\n")}
ACTIONS = (EXIT, KILL, CUT, RSS, *SIGNALS)  # recorder actions: lines of a case that type nothing
PORTS = ("$PORT", "$RPORT", "$PROXY")  # placeholders that are TCP ports
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
        if line == KILL:
            self.proc.kill()
            return "# killed\n" + self.wait_exit()
        if line == RSS:
            return f"# rss: {self.rss_kib()} kB\n"
        if line in SIGNALS:
            sig, note = SIGNALS[line]
            self.proc.send_signal(sig)
            return note
        if self.proc.poll() is not None:
            raise EOFError("the endpoint had exited")
        typed, _, until = line.partition(UNTIL)
        return self.poll_until(typed, until) if until else self.command(typed)

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)[1])  # type: ignore[index]

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


class Relay(threading.Thread):
    """Relays every connection made to its port to ``target`` (a port on 127.0.0.1), byte for
    byte, until ``cut`` shuts them all down at once."""

    def __init__(self, target: int) -> None:
        super().__init__(name="relay", daemon=True)
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.lock = threading.Lock()
        self.socks: list[socket.socket] = []

    def run(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
            b.shutdown(socket.SHUT_WR)
        except OSError:  # cut, or the peer went away: the other direction sees it too
            pass

    def cut(self) -> str:
        with self.lock:
            socks, self.socks = self.socks, []
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by its peer
                pass
            sock.close()
        count = len(socks) // 2
        return f"# cut: {count} connection{'s' * (count != 1)}\n"

    def close(self) -> None:
        self.cut()
        self.server.close()


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
        relay = None
        if "$PROXY" in names:
            relay = Relay(int(names["$PORT"]))
            relay.start()
            names["$PROXY"] = str(relay.port)

        def fill(text: str) -> str:
            for name, value in names.items():
                text = text.replace(name, value)
            return text

        # A port is a number: put back only where it follows a colon (host:port).
        back = [(f":{v}", f":{n}") if n in PORTS else (v, n) for n, v in names.items()]

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
            steps = self._steps(case, monitors, folder, fill, relay)
            out.extend(unfill(text) for text in steps)
        finally:
            for monitor in monitors.values():
                monitor.close()
            if relay:
                relay.close()
        return "".join(out)

    def _placeholders(self, case: Case, folder: Path) -> dict[str, str]:
        """The placeholders ``case`` names, with this run's values."""
        lines = [*(" ".join(argv) for argv in case.argv.values()), *(cmd for _, cmd in case.steps)]
        values: dict[str, Callable[[], str]] = {
            "$SCRATCH": lambda: str(folder),
            "$PORT": lambda: str(free_port()),
            "$RPORT": lambda: str(free_port()),
            "$PROXY": lambda: "",  # the relay's port, once it listens
        }
        text = "\n".join(lines)
        names = {name: value() for name, value in values.items() if name in text}
        return names | {name: str(make(folder)) for name, make in self.made.items() if name in text}

    def _steps(
        self,
        case: Case,
        monitors: dict[str, Monitor],
        folder: Path,
        fill: Callable[[str], str],
        relay: Relay | None,
    ) -> list[str]:
        out: list[str] = []
        files = written(folder, {})
        current = ""  # a one-endpoint case names none
        for name, cmd in case.steps:
            if name != current:
                out.append(f"# endpoint: {name}\n")
                current = name
            if cmd == CUT:
                assert relay, "@cut in a case that does not use $PROXY"
                out.append(relay.cut())
                continue
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


# The note each action leaves (one ending in a space is a prefix).
NOTES = {"# killed": KILL, "# stopped": "@stop", "# continued": "@cont", "# cut: ": CUT}
NOTES |= {"# rss: ": RSS}


def _action(line: str) -> str:
    """The action that a recorder's note ``line`` stands for, or ''."""
    for note, action in NOTES.items():
        if line == note or (note.endswith(" ") and line.startswith(note)):
            return action
    return ""


@dataclass
class Step:
    """One recorded command (``typed``, its exact output and stderr lines), or an action."""

    endpoint: str
    typed: str  # the command as typed (an ``@until`` stored as the command it repeated), or
    # the action (@kill, @stop, @cont, @cut)
    output: str = ""
    stderr: list[str] = field(default_factory=list)
    until: str = ""  # the pattern of an ``@until`` that ended on this output
    exited: int | None = None  # the endpoint's exit status, noted after this step


@dataclass
class Recording:
    """A recording read back: each endpoint's options, the steps, a recorder error if any."""

    argv: dict[str, str] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    error: str = ""

    @classmethod
    def parse(cls, text: str) -> Recording:
        rec, endpoint = cls(), ""
        for line in text.splitlines(keepends=True):
            bare = line.rstrip("\n")
            note = _action(bare)
            if bare.startswith("# argv: "):
                name, sep, rest = bare.removeprefix("# argv: ").partition(": ")
                named = sep and name in ("src", "dst")
                rec.argv.update({name: rest} if named else {"": bare.removeprefix("# argv: ")})
            elif bare.startswith("# endpoint: "):
                endpoint = bare.removeprefix("# endpoint: ")
            elif bare.startswith("(qemu) "):
                rec.steps.append(Step(endpoint, bare.removeprefix("(qemu) ")))
            elif note:
                rec.steps.append(Step(endpoint, note))
            elif bare.startswith("# stderr: "):
                rec.steps[-1].stderr.append(bare.removeprefix("# stderr: "))
            elif bare.startswith("# polled until: "):
                rec.steps[-1].until = bare.removeprefix("# polled until: ")
            elif bare.startswith("# exited: "):
                rec.steps[-1].exited = int(bare.removeprefix("# exited: "))
            elif bare.startswith("# recorder error: "):
                rec.error = bare.removeprefix("# recorder error: ")
            elif not bare.startswith(("# banner: ", "# file: ")):
                rec.steps[-1].output += line
        return rec


def record_in_temporary_folders(recorder: Recorder, names: list[str], parent: str | None) -> None:
    """Each case in a fresh scratch directory (under ``parent``), removed afterwards."""
    with tempfile.TemporaryDirectory(dir=parent) as root:

        def folder(name: str) -> Path:
            path = Path(root) / name
            path.mkdir()
            return path

        recorder.record(names, folder)
