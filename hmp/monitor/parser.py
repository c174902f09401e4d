"""QEMU's monitor command-line rules: the args_type mini-language and its error texts.

Supported argument types (a subset of QEMU's ``monitor-internal.h`` legend):
``s`` a word or a double-quoted string, ``S`` the rest of the line, ``b`` exactly ``on``/``off``,
``l`` an expression (64 bits), ``i`` an expression that must fit 32 bits, ``-x`` a flag, and
``?`` after ``s``/``S``/``b`` for optional. QEMU matches flags in table order: a flag that belongs
further on is left for later, one that belongs nowhere is an error.

Expressions follow QEMU's monitor: C numbers (``0x`` hex, leading-``0`` octal), ``'c'`` character
constants, unary ``+ - ~``, parentheses and three binary levels, loosest first ``+ -``, then
``& | ^``, then ``* / %``, all in signed 64-bit arithmetic. Whitespace is skipped between tokens,
so ``pmemsave 0 4096 /tmp/x`` reads ``4096 / tmp`` (an error in QEMU too: quote the file name).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hmp.monitor.commands import Command

Args = dict[str, str | bool | int | None]

C_SPACE = frozenset(" \t\n\v\f\r")
_ESCAPES = {"n": "\n", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


@dataclass(frozen=True)
class ArgSpec:
    key: str
    kind: str  # "s", "S", "b", "i", "l" or "-"
    flag: str = ""  # the letter of a "-" argument
    optional: bool = False


def parse_args_type(args_type: str) -> tuple[ArgSpec, ...]:
    """``"detach:-d,uri:s"`` → ArgSpecs; an unknown type is a bug in the table."""
    specs = []
    for item in filter(None, args_type.split(",")):
        key, _, kind = item.partition(":")
        optional = kind.endswith("?")
        kind = kind.removesuffix("?")
        if len(kind) == 2 and kind[0] == "-":
            specs.append(ArgSpec(key, "-", kind[1]))
        elif kind in ("s", "S", "b"):
            specs.append(ArgSpec(key, kind, optional=optional))
        elif kind in ("i", "l") and not optional:
            specs.append(ArgSpec(key, kind))
        else:
            raise ValueError(f"unsupported args_type {item!r}")
    return tuple(specs)


class ParseError(Exception):
    """What the monitor prints instead of running the command (already complete text)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(frozen=True)
class Parsed:
    command: Command
    args: Args


class _Cursor:
    def __init__(self, line: str, pos: int = 0) -> None:
        self.line = line
        self.pos = pos

    def skip_space(self) -> None:
        while self.pos < len(self.line) and self.line[self.pos] in C_SPACE:
            self.pos += 1

    def at_end(self) -> bool:
        return self.pos >= len(self.line)

    def peek(self, offset: int = 0) -> str:
        i = self.pos + offset
        return self.line[i] if i < len(self.line) else ""

    def take_while(self, keep: str) -> str:
        start = self.pos
        while self.pos < len(self.line) and _keeps(keep, self.line[self.pos]):
            self.pos += 1
        return self.line[start : self.pos]


def _keeps(keep: str, ch: str) -> bool:
    if keep == "name":  # QEMU's get_command_name: up to a space or '/'
        return ch not in C_SPACE and ch != "/"
    if keep == "word":
        return ch not in C_SPACE
    return "!" <= ch <= "~"  # isgraph in the C locale


def find_command(table: Sequence[Command], name: str) -> Command | None:
    return next((cmd for cmd in table if name in cmd.names), None)


MAX_STRING = 1023  # QEMU reads strings into a 1024-byte buffer and drops the excess


