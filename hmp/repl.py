"""The interactive monitor: a prompt_toolkit prompt with QEMU's banner and prompt."""

from __future__ import annotations

from prompt_toolkit import PromptSession
from prompt_toolkit.patch_stdout import patch_stdout

from hmp.commands import QEMU_VERSION
from hmp.monitor import PROMPT, Monitor

BANNER = f"QEMU {QEMU_VERSION} monitor - type 'help' for more information\n"


def run_repl(mon: Monitor, session: PromptSession[str] | None = None) -> int:
    """Ctrl-C clears the line (or stops waiting for a blocking `migrate`); Ctrl-D quits."""
    session = session or PromptSession()
    mon.printf(BANNER)
    # Engine threads may report while the prompt is shown; print above it, not through it.
    with patch_stdout(raw=True):
        while not mon.quit_requested:
            try:
                line = session.prompt(PROMPT)
            except KeyboardInterrupt:
                continue
            except EOFError:
                break
            try:
                mon.execute(line)
            except KeyboardInterrupt:
                mon.printf("\n")
    return 0
