"""JSON as QEMU's QMP monitor reads and writes it (its own lexer, not RFC 8259 strict).

Input is a stream of bytes, not lines: a value ends when its braces and brackets balance, so
one line may hold several requests and one request may span lines. QEMU's extensions and
limits are kept: single-quoted strings, integers beyond int64 read as uint64 then as double,
and a lexer error drops the value being built, reports ``stray '…'``, and skips input up to the
next structural character or line end. The lexer works on bytes, as QEMU's does, and scans
runs (string bodies, digits, skipped input) with one regular-expression call each, so reading
is linear in the input. Output escapes every non-printable or non-ASCII character as
``\\uXXXX`` (upper-case hex), prints doubles with 17 significant digits, and lists an object's
keys in the order of QEMU's QDict hash table.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

# QEMU's json-streamer limits, so a client cannot make us hoard memory: bytes of the tokens
# of one value, tokens of one value, open braces and brackets.
MAX_TOKEN_SIZE = 64 << 20
MAX_TOKEN_COUNT = 2 << 20
MAX_NESTING = 1024
_HEX = "0123456789abcdefABCDEF"
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n"}
_ESCAPES |= {"r": "\r", "t": "\t"}
_KEYWORDS: dict[str, Any] = {"true": True, "false": False, "null": None}

_WHITESPACE = re.compile(rb"[ \t\r\n]*")
_DIGITS = re.compile(rb"[0-9]*")
_LOWER = re.compile(rb"[a-z]*")
# What a string body cannot hold raw (QEMU's lexer refuses control bytes and 0xFE/0xFF), and
# what ends the skipping after a lexer error.
_NOT_IN_STRING = rb"\x00-\x1f\xfe\xff"
_STRING_STOP = {
    q: re.compile(rb"[" + re.escape(bytes([q])) + rb"\\" + _NOT_IN_STRING + rb"]") for q in b"\"'"
}
_RECOVERY_STOP = re.compile(rb"[{}\[\]\x00-\x08\x0a-\x1f\xfe\xff]")
_BAD_IN_STRING = frozenset(range(0x20)) | {0xFE, 0xFF}
# A whole simple token after optional whitespace, taken in one match (the common case, which
# the byte-wise states would lex the same way): punctuation, a double-quoted string without
# escapes, a number or a keyword followed by a byte that cannot continue it.
_SIMPLE = re.compile(
    rb"[ \t\r\n]*(?:"
    rb"(?P<punct>[{}\[\]:,])"
    rb'|(?P<str>"[^"\\' + _NOT_IN_STRING + rb']*")'
    rb"|(?P<num>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)(?=[^0-9.eE+\-])"
    rb"|(?P<kw>[a-z]+)(?=[^a-z]))"
)

# Numbers: the state after each character class; where a number may end (the next character
# then starts a new token); the one continuation that is an error there (a leading zero).
_NUM_NEXT: dict[str, dict[str, str]] = {
    "sign": {"0": "zero", "d": "int"},
    "zero": {".": "dot", "e": "exp-mark"},
    "int": {"0": "int", "d": "int", ".": "dot", "e": "exp-mark"},
    "dot": {"0": "frac", "d": "frac"},
    "frac": {"0": "frac", "d": "frac", "e": "exp-mark"},
    "exp-mark": {"0": "exp", "d": "exp", "+": "exp-sign"},
    "exp-sign": {"0": "exp", "d": "exp"},
    "exp": {"0": "exp", "d": "exp"},
}
_NUM_ENDS = frozenset({"zero", "int", "frac", "exp"})
_NUM_RUNS = frozenset({"int", "frac", "exp"})  # where a run of digits is taken in one go


def _num_class(byte: int) -> str:
    if byte == 0x30:
        return "0"
    if 0x31 <= byte <= 0x39:
        return "d"
    return {0x2E: ".", 0x65: "e", 0x45: "e", 0x2B: "+", 0x2D: "+"}.get(byte, "")


@dataclass(frozen=True)
class JsonError:
    """A value that could not be read; ``desc`` is QEMU's ``JSON parse error, …`` text."""

    desc: str