def read_string(cur: _Cursor) -> str:
    """QEMU's get_str: a bare word, or a double-quoted string with a few escapes."""
    if cur.peek() != '"':
        return cur.take_while("word")[:MAX_STRING]
    cur.pos += 1
    out: list[str] = []
    while True:
        ch = cur.peek()
        if ch == "":
            raise ParseError("unterminated string\n")
        cur.pos += 1
        if ch == '"':
            return "".join(out)[:MAX_STRING]
        if ch == "\\":
            esc = cur.peek()
            cur.pos += 1
            if esc not in _ESCAPES:
                # QEMU prints the escape with %c: an escaped end of line cuts its message short.
                text = (
                    f"unsupported escape code: '\\{esc}'\n"
                    if esc
                    else "unsupported escape code: '\\"
                )
                raise ParseError(text)
            ch = _ESCAPES[esc]
        out.append(ch)


# -- expressions (the ``i`` and ``l`` arguments) -----------------------------------------------
_BINARY = ("+-", "&|^", "*/%")  # QEMU's levels, loosest first
# strtoull's base 0, each with its digits as group 1: "0x" alone is the number 0, "08" is 0.
_NUMBERS = (
    (re.compile(r"0[xX]([0-9a-fA-F]+)"), 16),
    (re.compile(r"0([0-7]*)"), 8),
    (re.compile(r"([1-9][0-9]*)"), 10),
)
_REGISTER = re.compile(r"[A-Za-z0-9_.]*")
_U64 = 1 << 64


def _int64(value: int) -> int:
    """C's int64_t arithmetic wraps; so does ours."""
    value %= _U64
    return value - _U64 if value >= _U64 >> 1 else value


def _apply(op: str, a: int, b: int) -> int:
    if op in "/%":
        if b == 0:
            raise ParseError("division by zero\n")
        quotient = abs(a) // abs(b) * (-1 if (a < 0) != (b < 0) else 1)  # C truncates to zero
        return _int64(quotient if op == "/" else a - b * quotient)
    results = {"+": a + b, "-": a - b, "&": a & b, "|": a | b, "^": a ^ b, "*": a * b}
    return _int64(results[op])


class _Expr:
    """A recursive-descent reader of one expression, leaving the cursor after it."""

    def __init__(self, cur: _Cursor) -> None:
        self.cur = cur

    def next(self, width: int = 1) -> None:
        self.cur.pos += width
        self.cur.skip_space()

    def binary(self, level: int = 0) -> int:
        if level == len(_BINARY):
            return self.unary()
        value = self.binary(level + 1)
        while (op := self.cur.peek()) and op in _BINARY[level]:
            self.next()
            value = _apply(op, value, self.binary(level + 1))
        return value

    def unary(self) -> int:
        cur, ch = self.cur, self.cur.peek()
        if ch and ch in "+-~":
            self.next()
            value = self.unary()
            return {"+": value, "-": _int64(-value), "~": ~value}[ch]
        if ch == "(":
            self.next()
            value = self.binary()
            if cur.peek() != ")":
                raise ParseError("')' expected\n")
            self.next()
            return value
        if ch == "'":
            char = cur.peek(1)
            if not char:
                raise ParseError("character constant expected\n")
            if cur.peek(2) != "'":
                raise ParseError("missing terminating ' character\n")
            self.next(3)
            return ord(char)
        if ch == "$":
            # QEMU reads the current vCPU's register; qemu-hmp has no vCPU state to read.
            match = _REGISTER.match(cur.line, cur.pos + 1)
            assert match is not None  # the pattern matches the empty string
            raise ParseError(f"cannot read ${match.group()}: qemu-hmp emulates no CPU\n")
        if not ch:
            raise ParseError("unexpected end of expression\n")
        return self.number()

    def number(self) -> int:
        cur = self.cur
        for pattern, base in _NUMBERS:
            match = pattern.match(cur.line, cur.pos)
            if match is not None:
                value = int(match.group(1) or "0", base)
                if value >= _U64:
                    raise ParseError("number too large\n")
                self.next(match.end() - cur.pos)
                return _int64(value)
        raise ParseError(f"invalid char '{cur.peek()}' in expression\n")


