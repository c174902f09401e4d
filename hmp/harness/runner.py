"""Run transcript steps against live endpoints: replay (compare), update and record.

Directives (no output of their own):
    @wait NAME migrate STATUS [timeout=S]   poll `query-migrate` until its status is STATUS
                                            (QAPI's: setup, active, completed, failed, ...);
                                            fails at once if the migration ends otherwise
    @wait NAME status STATE [timeout=S]     poll `query-status` until its status is STATE
                                            (QAPI's RunState: running, inmigrate, ...)
    @wait NAME pass N [timeout=S]           poll `query-migrate` until ``dirty-sync-count``
                                            is at least N while it runs; fails at once if the
                                            migration has ended (shows one not converging)
    @qemu RELEASE                           the QEMU release the qemu-hmp endpoints speak
                                            (``--qemu RELEASE``); before the first start
    @kill NAME                              SIGKILL the endpoint (a host that dies)
    @stderr NAME                            the lines below are NAME's next stderr lines
                                            (async messages), waited for up to the timeout
    @ignore-stderr NAME                     NAME's stderr from here on is not compared (what
                                            QEMU's destination says of a cut stream varies)
Stderr lines nobody expected are reported at the end as an extra ``@stderr`` block.

Every endpoint also serves QMP (``-qmp`` on a private socket, see Endpoint), where the waits
read, so no wait parses monitor text and no poll shows in a transcript.

An endpoint whose command is ``qemu-system-*`` is a real QEMU, typed at through ``qemu-hmp
--connect`` (hmp/harness/qemu_endpoint.py); ``{dir}`` in a step is a private directory of
the run, for its sockets, and ``{here}`` the transcript's folder. ``against_qemu`` starts
every qemu-hmp endpoint as that QEMU instead.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hmp.harness.endpoint import Endpoint, EndpointError, EndpointExited, free_port
from hmp.harness.qemu_endpoint import QemuEndpoint, is_qemu, qemu_argv
from hmp.harness.qmp_client import MIGRATION_ENDED, QmpClientError, QmpTimeout
from hmp.harness.transcript import (
    Kind,
    Step,
    expand_ports,
    generaliser,
    literal,
    parse,
    port_names,
    reconcile,
    render,
)

COMMAND_TIMEOUT = 10.0  # seconds for one command or an @stderr block
START_TIMEOUT = 30.0  # an endpoint's start (imports, guest fill) is slower on a loaded machine
WAIT_TIMEOUT = 30.0  # default of @wait
POLL_INTERVAL = 0.05  # between two polls of @wait
DIR = "{dir}"  # a step's private directory of the run (QEMU's sockets)
HERE = "{here}"  # the transcript's own folder (the images its endpoints load)
WRITER = re.compile(r"random-writer|\brate=[1-9]")  # a --workload whose guest writes


def _migration_status(info: Mapping[str, Any]) -> str:
    return str(info.get("status", "none"))


def _dirty_sync_count(info: Mapping[str, Any]) -> str:
    return str(info.get("ram", {}).get("dirty-sync-count", "(none)"))


# What each @wait polls over QMP, and the value it awaits in the answer.
WAITS: dict[str, tuple[str, Callable[[Mapping[str, Any]], str]]] = {
    "migrate": ("query-migrate", _migration_status),
    "status": ("query-status", lambda info: str(info["status"])),
    "pass": ("query-migrate", _dirty_sync_count),
}


class StepError(Exception):
    """A step could not run (a hang, a dead endpoint, a bad directive): the run stops."""


@dataclass
class Result:
    path: str
    expected: str  # the transcript as read
    actual: str  # the transcript with actual output, patterns kept where they match
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.errors and self.actual == self.expected

    def diff(self) -> str:
        lines = difflib.unified_diff(
            self.expected.splitlines(keepends=True),
            self.actual.splitlines(keepends=True),
            self.path,
            f"{self.path} (actual)",
        )
        return "".join(lines) + "".join(f"error: {e}\n" for e in self.errors)


class Session:
    """The endpoints of one run. ``record``: no expectations, and stderr is noted as it comes.

    Use as a context manager: every endpoint is killed on exit, whatever happened.
    """

    def __init__(
        self,
        *,
        timeout: float = COMMAND_TIMEOUT,
        generalise: bool = False,
        against_qemu: bool = False,
        here: str = ".",
    ) -> None:
        self.timeout = timeout
        self.here = here
        self.generalise = generalise
        self.against_qemu = against_qemu
        self.endpoints: dict[str, Endpoint | QemuEndpoint] = {}
        self.quiet: dict[str, bool] = {}  # endpoint -> its guest writes nothing
        self.ports: dict[str, int] = {}
        self.unchecked: set[str] = set()  # @ignore-stderr
        self.release: str | None = None  # `@qemu RELEASE`: the dialect of qemu-hmp endpoints
        # The run's directory: {dir} in steps, and the endpoints' working directory, so files
        # they name relatively (`pmemsave`, an exec: command's) go with the run.
        self._dir = tempfile.TemporaryDirectory(prefix="qemu-hmp-run-")

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        for endpoint in self.endpoints.values():
            endpoint.kill()
        self._dir.cleanup()

    def expand(self, text: str) -> str:
        for name in port_names(text):
            self.ports.setdefault(name, free_port())
        return expand_ports(text, self.ports).replace(DIR, self._dir.name).replace(HERE, self.here)

    def run(self, step: Step) -> Step:
        """The step with its actual output as its expectation (matching lines kept)."""
        if step.kind is Kind.PROSE:
            return step
        actual = self._actual(step)
        if self.generalise and step.kind is Kind.COMMAND:
            fallback = generaliser(actual, self.ports, self.quiet[step.name])
        else:
            fallback = self._literal
        return replace(step, expected=reconcile(step.expected, actual, self.ports, fallback))

    def _literal(self, line: str) -> str:
        return literal(line, self.ports)

    def _endpoint(self, name: str) -> Endpoint | QemuEndpoint:
        if name not in self.endpoints:
            raise StepError(f"no endpoint {name!r} was started")
        return self.endpoints[name]

    def _actual(self, step: Step) -> list[str]:
        try:
            if step.kind is Kind.START:
                return self._start(step)
            if step.kind is Kind.COMMAND:
                output = self._endpoint(step.name).execute(self.expand(step.arg), self.timeout)
                return output.splitlines()
            return self._directive(step)
        except EndpointError as err:
            raise StepError(str(err)) from None

    def _start(self, step: Step) -> list[str]:
        if step.name in self.endpoints:
            raise StepError(f"endpoint {step.name!r} is already started")
        argv = shlex.split(self.expand(step.arg))
        if self.release and argv and Path(argv[0]).name == "qemu-hmp":
            argv[1:1] = ["--qemu", self.release]
        endpoint: Endpoint | QemuEndpoint
        if self.against_qemu and argv[:1] == ["qemu-hmp"]:  # QEMU's errors under our name
            endpoint = QemuEndpoint(qemu_argv(argv), name=step.name, program_as="qemu-hmp")
        elif is_qemu(argv):
            endpoint = QemuEndpoint(argv, name=step.name)
        else:
            endpoint = Endpoint(argv, name=step.name, qmp=True, cwd=self._dir.name)
        self.endpoints[step.name] = endpoint
        # A guest writes with random-writer, or with a rate (idle's background writes).
        self.quiet[step.name] = not any(WRITER.search(arg) for arg in argv)
        try:
            endpoint.wait_ready(max(self.timeout, START_TIMEOUT))
        except EndpointExited:  # a bad command line: what it said, and its exit status
            status = endpoint.close(self.timeout)
            return [*endpoint.read_stderr(timeout=self.timeout), f"[{status}]"]
        return []

    def _directive(self, step: Step) -> list[str]:
        word, *args = step.arg.split()
        if word == "wait" and len(args) >= 3 and args[1] in WAITS:
            self._wait(*args)
            return []
        if word == "qemu" and len(args) == 1:
            if self.endpoints:
                raise StepError("@qemu must come before the first endpoint starts")
            self.release = args[0]
            return []
        if word == "kill" and len(args) == 1:
            self._endpoint(args[0]).kill()
            return []
        if word == "ignore-stderr" and len(args) == 1:
            self._endpoint(args[0]).read_stderr()
            self.unchecked.add(args[0])
            return []
        if word == "stderr" and len(args) == 1:
            return self._endpoint(args[0]).read_stderr(len(step.expected), self.timeout)
        raise StepError(f"bad directive: {step.text}")

    def _wait(self, name: str, what: str, *words: str) -> None:
        timeout = WAIT_TIMEOUT
        if words[-1].startswith("timeout="):
            try:
                timeout = float(words[-1].removeprefix("timeout=").removesuffix("s"))
            except ValueError:
                raise StepError(f"bad timeout: {words[-1]}") from None
            words = words[:-1]
        if not words:
            raise StepError(f"@wait {name} {what}: which state?")
        want = " ".join(words)
        if what == "pass" and not want.isdigit():
            raise StepError(f"@wait {name} pass: a number, not {want!r}")
        command, value = WAITS[what]

        def reached(info: Mapping[str, Any]) -> bool:
            status = _migration_status(info)
            if what == "pass":  # a migration still under way that reached pass ``want``
                if status in MIGRATION_ENDED:
                    raise StepError(
                        f"{name}: migrate is {status!r} at pass {value(info)}, waited for {want}"
                    )
                return value(info).isdigit() and int(value(info)) >= int(want)
            if value(info) == want:
                return True
            if what == "migrate" and status in MIGRATION_ENDED:
                raise StepError(f"{name}: migrate is {_described(info)!r}, waited for {want!r}")
            return False

        try:
            self._endpoint(name).qmp.poll(command, reached, timeout, POLL_INTERVAL)
        except QmpTimeout as err:
            if err.last is None:  # the request itself had no answer
                raise StepError(f"{name}: {err}") from None
            raise StepError(
                f"{name}: {what} still {value(err.last)!r} after {timeout:g}s"
            ) from None
        except (QmpClientError, EndpointError) as err:
            raise StepError(f"{name}: {err}") from None

    def new_stderr(self) -> list[Step]:
        """Record mode: stderr lines that arrived since the last look, as @stderr steps."""
        return self._stderr_steps(ep.read_stderr() for ep in self.endpoints.values())

    def close(self) -> list[Step]:
        """End every endpoint's input; stderr lines never consumed, as @stderr steps."""
        for endpoint in self.endpoints.values():
            endpoint.close(self.timeout)
        return self._stderr_steps(
            ep.read_stderr(timeout=self.timeout) for ep in self.endpoints.values()
        )

    def _stderr_steps(self, outputs: Iterable[list[str]]) -> list[Step]:
        return [
            Step(Kind.DIRECTIVE, f"@stderr {name}", arg=f"stderr {name}", expected=lines)
            for name, lines in zip(self.endpoints, outputs, strict=True)
            if lines and name not in self.unchecked
        ]