class _ParseError(Exception):
    pass


class JsonStreamer:
    """Feed bytes, get back complete values (``dict``, ``list``, …) and `JsonError`s in order.

    The lexer turns bytes into tokens; the streamer (QEMU's json-streamer) collects the tokens
    of one value, within QEMU's limits, until its braces and brackets balance, then parses.
    """

    def __init__(self) -> None:
        # The value being collected: token kinds ("{", "str", "num", "kw", ...) and texts.
        self._kinds: list[str] = []
        self._texts: list[bytes] = []
        self._size = 0  # bytes of those tokens
        self._braces = 0
        self._brackets = 0
        # The token being lexed, in pieces.
        self._parts: list[bytes] = []
        self._len = 0
        self._state = "start"  # start | str | escape | num | kw | recover
        self._quote = 0  # the byte that opened the string being lexed
        self._num = ""  # the number's state (`_NUM_NEXT`)
        self._out: list[Any] = []
        # Where the stream is: the offset of the data being fed, and of the token being lexed.
        self._base = 0
        self._token_at = 0

    def feed(self, data: bytes) -> list[Any]:
        pos = 0
        while pos < len(data):
            pos = self._step(data, pos)
        self._fed(data)
        self._base += len(data)
        out, self._out = self._out, []
        return out

    def _fed(self, data: bytes) -> None:
        """A hook: ``data`` was lexed (positions are kept by the 11.1 reader)."""

    # -- lexer --------------------------------------------------------------------------------
    def _step(self, data: bytes, pos: int) -> int:
        """Lex from ``pos`` up to the end of one run or one token; return where it stopped."""
        state = self._state
        if state == "start":
            return self._start(data, pos)
        if state == "str":
            return self._string(data, pos)
        if state == "escape":
            return self._escaped(data, pos)
        if state == "num":
            return self._number(data, pos)
        if state == "kw":
            return self._keyword(data, pos)
        match = self._recovery_stop.search(data, pos)
        if match is None:
            return len(data)
        self._state = "start"  # the stop character is lexed again from the start
        self._recovered(self._base + match.start())
        return match.start()

    _recovery_stop = _RECOVERY_STOP

    def _recovered(self, at: int) -> None:
        """A hook: skipping after a lexer error stopped at offset ``at``."""

    def _start(self, data: bytes, pos: int) -> int:
        while (match := _SIMPLE.match(data, pos)) is not None:
            kind = match.lastgroup or ""
            text = match[kind]
            if len(text) > MAX_TOKEN_SIZE:  # the states below know what QEMU does then
                break
            self._token_at = self._base + match.start(kind)
            self._emit(text.decode() if kind == "punct" else kind, text)
            pos = match.end()
        pos = _WHITESPACE.match(data, pos).end()  # type: ignore[union-attr]
        if pos == len(data):
            return pos
        byte, char = data[pos], data[pos : pos + 1]  # punctuation never gets here
        self._token_at = self._base + pos
        if byte in b"\"'":
            self._begin(char, "str")
            self._quote = byte
        elif char == b"-" or 0x30 <= byte <= 0x39:
            self._begin(char, "num")
            self._num = {"0": "zero", "d": "int"}.get(_num_class(byte), "sign")
        elif 0x61 <= byte <= 0x7A:
            self._begin(char, "kw")
        else:
            self._stray(char)
        return pos + 1

    def _begin(self, char: bytes, state: str) -> None:
        self._parts, self._len, self._state = [char], 1, state

    def _string(self, data: bytes, pos: int) -> int:
        match = _STRING_STOP[self._quote].search(data, pos)
        end = match.start() if match else len(data)
        pos = self._take(data, pos, end)
        if self._state != "str" or match is None:
            return pos
        byte = data[end]
        if byte == self._quote:  # it ends the token: the streamer checks the size
            self._parts.append(data[end : end + 1])
            self._finish("str")
        elif byte == 0x5C:  # a backslash: the parser checks the escape
            self._state = "escape"
            self._take(data, end, end + 1)
        else:
            self._stray(data[end : end + 1])
        return end + 1

    def _escaped(self, data: bytes, pos: int) -> int:
        if data[pos] in _BAD_IN_STRING:
            self._stray(data[pos : pos + 1])
        else:
            self._state = "str"
            self._take(data, pos, pos + 1)
        return pos + 1

    def _number(self, data: bytes, pos: int) -> int:
        if self._num in _NUM_RUNS:
            end = _DIGITS.match(data, pos).end()  # type: ignore[union-attr]
            if end > pos:
                return self._take(data, pos, end)
        cls = _num_class(data[pos])
        following = _NUM_NEXT[self._num].get(cls)
        if following is not None:
            self._num = following
            return self._take(data, pos, pos + 1)
        if self._num in _NUM_ENDS and not (self._num == "zero" and cls in ("0", "d")):
            self._finish("num")
            return pos  # this byte starts the next token
        self._stray(data[pos : pos + 1])
        return pos + 1

    def _keyword(self, data: bytes, pos: int) -> int:
        end = _LOWER.match(data, pos).end()  # type: ignore[union-attr]
        pos = self._take(data, pos, end)
        if self._state == "kw" and pos < len(data):
            self._finish("kw")
        return pos

    def _take(self, data: bytes, start: int, end: int) -> int:
        """Add ``data[start:end]`` to the token; where it stopped (sooner, if over the limit).

        QEMU's lexer hands a token that outgrew MAX_TOKEN_SIZE to the streamer unfinished,
        which refuses it, and lexes on from the start state: so do we.
        """
        room = MAX_TOKEN_SIZE + 1 - self._len
        if end - start < room:
            self._parts.append(data[start:end])
            self._len += end - start
            return end
        self._parts, self._len = [], 0
        self._fail("JSON token size limit exceeded")
        return start + room

    def _stray(self, char: bytes) -> None:
        # QEMU's writer reads the text as it reads strings: C0 80 is U+0000
        raw = b"".join([*self._parts, char]).replace(b"\xc0\x80", b"\x00")
        text = raw.decode("utf-8", "replace")
        self._parts, self._len = [], 0
        self._stray_token(text)
        self._state = "recover"

    def _stray_token(self, text: str) -> None:
        """What the lexer could not read (``text``) ends the value being collected."""
        self._fail(f"JSON parse error, stray '{text}'")

    def _fail(self, desc: str) -> None:
        self._out.append(JsonError(desc))
        self._kinds, self._texts, self._size = [], [], 0
        self._braces = self._brackets = 0
        self._state = "start"

    # -- streamer: group tokens into values -----------------------------------------------------
    def _finish(self, kind: str) -> None:
        """The token being lexed is complete."""
        text = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts, self._len, self._state = [], 0, "start"
        self._emit(kind, text)

    def _emit(self, kind: str, text: bytes) -> None:
        """QEMU's json_message_process_token: limits first, then parse once balanced."""
        if kind in "{}":
            self._braces += 1 if kind == "{" else -1
        elif kind in "[]":
            self._brackets += 1 if kind == "[" else -1
        if self._size + len(text) + 1 > MAX_TOKEN_SIZE:
            self._fail("JSON token size limit exceeded")
        elif len(self._kinds) + 1 > MAX_TOKEN_COUNT:
            self._fail("JSON token count limit exceeded")
        elif self._braces + self._brackets > MAX_NESTING:
            self._fail("JSON nesting depth limit exceeded")
        else:
            self._kinds.append(kind)
            self._texts.append(text)
            self._size += len(text)
            if self._braces < 0 or self._brackets < 0 or self._braces == self._brackets == 0:
                self._parse()

    def _parse(self) -> None:
        kinds, texts = self._kinds, self._texts
        self._kinds, self._texts, self._size = [], [], 0
        self._braces = self._brackets = 0
        try:
            self._out.append(_Parser(kinds, texts).value())
        except _ParseError as exc:
            self._out.append(JsonError(f"JSON parse error, {exc}"))