def read_expr(cur: _Cursor) -> int:
    """QEMU's get_expr: one expression as a signed 64-bit value."""
    cur.skip_space()
    try:
        return _Expr(cur).binary()
    except RecursionError:  # QEMU's C recursion goes deeper than Python's; say so, don't crash
        raise ParseError("expression too deeply nested\n") from None


def _flag_is_later(letter: str, rest: Sequence[ArgSpec]) -> bool:
    return letter != "" and any(spec.kind == "-" and spec.flag == letter for spec in rest)


def _parse_args(cmd: Command, cur: _Cursor) -> Args:
    args: Args = {}
    specs = cmd.args
    for i, spec in enumerate(specs):
        cur.skip_space()
        if spec.kind == "-":
            args[spec.key] = False
            if cur.peek() != "-":
                continue
            letter = cur.peek(1)
            if letter == spec.flag:
                cur.pos += 2
                args[spec.key] = True
            elif not _flag_is_later(letter, specs[i + 1 :]):
                # QEMU prints the letter with %c, so a lone '-' loses the newline.
                end = "\n" if letter else ""
                raise ParseError(f"{cmd.name}: unsupported option -{letter}{end}")
        elif spec.kind in ("i", "l"):
            value = read_expr(cur)
            if spec.kind == "i" and not 0 <= value < 1 << 32:
                raise ParseError(f"'{cmd.name}' has failed: integer is for 32-bit values\n")
            args[spec.key] = value
        elif cur.at_end():
            if not spec.optional:
                missing = f"{cmd.name}: string expected\n"
                raise ParseError("Expected 'on' or 'off'\n" if spec.kind == "b" else missing)
            args[spec.key] = None
        elif spec.kind == "S":
            args[spec.key] = cur.line[cur.pos :]
            cur.pos = len(cur.line)
        elif spec.kind == "b":
            word = cur.take_while("graph")
            if word not in ("on", "off"):
                raise ParseError("Expected 'on' or 'off'\n")
            args[spec.key] = word == "on"
        else:
            try:
                args[spec.key] = read_string(cur)
            except ParseError as err:
                raise ParseError(err.text + f"{cmd.name}: string expected\n") from None
    cur.skip_space()
    if not cur.at_end():
        raise ParseError(f"{cmd.name}: extraneous characters at the end of line\n")
    return args


def parse_line(table: Sequence[Command], line: str) -> Parsed | None:
    """Parse one monitor line; ``None`` for a blank line; ``ParseError`` carries QEMU's text."""
    cur = _Cursor(line)
    cur.skip_space()
    if cur.at_end():
        return None
    while True:
        name = cur.take_while("name")
        cmd = find_command(table, name)
        if cmd is None:
            raise ParseError(f"unknown command: '{line[: cur.pos]}'\n")
        if not cmd.sub_table:
            break
        cur.skip_space()
        if cur.at_end():
            return Parsed(cmd, {})  # bare `info`: its handler lists the sub-commands
        table = cmd.sub_table
    typed = line[: cur.pos]  # the command words as typed, e.g. "  info   status"
    try:
        return Parsed(cmd, _parse_args(cmd, cur))
    except ParseError as err:
        raise ParseError(err.text + f'Try "help {typed}" for more information\n') from None


def _words(text: str) -> Iterator[str]:
    """The words of a line (quoted strings allowed); ParseError at a bad quote."""
    cur = _Cursor(text)
    while True:
        cur.skip_space()
        if cur.at_end():
            return
        yield read_string(cur)


def split_words(text: str) -> list[str]:
    """Words of a line as `help` sees them; stops at a bad quote."""
    words: list[str] = []
    try:
        for word in _words(text):
            words.append(word)
    except ParseError:
        pass  # `help` names what came before the bad quote
    return words


def words_or_none(text: str) -> list[str] | None:
    """Words of a line as QEMU's completion sees them: None at a bad quote."""
    try:
        return list(_words(text))
    except ParseError:
        return None
