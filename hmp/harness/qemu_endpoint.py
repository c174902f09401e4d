"""A real QEMU as a transcript endpoint, typed at through ``qemu-hmp --connect``.

The harness starts QEMU with the transcript's command line plus a ``-qmp`` socket of its own
(where the ``@wait`` directives poll, as for a qemu-hmp endpoint), then a ``qemu-hmp
--connect`` shell in batch mode on the QMP socket the command line names (or on one it adds):
each ``NAME> LINE`` goes through that shell, so its output is QEMU's ``human-monitor-command``
answer. QEMU's stderr (its asynchronous error reports) is what ``@stderr`` reads.

``qemu_argv`` turns a qemu-hmp command line into QEMU's (``replay --against-qemu``): the
QEMU of the release its ``--qemu`` names (7.2 by default), from ``RELEASES``.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hmp.harness.endpoint import Endpoint, EndpointError, EndpointExited
from hmp.harness.qmp_client import QmpClient, QmpClientError, QmpConnectionError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Release:
    """How to run one QEMU release: its binary, and the folder its sockets must be in (QEMU
    11.1 runs in a chroot that shares only that folder, tests/data/qemu-11.1/README.md)."""

    binary: str
    folder: str | None = None


# The releases `--qemu` names; an environment variable names another binary for each.
RELEASES = {
    "7.2": Release(os.environ.get("QEMU_HMP_QEMU", "qemu-system-x86_64")),
    "11.1": Release(os.environ.get("QEMU_HMP_QEMU_11_1", "qemu11-system-x86_64"), "/tmp/qemu11"),
}
DEFAULT_RELEASE = "7.2"
QEMU_NAME = re.compile(r"^qemu\d*-system-")  # qemu-system-x86_64, qemu11-system-x86_64
QEMU_PROGRAM = "qemu-system-x86_64: "  # QEMU's prefix of an error report
START_POLL_S = 0.05  # between two attempts to reach a starting QEMU's QMP socket

# qemu-hmp options QEMU has too (with a value, or a flag), passed on as they are.
SHARED_WITH_VALUE = frozenset({"-m", "-incoming", "-name", "-device", "-D", "-M", "-machine"})
SHARED_WITH_VALUE |= frozenset({"-smp", "-accel", "-cpu", "-display", "-qmp"})
SHARED_FLAGS = frozenset({"-S", "-mem-prealloc", "-nodefaults", "-nographic", "-no-user-config"})
# Ours alone (the guest's content and writes, the shell's options): QEMU has no equivalent.
OURS_WITH_VALUE = frozenset({"-workload", "-seed", "-monitor"})
OURS_FLAGS = frozenset({"-pair", "-no-history"})


def is_qemu(argv: Sequence[str]) -> bool:
    return bool(argv) and bool(QEMU_NAME.match(Path(argv[0]).name))


def release_of(binary: str) -> str:
    """The release a QEMU binary is (7.2 for one not in RELEASES)."""
    name = Path(binary).name
    return next((k for k, r in RELEASES.items() if Path(r.binary).name == name), DEFAULT_RELEASE)


def release_folder(binary: str) -> str | None:
    """The folder a QEMU binary's sockets must be in (None: anywhere)."""
    return RELEASES[release_of(binary)].folder


def qemu_argv(argv: Sequence[str]) -> list[str]:
    """The QEMU command line of a qemu-hmp one: the release's QEMU (``--qemu``), with the same
    RAM, images, -incoming and -S, on a machine with nothing else (``-M none``, which migrates
    its RAM alone) unless it names one, under TCG, no display. qemu-hmp's own options are
    left out: QEMU has no guest workload."""
    release = DEFAULT_RELEASE
    out: list[str] = []
    seen: set[str] = set()
    args = iter(argv[1:])
    for arg in args:
        option = arg[1:] if arg.startswith("--") else arg
        if option == "-qemu" or option.startswith("-qemu="):
            release = option.partition("=")[2] or next(args, "")
        elif option in SHARED_WITH_VALUE:
            seen.add(option)
            out += [option, next(args, "")]
        elif option in SHARED_FLAGS:
            seen.add(option)
            out.append(option)
        elif option in OURS_WITH_VALUE:
            next(args, None)
        elif option not in OURS_FLAGS:
            out.append(arg)  # QEMU says what it thinks of it
    if not seen & {"-M", "-machine"}:
        out += ["-M", "none"]
    defaults = {"-accel": ["-accel", "tcg"], "-display": ["-display", "none"]}
    for option, words in defaults.items():
        if option not in seen:
            out += words
    if "-nodefaults" not in seen:
        out.append("-nodefaults")
    if release not in RELEASES:  # qemu-hmp would refuse it too
        raise EndpointError(f"no QEMU for release {release!r} (known: {', '.join(RELEASES)})")
    return [RELEASES[release].binary, *out]


def _qmp_address(argv: Sequence[str]) -> str | None:
    """The first ``-qmp unix:PATH,...`` or ``tcp:HOST:PORT,...`` of a QEMU command line."""
    for option, value in itertools.pairwise(argv):
        if option.lstrip("-") == "qmp" and value.startswith(("unix:", "tcp:")):
            return value.split(",", 1)[0]
    return None