class _Parser:
    """One balanced token group to a value, with QEMU's error texts.

    Iterative, with an explicit stack: nesting up to `MAX_NESTING` must not hit Python's
    recursion limit.
    """

    def __init__(self, kinds: list[str], texts: list[bytes]) -> None:
        self._kinds = kinds
        self._texts = texts
        self._pos = 0

    def _next(self) -> str | None:
        """The next token's kind (its text is ``self._text``), or None at the end."""
        if self._pos >= len(self._kinds):
            return None
        self._pos += 1
        return self._kinds[self._pos - 1]

    @property
    def _text(self) -> str:
        """The text of the token `_next` returned (strings, numbers and keywords are short
        or decoded once)."""
        return self._texts[self._pos - 1].decode("utf-8", "replace")

    def _peek(self, kind: str) -> bool:
        """Consume the next token if it is ``kind``."""
        if self._pos < len(self._kinds) and self._kinds[self._pos] == kind:
            self._pos += 1
            return True
        return False

    def _key(self, obj: dict[str, Any]) -> str:
        kind = self._next()
        if kind is None or kind in "}],:":
            raise _ParseError("expecting value")
        if kind == "kw" and self._text not in _KEYWORDS:
            raise _ParseError(f"invalid keyword '{self._text}'")
        if kind != "str":
            raise _ParseError("key is not a string in object")
        key = _unquote(self._texts[self._pos - 1])
        colon = self._next()
        if colon != ":":
            raise _ParseError("missing : in object pair")
        if key in obj:
            raise _ParseError("duplicate key")
        return key

    def value(self) -> Any:
        stack: list[tuple[dict[str, Any] | list[Any], str]] = []  # open containers, their key
        while True:
            kind = self._next()
            if kind is None or kind in "}],:":
                raise _ParseError("expecting value")
            value: Any
            if kind == "{":
                value = {}
                if not self._peek("}"):
                    stack.append((value, self._key(value)))
                    continue
            elif kind == "[":
                value = []
                if not self._peek("]"):
                    stack.append((value, ""))
                    continue
            elif kind == "str":
                value = _unquote(self._texts[self._pos - 1])
            elif kind == "num":
                value = _number(self._text)
            elif self._text in _KEYWORDS:
                value = _KEYWORDS[self._text]
            else:
                raise _ParseError(f"invalid keyword '{self._text}'")
            # Store the finished value; close every container it completes.
            while stack:
                container, key = stack[-1]
                sep = self._next()
                if isinstance(container, dict):
                    container[key] = value
                    if sep == ",":
                        stack[-1] = (container, self._key(container))
                        break
                    if sep != "}":
                        raise _ParseError("expected separator in dict")
                else:
                    container.append(value)
                    if sep == ",":
                        break
                    if sep != "]":
                        raise _ParseError("expected separator in list")
                value = stack.pop()[0]
            else:
                return value


