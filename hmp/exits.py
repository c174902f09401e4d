"""How a qemu-hmp process ends when the world intervenes: signals and broken stdio.

As QEMU does, SIGTERM (and SIGINT when no person types at a terminal; the REPL reads Ctrl-C
as a key) ends the process cleanly: a running migration is cancelled, the machine closed,
``qemu-hmp: terminating on signal N`` written, status 0. A full disk or a closed pipe gives
one line on stderr and status 1, not a traceback. A ``quit`` typed into a front end other
than stdio (QMP, a monitor socket) ends the process from that front end's thread
(`ProcessEnd`); with such front ends the process outlives the end of stdin (`serve_until_quit`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import termios
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import NoReturn

log = logging.getLogger(__name__)


class Terminated(BaseException):
    """Raised in the main thread by a signal. A BaseException, so that no command's
    ``except Exception`` swallows it: it unwinds to the ``finally`` that closes the machine."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_deferred: list[int] = []  # signals that came inside `deferred()`; the main thread's only
_deferring = False


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Later signals must not interrupt the cleanup this one starts (its waits are bounded).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    if _deferring:
        _deferred.append(signum)
        return
    raise Terminated(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A signal that comes inside waits until the block is over (then it raises Terminated).

    The handler raises wherever the main thread is; inside a constructor that has started
    threads, or before its result is registered for release, what exists would be lost to
    the cleanup and a non-daemon thread would keep the process from ending. Only for blocks
    that end by themselves, soon.
    """
    global _deferring
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
    _raise_deferred()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Inside `deferred()`, a wait a signal may end (a first client that may never come)."""
    global _deferring
    outer, _deferring = _deferring, False
    try:
        _raise_deferred()
        yield
    finally:
        _deferring = outer


def _raise_deferred() -> None:
    if _deferred:
        raise Terminated(_deferred.pop())


def _silence_stdout() -> None:
    """The reader of stdout is gone: let the interpreter's final flush go nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _relay_signals() -> None:
    """Make a signal reach the main thread whichever thread the kernel gave it to.

    Python runs signal handlers in the main thread only, when it next runs Python code; a
    signal delivered to another thread (an engine or QMP thread) leaves a main thread blocked
    in ``read()`` on stdin blocked for good. The wakeup fd hears of every signal; this thread
    re-sends each to the main thread, whose blocking call then returns (EINTR) and the
    handler runs. A second copy is harmless: the handler ignores later signals.
    """
    readable, writable = os.pipe()
    os.set_blocking(writable, False)
    signal.set_wakeup_fd(writable, warn_on_full_buffer=False)
    main = threading.main_thread()

    def relay() -> None:
        while data := os.read(readable, 64):
            for signum in data:  # only those that end the process (a tty's Ctrl-C is a key)
                if signal.getsignal(signum) is _terminate and main.ident is not None:
                    signal.pthread_kill(main.ident, signum)

    threading.Thread(target=relay, name="signal-relay", daemon=True).start()


def run_as_process(main: Callable[[list[str]], int], argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    if not sys.stdin.isatty():
        signal.signal(signal.SIGINT, _terminate)
    _relay_signals()
    try:
        return main(argv)
    except Terminated as exc:
        sys.stderr.write(f"qemu-hmp: terminating on signal {exc.signum}\n")
        return 0
    except BrokenPipeError:
        _silence_stdout()
        sys.stderr.write("qemu-hmp: output closed early (broken pipe)\n")
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        sys.stderr.write(f"qemu-hmp: {where}{exc.strerror or exc}\n")
        return 1


class ProcessEnd:
    """``quit`` from a front end's thread, as QEMU's: release what was registered, restore the
    terminal (a prompt may be up on stdin), exit 0 whatever the main thread is doing."""

    def __init__(self) -> None:
        self._tty = termios.tcgetattr(0) if sys.stdin.isatty() else None
        self._cleanups: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def on_end(self, cleanup: Callable[[], None]) -> None:
        self._cleanups.append(cleanup)

    def release(self) -> None:
        """Run the cleanups, last registered first (front ends before the machine), once."""
        with self._lock:
            cleanups, self._cleanups = self._cleanups, []
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception:  # one that fails must not keep the others from releasing
                log.exception("releasing %r at the end", cleanup)

    def now(self) -> NoReturn:
        self.release()
        if self._tty is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(0, termios.TCSANOW, self._tty)
            sys.stdout.write("\x1b[?2004l\x1b[?25h\n")  # bracketed paste off, cursor on
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def serve_until_quit() -> None:
    """After stdin's monitor ended (or without one): serve the other front ends until one of
    them quits (`ProcessEnd`), or Ctrl-C, as QEMU outlives its monitor's input."""
    try:
        while True:  # no Condition: a signal raising inside its wait can half-release its lock
            signal.pause()
    except KeyboardInterrupt:
        sys.stderr.write("qemu-hmp: terminating on signal 2\n")