def _loaders_copied(argv: Sequence[str], folder: Path) -> list[str]:
    """``argv`` with each ``-device loader,file=PATH`` image copied into ``folder``."""
    out = list(argv)
    for i, (option, value) in enumerate(itertools.pairwise(argv)):
        if option.lstrip("-") != "device" or not value.startswith("loader,"):
            continue
        props = value.split(",")
        for k, prop in enumerate(props):
            if prop.startswith("file="):
                copy = folder / f"loader{i}-{Path(prop[5:]).name}"
                shutil.copyfile(prop[5:], copy)
                props[k] = f"file={copy}"
        out[i + 1] = ",".join(props)
    return out


def _pump(stream: IO[bytes], lines: queue.Queue[str | None], edit: Callable[[str], str]) -> None:
    for raw in iter(stream.readline, b""):
        lines.put(edit(raw.decode("utf-8", "replace").removesuffix("\n")))
    lines.put(None)  # end of stream: QEMU has exited


class QemuEndpoint:
    """One QEMU process and the ``qemu-hmp --connect`` shell that types at it.

    ``program_as``: a name that QEMU's error reports are shown under instead of its own
    (``qemu-hmp`` when a transcript recorded on qemu-hmp replays against QEMU).
    """

    def __init__(self, argv: Sequence[str], *, name: str, program_as: str | None = None) -> None:
        self.name = name
        folder = release_folder(argv[0])
        if folder is not None:
            os.makedirs(folder, exist_ok=True)
        self._dir = tempfile.TemporaryDirectory(prefix="qemu-hmp-qemu-", dir=folder)
        if folder is not None:  # what QEMU reads must be where it can see it too
            argv = _loaders_copied(argv, Path(self._dir.name))
        self._qmp_path = str(Path(self._dir.name) / "harness.qmp")
        extra = ["-qmp", f"unix:{self._qmp_path},server=on,wait=off"]
        self.address = _qmp_address(argv)
        if self.address is None:
            self.address = f"unix:{Path(self._dir.name) / 'shell.qmp'}"
            extra += ["-qmp", f"{self.address},server=on,wait=off"]
        self.proc = subprocess.Popen(
            [*argv, *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        prefix = f"{program_as}: " if program_as else QEMU_PROGRAM

        def edit(line: str) -> str:
            return prefix + line[len(QEMU_PROGRAM) :] if line.startswith(QEMU_PROGRAM) else line

        self._stderr: queue.Queue[str | None] = queue.Queue()
        self._stderr_eof = False
        assert self.proc.stderr is not None
        threading.Thread(
            target=_pump, args=(self.proc.stderr, self._stderr, edit), daemon=True
        ).start()
        self.shell: Endpoint | None = None
        self._qmp: QmpClient | None = None

    @property
    def qmp(self) -> QmpClient:
        if self._qmp is None:
            raise EndpointError(f"{self.name}: QEMU's QMP is not connected (not ready)")
        return self._qmp

    def wait_ready(self, timeout: float) -> None:
        """Once QEMU answers QMP, start the shell on its socket; EndpointExited if QEMU ended
        (a bad command line: its stderr says why)."""
        deadline = time.monotonic() + timeout
        tick = threading.Event()  # never set: a pause between two attempts
        while self._qmp is None:
            if self.proc.poll() is not None:
                raise EndpointExited(f"{self.name}: QEMU exited with status {self.proc.returncode}")
            try:
                self._qmp = QmpClient(self._qmp_path, max(0.1, deadline - time.monotonic()))
            except QmpConnectionError:  # its socket is not there yet
                if time.monotonic() > deadline:
                    raise EndpointError(
                        f"{self.name}: QEMU's QMP not up after {timeout:g}s"
                    ) from None
                tick.wait(START_POLL_S)
            except QmpClientError as err:
                raise EndpointError(f"{self.name}: {err}") from None
        assert self.address is not None
        self.shell = Endpoint(["qemu-hmp", "--connect", self.address], name=self.name)
        self.shell.wait_ready(max(0.1, deadline - time.monotonic()))

    def execute(self, line: str, timeout: float) -> str:
        if self.shell is None:
            raise EndpointError(f"{self.name}: not started")
        return self.shell.execute(line, timeout)

    def read_stderr(self, count: int | None = None, timeout: float = 0.0) -> list[str]:
        """QEMU's stderr lines, as Endpoint.read_stderr collects them: until ``count`` lines,
        QEMU's end of stream, or ``timeout`` seconds. (The shell's own stderr only says that
        QEMU went away, which the steps show as the endpoint's end.)"""
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while not self._stderr_eof and (count is None or len(lines) < count):
            try:
                line = self._stderr.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                self._stderr_eof = True
            else:
                lines.append(line)
        return lines

    def kill(self) -> None:
        """SIGKILL QEMU (a host that dies), and its shell with it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.shell is not None:
            self.shell.kill()
        self._release()

    def close(self, timeout: float = 5.0) -> int:
        """The shell's input ends, then QMP ``quit``; QEMU's exit status (killed if it lingers)."""
        if self.shell is not None:
            self.shell.close(timeout)
        if self._qmp is not None and self.proc.poll() is None:
            try:
                self._qmp.execute("quit", timeout=timeout)
            except QmpClientError as err:  # it may be ending already
                log.debug("%s: QMP quit: %s", self.name, err)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s: QEMU still running %gs after quit: killed", self.name, timeout)
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._release()

    def _release(self) -> None:
        if self._qmp is not None:
            self._qmp.close()
        self._dir.cleanup()
