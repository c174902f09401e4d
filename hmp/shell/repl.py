"""The interactive monitor: QEMU's banner and `(qemu) ` prompt on a prompt_toolkit session.

History, completion, highlighting and the live toolbar are this module's; what a line does is
the Monitor's. Everything printed while the prompt is up (command output, engine reports from
other threads, the watcher's notices) goes through ``patch_stdout``, which draws it above the
prompt and redraws the line being typed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from prompt_toolkit import Application, PromptSession
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.completion import Completer
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.input.typeahead import get_typeahead, store_typeahead
from prompt_toolkit.key_binding import KeyBindings, KeyPress, KeyPressEvent
from prompt_toolkit.keys import Keys
from prompt_toolkit.layout import FormattedTextControl, Layout, Window
from prompt_toolkit.lexers import PygmentsLexer
from prompt_toolkit.output import Output
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.styles import Style

from engine.machine import Machine
from engine.snapshot import MigrationInfo
from engine.state import FOREGROUND_STATES
from hmp.harness import QmpClient
from hmp.markers import PROMPT
from hmp.monitor import DEFAULT_DIALECT, Dialect, Monitor
from hmp.shell.completion import MonitorCompleter
from hmp.shell.connect import RemoteMonitor, banner
from hmp.shell.lexer import lexer_for
from hmp.shell.toolbar import progress_segments, toolbar
from hmp.shell.watch import MigrationWatcher

REFRESH_S = 0.25  # toolbar redraws per second: 4, enough to watch figures move

STYLE = Style.from_dict(
    {
        "pygments.keyword": "bold #5f87ff",
        "pygments.keyword.constant": "#d75f00",
        "pygments.name.function": "#00afaf",
        "pygments.name.attribute": "#5faf00",
        "pygments.name.variable": "#5faf00",
        "pygments.name.builtin": "#af87ff",
        "pygments.name.label": "bold #d7af00",
        "pygments.literal.string": "#d75f87",
        "pygments.literal.number": "#d75f00",
        "pygments.error": "#ff0000",
        "bottom-toolbar": "noreverse bg:#303030 #d0d0d0",
        "toolbar.state": "bold",
        "toolbar.bar": "#5faf00",
        # The greyed history suggestion must not look typed (in a screen capture too).
        "auto-suggestion": "italic #767676",
    }
)
DETACHED = (
    "* stopped waiting: the migration goes on in the background"
    " (`info migrate` shows it, `migrate_cancel` stops it)\n"
)


def history_path() -> Path:
    """``$XDG_STATE_HOME/qemu-hmp/history`` (XDG's default state dir is ~/.local/state)."""
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "qemu-hmp" / "history"


def make_history(persistent: bool) -> History:
    if not persistent:
        return InMemoryHistory()
    path = history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileHistory(str(path))


def make_session(
    completer: Completer,
    bottom_toolbar: Callable[[], StyleAndTextTuples],
    history: History,
    input: Input | None = None,
    output: Output | None = None,
    dialect: Dialect = DEFAULT_DIALECT,
) -> PromptSession[str]:
    return PromptSession(
        history=history,
        completer=completer,
        # Completion on Tab only: prompt_toolkit drops a Tab that arrives while a while-typing
        # completion is still running (fast typists, pasted lines, tests).
        complete_while_typing=False,
        auto_suggest=AutoSuggestFromHistory(),
        lexer=PygmentsLexer(lexer_for(dialect)),
        style=STYLE,
        include_default_pygments_style=False,
        bottom_toolbar=bottom_toolbar,
        refresh_interval=REFRESH_S,
        input=input,
        output=output,
    )


def wait_with_progress(session: PromptSession[str], machine: Machine) -> MigrationInfo:
    """A blocking `migrate` in the REPL: the toolbar alone shows its progress until it ends.
    Ctrl-C stops the wait, not the migration, and says so above the prompt. Other keys are
    typed ahead: the next prompt gets them, as a suspended QEMU monitor reads them later."""
    keys = KeyBindings()
    typed: list[KeyPress] = []

    @keys.add("c-c")
    def _detach(event: KeyPressEvent) -> None:
        event.app.exit(result=False)

    @keys.add(Keys.Any)
    @keys.add("enter")
    @keys.add("tab")
    def _type_ahead(event: KeyPressEvent) -> None:
        typed.extend(event.key_sequence)

    app: Application[bool] = Application(
        layout=Layout(
            Window(FormattedTextControl(lambda: toolbar(machine)), style="class:bottom-toolbar")
        ),
        key_bindings=keys,
        style=STYLE,
        refresh_interval=REFRESH_S,
        erase_when_done=True,
        input=session.app.input,
        output=session.app.output,
    )

    async def watch() -> None:
        # QEMU's monitor polls a blocking migrate too (hmp_migrate_status_cb, every second).
        while machine.query_migrate().status in FOREGROUND_STATES:
            await asyncio.sleep(REFRESH_S)
        app.exit(result=True)

    def start() -> None:
        app.create_background_task(watch())

    detached = not app.run(pre_run=start)
    keep_typed_ahead(app.input, typed)
    if detached:
        sys.stdout.write(DETACHED)
    return machine.query_migrate()


def keep_typed_ahead(input: Input, typed: list[KeyPress]) -> None:
    """Hand the keys typed during the wait to the next prompt, in the order they were typed.

    An application that exits stores the keys it had read but not yet dispatched as typeahead
    itself; ``typed`` came before those, so it goes first (appended after, ``info status``
    then Enter reached the prompt as Enter, then ``info status`` with no Enter)."""
    store_typeahead(input, typed + get_typeahead(input))


def prompt_loop(
    session: PromptSession[str],
    execute: Callable[[str], None],
    done: Callable[[], bool],
    prompt: str = PROMPT,
) -> None:
    """Ctrl-C drops the line being typed; Ctrl-D on an empty line leaves, as `quit` does."""
    while not done():
        try:
            line = session.prompt(prompt)
        except KeyboardInterrupt:
            continue
        except EOFError:
            break
        execute(line)


def post(text: str) -> None:
    """Background notices: sys.stdout is patch_stdout's proxy while the prompt is up."""
    sys.stdout.write(text)


def run_repl(
    mon: Monitor,
    *,
    history: bool = True,
    input: Input | None = None,
    output: Output | None = None,
    endpoints: Sequence[str] = (),
) -> int:
    """``endpoints``: the ``NAME>`` prefixes a line may start with (``--pair``)."""
    machine = mon.machine
    session = make_session(
        MonitorCompleter(current=machine.config.param, endpoints=endpoints, dialect=mon.dialect),
        lambda: toolbar(machine),
        make_history(history),
        input,
        output,
        mon.dialect,
    )
    mon.wait_migration = lambda: wait_with_progress(session, machine)
    mon.printf(mon.dialect.banner)
    with patch_stdout(raw=True), MigrationWatcher(machine, post):
        prompt_loop(session, mon.execute, lambda: mon.quit_requested)
    return 0


def run_connected_repl(
    client: QmpClient,
    dialect: Dialect,
    *,
    history: bool = True,
    input: Input | None = None,
    output: Output | None = None,
) -> int:
    """The shell in front of a real QEMU (hmp/shell/connect.py): same prompt, toolbar and
    notices, from QMP. If QEMU goes away, the prompt ends at once with its one-line error."""
    session: PromptSession[str] | None = None

    def leave() -> None:  # from the poller's thread: end the prompt as Ctrl-D would
        app = session.app if session is not None else None
        if app is not None and app.is_running and app.loop is not None:
            app.loop.call_soon_threadsafe(lambda: app.exit(exception=EOFError()))

    mon = RemoteMonitor(client, dialect, post=post, on_lost=leave)
    link = mon.link
    session = make_session(
        MonitorCompleter(current=link.current, dialect=dialect),
        lambda: progress_segments(link.progress, link.vm),
        make_history(history),
        input,
        output,
        dialect,
    )
    major, minor, micro = client.version
    mon.printf(f"* connected to {client.path} (QEMU {major}.{minor}.{micro}, QMP)\n")
    mon.printf(banner(client.version))
    with patch_stdout(raw=True), link:
        prompt_loop(session, mon.execute, lambda: mon.quit_requested)
    return mon.status