def _described(info: Mapping[str, Any]) -> str:
    """A migration's status with its failure's reason, as `info migrate` words it."""
    reason = info.get("error-desc")
    return f"{_migration_status(info)} ({reason})" if reason else _migration_status(info)


def run_steps(
    steps: Iterable[Step], session: Session, errors: list[str], record: bool = False
) -> Iterator[Step]:
    """Run ``steps`` in order, yielding each with its actual output (lazily, for a live view).

    On a failed step the error is noted and the remaining steps are yielded unchanged, so a
    diff shows the failure where it happened and nothing else. ``record`` also yields the
    stderr lines seen after each step as @stderr steps.
    """
    pending = iter(steps)
    for step in pending:
        try:
            yield session.run(step)
        except StepError as err:
            errors.append(f"line {step.lineno}: {err}")
            yield step
            yield from pending
            return
        if record:
            yield from session.new_stderr()
    yield from session.close()


def replay(
    text: str,
    path: str = "<transcript>",
    *,
    timeout: float = COMMAND_TIMEOUT,
    update: bool = False,
    against_qemu: bool = False,
    here: str | None = None,
) -> Result:
    """Run a transcript; ``update`` writes unmatched volatile figures as placeholders;
    ``against_qemu`` runs its qemu-hmp endpoints as real QEMUs (see qemu_argv); ``here``
    is its folder (default: ``path``'s)."""
    started = time.monotonic()
    errors: list[str] = []
    here = here or os.path.dirname(os.path.abspath(path))
    with Session(
        timeout=timeout, generalise=update, against_qemu=against_qemu, here=here
    ) as session:
        actual = render(list(run_steps(parse(text), session, errors)))
    return Result(path, text, actual, errors, time.monotonic() - started)