def _number(text: str) -> int | float:
    """Integers that fit int64 or uint64 stay integers; anything else is a double."""
    if not any(c in text for c in ".eE"):
        n = int(text)
        if -(1 << 63) <= n < (1 << 64):
            return n
    return float(text)


def _unquote(token: bytes) -> str:
    """A string token's value. QEMU reads its bytes as UTF-8, taking ``C0 80`` for U+0000."""
    body = token[1:-1].replace(b"\xc0\x80", b"\x00")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _ParseError("invalid UTF-8 sequence in string") from None
    return _unescape(chr(token[0]) + text + chr(token[0])) if "\\" in text else text


def _unescape(text: str) -> str:
    """The escapes of a string token (quotes included, for QEMU's error texts)."""
    body, out, i = text[1:-1], [], 0
    while (j := body.find("\\", i)) >= 0:
        out.append(body[i:j])
        esc = body[j + 1 : j + 2]
        if esc in _ESCAPES:
            out.append(_ESCAPES[esc])
            i = j + 2
        elif esc == "u":
            cp, i = _codepoint(body, j, text)
            out.append(chr(cp))
        else:
            raise _ParseError("invalid escape sequence in string")
    out.append(body[i:])
    return "".join(out)


def _codepoint(body: str, start: int, text: str) -> tuple[int, int]:
    """``\\uXXXX`` at ``start`` (a surrogate pair if it is one); the code point and next index."""

    def hex4(at: int) -> int:
        digits = body[at + 2 : at + 6]
        bad = next((k for k, c in enumerate(digits) if c not in _HEX), len(digits))
        if bad < 4:  # QEMU quotes the escape up to the offending character (maybe the quote)
            raise _ParseError(f"{text[at + 1 : at + 4 + bad]} is not a valid Unicode character")
        return int(digits, 16)

    cp = hex4(start)
    end = start + 6
    if 0xD800 <= cp < 0xDC00 and body[end : end + 2] == "\\u":
        low = hex4(end)
        if 0xDC00 <= low < 0xE000:
            return 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00), end + 6
    if 0xD800 <= cp < 0xE000:
        raise _ParseError(f"{body[start:end]} is not a valid Unicode character")
    return cp, end


