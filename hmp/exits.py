"""How a qemu-hmp process ends when the world intervenes: signals and broken stdio.

As QEMU does, SIGTERM (and SIGINT when no person types at a terminal; the REPL reads Ctrl-C
as a key) ends the process cleanly: a running migration is cancelled, the machine closed,
``qemu-hmp: terminating on signal N`` written, status 0. A full disk or a closed pipe gives
one line on stderr and status 1, not a traceback.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from types import FrameType


class Terminated(BaseException):
    """Raised in the main thread by a signal. A BaseException, so that no command's
    ``except Exception`` swallows it: it unwinds to the ``finally`` that closes the machine."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Later signals must not interrupt the cleanup this one starts (its waits are bounded).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


def _silence_stdout() -> None:
    """The reader of stdout is gone: let the interpreter's final flush go nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def run_as_process(main: Callable[[list[str]], int], argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    if not sys.stdin.isatty():
        signal.signal(signal.SIGINT, _terminate)
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
