"""A person at a terminal: the REPL (prompt_toolkit), completion, highlighting, the progress
toolbar, messages above the prompt, `--pair`, and `--connect` (the shell in front of a real
QEMU). Importing this package does not load prompt_toolkit: batch mode reads the shell's
options too."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hmp.shell.connect import run_connect
from hmp.shell.options import USAGE, ShellOptions
from hmp.shell.toolbar import Progress, progress_text

if TYPE_CHECKING:
    from hmp.monitor import Monitor


def run_repl(mon: Monitor, *, history: bool) -> int:
    from hmp.shell.repl import run_repl as run  # prompt_toolkit only when a person is typing

    return run(mon, history=history)


def run_pair(mon: Monitor, shell: ShellOptions) -> int:
    from hmp.shell.pair import run_pair as run

    return run(mon, shell)


__all__ = [
    "USAGE",
    "Progress",
    "ShellOptions",
    "progress_text",
    "run_connect",
    "run_pair",
    "run_repl",
]
