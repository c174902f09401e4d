"""Keys typed while a blocking `migrate` waits reach the next prompt in the order typed.

`test_repl_tty.py::test_blocking_migrate_returns_to_the_prompt_when_it_completes` failed 1
full-suite run in 2 under load: `info status` and Enter, typed as the wait ended, showed as
an empty prompt and then `(qemu) info status` with no answer. The wait's application had
dispatched `info status` (ours to keep) but not yet the Enter, which prompt_toolkit stores as
typeahead itself when the application exits; ours was appended after it. Here the exit's own
store is made first, as prompt_toolkit does, and the order checked.
"""

from __future__ import annotations

from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.input.typeahead import get_typeahead, store_typeahead
from prompt_toolkit.key_binding import KeyPress
from prompt_toolkit.keys import Keys

from hmp.shell.repl import keep_typed_ahead


def test_keys_dispatched_during_the_wait_come_before_those_it_left() -> None:
    typed = [KeyPress(ch, ch) for ch in "info status"]
    with create_pipe_input() as keyboard:
        store_typeahead(keyboard, [KeyPress(Keys.ControlM, "\r")])  # the application's exit
        keep_typed_ahead(keyboard, typed)
        assert [k.data for k in get_typeahead(keyboard)] == [*"info status", "\r"]
