"""QEMU 7.2's monitor line editor, byte for byte: what a client of ``-monitor unix:...`` sees.

QEMU echoes every byte a client types by redrawing: it moves the cursor back over what it
last drew (``ESC [ D`` each), writes the whole line and ``ESC [ K``, then moves the cursor
to its place. The keys are QEMU's: Ctrl-A/E (home/end), Ctrl-D and ``ESC [ 3 ~`` (delete),
Ctrl-W (word back), DEL or Ctrl-H (backspace), arrows (``ESC [`` or the 8-bit CSI 0x9b;
``ESC [ F``/``E`` are up/down as in QEMU), ``ESC [ 1 ~``/``4 ~`` and ``ESC O H``/``F``
(home/end), Ctrl-L (clear the screen), Tab (completion), CR or LF (enter); other control
bytes are ignored. History keeps 64 distinct lines, the newest last. Tab completes as QEMU's
monitor does: one candidate is inserted with a space, several are listed in 80-column rows
under their common prefix, inserted. Tested against QEMU's bytes in
tests/test_monitor_socket_oracle.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum

from hmp.markers import PROMPT
from hmp.monitor.commands import Command, hmp_help
from hmp.monitor.dialect import DEFAULT, Dialect
from hmp.monitor.parser import find_command, words_or_none

ENCODING = ("utf-8", "surrogateescape")  # any byte a client sends comes back unchanged
HISTORY_SIZE = 64
LINE_MAX = 4095  # QEMU's buffer: keys that would grow the line past it are dropped
LEFT, RIGHT, ERASE = b"\x1b[D", b"\x1b[C", b"\x1b[K"
CLEAR_SCREEN = b"\x1b[2J\x1b[1;1H"
LIST_WIDTH = 80

# (the word being completed, the candidates) for the text before the cursor
Completer = Callable[[str], tuple[str, list[str]]]


class _Esc(Enum):
    NONE = 0
    ESC = 1  # after ESC
    CSI = 2  # after ESC [ or 0x9b, maybe digits
    SS3 = 3  # after ESC O


class LineEditor:
    """Feed it a client's bytes; it returns each finished line and queues what to send back."""

    def __init__(self, complete: Completer, prompt: str = PROMPT) -> None:
        self._complete = complete
        self._prompt = prompt.encode()
        self._line = bytearray()
        self._cursor = 0
        self._drawn = b""  # what the client's terminal shows after the prompt
        self._drawn_cursor = 0
        self._history: list[bytes] = []
        self._browsing: int | None = None  # the history line shown, while going up and down
        self._esc = _Esc.NONE
        self._esc_param = 0
        self._out = bytearray()
        self._control: dict[int, Callable[[], None]] = {
            1: self._home,
            4: self._delete,
            5: self._end,
            8: self._backspace,
            9: self._tab,
            12: self._clear_screen,
            23: self._word_back,
            127: self._backspace,
        }
        up, down = self._up, self._down
        self._csi = dict(zip(b"AFBECD", (up, up, down, down, self._right, self._left), strict=True))

    def take_output(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def show_prompt(self) -> None:
        self._out += self._prompt
        self._drawn, self._drawn_cursor = b"", 0
        self._esc = _Esc.NONE

    def restart(self) -> None:
        """A new client: the half-typed line of the last one is dropped; the history and the
        place in it are kept, as in QEMU."""
        self._line.clear()
        self._cursor = 0
        self.show_prompt()

    def feed(self, byte: int) -> bytes | None:
        """One byte typed; a whole line (without its end) once Enter was pressed."""
        line = self._key(byte)
        self._redraw()
        return line

    # -- keys -------------------------------------------------------------------------------
    def _key(self, byte: int) -> bytes | None:
        if self._esc is _Esc.NONE:
            return self._plain(byte)
        state, self._esc = self._esc, _Esc.NONE
        if state is _Esc.ESC:
            if byte in b"[O":
                self._esc = _Esc.CSI if byte == ord("[") else _Esc.SS3
                self._esc_param = 0
        elif state is _Esc.SS3:
            {ord("F"): self._end, ord("H"): self._home}.get(byte, _ignored)()
        elif ord("0") <= byte <= ord("9"):
            self._esc_param = self._esc_param * 10 + byte - ord("0")
            self._esc = _Esc.CSI
        elif byte == ord("~"):
            {1: self._home, 3: self._delete, 4: self._end}.get(self._esc_param, _ignored)()
        else:
            self._csi.get(byte, _ignored)()
        return None

    def _plain(self, byte: int) -> bytes | None:
        if byte in (10, 13):
            return self._enter()
        if byte == 27:
            self._esc = _Esc.ESC
        elif byte == 0x9B:  # unlike ESC [, QEMU keeps the number of the last sequence
            self._esc = _Esc.CSI
        elif byte >= 32 and byte != 127:
            self._insert(bytes([byte]))
        else:
            self._control.get(byte, _ignored)()
        return None

    def _insert(self, text: bytes) -> None:
        for byte in text:
            if len(self._line) >= LINE_MAX:
                return
            self._line.insert(self._cursor, byte)
            self._cursor += 1

    def _home(self) -> None:
        self._cursor = 0

    def _end(self) -> None:
        self._cursor = len(self._line)

    def _left(self) -> None:
        self._cursor = max(self._cursor - 1, 0)

    def _right(self) -> None:
        self._cursor = min(self._cursor + 1, len(self._line))

    def _delete(self) -> None:
        del self._line[self._cursor : self._cursor + 1]

    def _backspace(self) -> None:
        if self._cursor:
            self._cursor -= 1
            self._delete()

    def _word_back(self) -> None:
        """Ctrl-W: the spaces before the cursor, then the word before them."""
        start = self._cursor
        while start and self._line[start - 1 : start].isspace():
            start -= 1
        while start and not self._line[start - 1 : start].isspace():
            start -= 1
        del self._line[start : self._cursor]
        self._cursor = start

    def _clear_screen(self) -> None:
        self._out += CLEAR_SCREEN
        self.show_prompt()

    # -- history ----------------------------------------------------------------------------
    def _enter(self) -> bytes:
        line = bytes(self._line)
        self._remember(line)
        self._out += b"\r\n"
        self._line.clear()
        self._cursor = 0
        self._drawn, self._drawn_cursor = b"", 0
        return line

    def _remember(self, line: bytes) -> None:
        if not line:
            return  # as QEMU: an empty line even leaves the history position where it was
        if line in self._history:
            self._history.remove(line)
        self._history = [*self._history, line][-HISTORY_SIZE:]
        self._browsing = None

    def _up(self) -> None:
        index = len(self._history) if self._browsing is None else self._browsing
        if index > 0:
            self._show_history(index - 1)

    def _down(self) -> None:
        if self._browsing is None:
            return
        if self._browsing + 1 < len(self._history):
            self._show_history(self._browsing + 1)
        else:
            self._browsing = None
            self._line.clear()
            self._cursor = 0

    def _show_history(self, index: int) -> None:
        self._browsing = index
        self._line[:] = self._history[index]
        self._cursor = len(self._line)

    # -- completion -------------------------------------------------------------------------
    def _tab(self) -> None:
        before = self._line[: self._cursor].decode(*ENCODING)
        word, found = self._complete(before)
        names = sorted({name.encode(*ENCODING) for name in found})
        typed = len(word.encode(*ENCODING))
        if len(names) == 1:
            self._insert(names[0][typed:])
            if not names[0].endswith(b"/"):
                self._insert(b" ")
        elif names:
            self._out += b"\r\n"
            self._insert(_common_prefix(names)[typed:])
            self._list(names)
            self.show_prompt()

    def _list(self, names: Sequence[bytes]) -> None:
        width = min(max(max(len(n) for n in names) + 2, 10), LIST_WIDTH)
        columns = LIST_WIDTH // width
        for row in range(0, len(names), columns):
            self._out += b"".join(n.ljust(width) for n in names[row : row + columns]) + b"\r\n"

    # -- drawing ----------------------------------------------------------------------------
    def _redraw(self) -> None:
        if self._line != self._drawn:
            self._out += LEFT * self._drawn_cursor + self._line + ERASE
            self._drawn = bytes(self._line)
            self._drawn_cursor = len(self._line)
        moved = self._cursor - self._drawn_cursor
        self._out += RIGHT * moved if moved > 0 else LEFT * -moved
        self._drawn_cursor = self._cursor


def _ignored() -> None:
    """A key QEMU's editor ignores."""


def _common_prefix(names: Sequence[bytes]) -> bytes:
    first, last = min(names), max(names)  # the sorted extremes differ earliest
    length = 0
    while length < min(len(first), len(last)) and first[length] == last[length]:
        length += 1
    return first[:length]


# -- what Tab offers ------------------------------------------------------------------------
def complete(before: str, dialect: Dialect = DEFAULT) -> tuple[str, list[str]]:
    """QEMU's monitor completion for the text before the cursor: a word and its candidates.

    Command names (every alias) and ``info`` sub-commands; ``help`` completes the command it
    names; ``migrate_set_capability`` a capability then ``on``/``off``; ``migrate_set_parameter``
    a parameter. A bad quote completes nothing, as in QEMU.
    """
    words = words_or_none(before)
    if words is None:
        return "", []
    if before and before[-1].isspace():
        words.append("")
    return _in_table(dialect.commands, words, dialect)


def _in_table(
    table: Sequence[Command], words: list[str], dialect: Dialect
) -> tuple[str, list[str]]:
    if len(words) <= 1:
        word = words[0] if words else ""
        return word, [name for cmd in table for name in cmd.names if name.startswith(word)]
    cmd = find_command(table, words[0])
    word = words[-1]
    if cmd is None:
        return word, []
    if cmd.sub_table:
        return _in_table(cmd.sub_table, words[1:], dialect)
    if cmd.handler is hmp_help:
        return _in_table(dialect.commands, words[1:], dialect)
    names = _argument_names(cmd.name, len(words), dialect)
    return word, [name for name in names if name.startswith(word)]


def _argument_names(command: str, nwords: int, dialect: Dialect) -> list[str]:
    if command == "migrate_set_capability" and nwords == 2:
        return [cap.name for cap in dialect.table.capabilities]
    if command == "migrate_set_capability" and nwords == 3:
        return ["on", "off"]
    if command == "migrate_set_parameter" and nwords == 2:
        return [spec.name for spec in dialect.table.parameters]
    return []