# -- output ---------------------------------------------------------------------------------------
def dumps(obj: Any) -> str:
    """One QMP message as QEMU writes it (``", "`` and ``": "`` separators, no newline).

    A dict's keys come in the order QEMU's QDict iterates them (`qdict_order`), so build dicts
    in QAPI member order: that is what decides between keys that share a bucket.
    """
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{_string(k)}: {dumps(v)}" for k, v in qdict_order(obj)) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ", ".join(dumps(v) for v in obj) + "]"
    if isinstance(obj, str):
        return _string(obj)
    if obj is True or obj is False:
        return "true" if obj else "false"
    if obj is None:
        return "null"
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, float):
        return f"{obj:.17g}"
    raise TypeError(f"not JSON: {type(obj).__name__}")


QDICT_BUCKETS = 512


def qdict_order(obj: dict[str, Any]) -> list[tuple[str, Any]]:
    """``obj``'s items as a QEMU QDict lists them: by hash bucket, and within a bucket the
    last inserted first (each bucket is a list that insertion pushes onto)."""
    items = list(obj.items())
    order = sorted(range(len(items)), key=lambda i: (_bucket(items[i][0]), -i))
    return [items[i] for i in order]


def _bucket(key: str) -> int:
    return _short_bucket(key) if len(key) <= 64 else _tdb_hash(key) % QDICT_BUCKETS


@functools.lru_cache(maxsize=1024)
def _short_bucket(key: str) -> int:
    return _tdb_hash(key) % QDICT_BUCKETS


def _tdb_hash(key: str) -> int:
    """The TDB hash QDict uses: ``len * 0x238F13AF + sum(byte[i] << (i * 5 % 24))``, then one
    linear congruential step, in 32-bit arithmetic. The shifts repeat every 24 bytes, so the
    bytes are summed per residue (a C-speed pass each) instead of one at a time."""
    data = key.encode("utf-8", "surrogatepass")
    total = 0x238F13AF * len(data)
    for k in range(min(24, len(data))):
        total += sum(data[k::24]) << (k * 5 % 24)
    return (1103515243 * (total & 0xFFFFFFFF) + 12345) & 0xFFFFFFFF


_OUT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r"}
_OUT_ESCAPES |= {"\t": "\\t"}
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f-\U0010ffff]')


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if ch in _OUT_ESCAPES:
        return _OUT_ESCAPES[ch]
    data = ch.encode("utf-16-be", "surrogatepass")
    return "".join(f"\\u{data[k]:02X}{data[k + 1]:02X}" for k in range(0, len(data), 2))


def _string(s: str) -> str:
    return '"' + _NEEDS_ESCAPE.sub(_escape, s) + '"'
