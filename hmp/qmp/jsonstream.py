"""JSON as QEMU's QMP monitor reads and writes it (its own lexer, not RFC 8259 strict).

Input is a stream, not lines: a value ends when its braces and brackets balance, so one line
may hold several requests and one request may span lines. QEMU's extensions and limits are
kept: single-quoted strings, integers beyond int64 read as uint64 then as double, and a lexer
error drops the value being built, reports ``stray '…'``, and skips input up to the next
structural character or line end. Output escapes every non-printable or non-ASCII character
as ``\\uXXXX`` (upper-case hex) and prints doubles with 17 significant digits, as QEMU does.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Any

MAX_NESTING = 1024  # QEMU's json-streamer limits: a client cannot make us hoard memory
MAX_TOKEN_SIZE = 64 << 20
MAX_TOKEN_COUNT = 2 << 20
_DIGITS = "0123456789"
_HEX = "0123456789abcdefABCDEF"
_STRUCTURAL = "{}[]"
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n"}
_ESCAPES |= {"r": "\r", "t": "\t"}
_KEYWORDS: dict[str, Any] = {"true": True, "false": False, "null": None}


@dataclass(frozen=True)
class JsonError:
    """A value that could not be read; ``desc`` is QEMU's ``JSON parse error, …`` text."""

    desc: str


@dataclass(frozen=True)
class _Tok:
    kind: str  # one of "{}[]:,", "str", "num", "kw"
    text: str


class _ParseError(Exception):
    pass


class JsonStreamer:
    """Feed bytes, get back complete values (``dict``, ``list``, …) and `JsonError`s in order."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._tokens: list[_Tok] = []
        self._size = 0
        self._depth = {"{": 0, "[": 0}
        self._tok = ""  # the token being lexed
        self._state = "start"  # start | str | num | kw | recover
        self._quote = ""
        self._escape = False
        self._out: list[Any] = []

    def feed(self, data: bytes) -> list[Any]:
        for ch in self._decoder.decode(data):
            self._lex(ch)
        out, self._out = self._out, []
        return out

    # -- lexer --------------------------------------------------------------------------------
    def _lex(self, ch: str) -> None:
        state = self._state
        if len(self._tok) > MAX_TOKEN_SIZE:
            self._fail("JSON token size limit exceeded")
        if state == "str":
            self._string_char(ch)
        elif state == "num":
            self._number_char(ch)
        elif state == "kw":
            if "a" <= ch <= "z":
                self._tok += ch
            else:
                self._emit("kw")
                self._lex(ch)
        elif state == "recover":
            if ch in _STRUCTURAL or (ch < " " and ch != "\t"):
                self._state = "start"
                self._lex(ch)
        elif ch in " \t\r\n":
            pass
        elif ch in "{}[]:,":
            self._tok = ch
            self._emit(ch)
        elif ch in "\"'":
            self._tok, self._quote, self._state = ch, ch, "str"
        elif ch == "-" or ch in _DIGITS:
            self._tok, self._state = ch, "num"
        elif "a" <= ch <= "z":
            self._tok, self._state = ch, "kw"
        else:
            self._stray(ch)

    def _string_char(self, ch: str) -> None:
        if ch < " ":
            self._stray(self._tok + ch)
            return
        self._tok += ch
        if self._escape:
            self._escape = False  # escapes are checked by the parser
        elif ch == "\\":
            self._escape = True
        elif ch == self._quote:
            self._emit("str")

    def _number_char(self, ch: str) -> None:
        tok = self._tok
        body = tok.lstrip("-")
        if ch in _DIGITS:
            if body == "0":
                self._stray(tok + ch)  # no leading zeros
                return
        elif ch == "." and body and "." not in body and "e" not in body.lower():
            pass
        elif ch in "eE" and body and body[-1] in _DIGITS and "e" not in body.lower():
            pass
        elif ch in "+-" and body[-1:] in ("e", "E"):
            pass
        elif body and body[-1] in _DIGITS:
            self._emit("num")
            self._lex(ch)
            return
        else:
            self._stray(tok + ch)
            return
        self._tok += ch

    def _stray(self, text: str) -> None:
        self._fail(f"JSON parse error, stray '{text}'")
        self._state = "recover"

    def _fail(self, desc: str) -> None:
        self._out.append(JsonError(desc))
        self._tokens, self._size, self._tok = [], 0, ""
        self._depth = {"{": 0, "[": 0}
        self._state = "start"

    # -- streamer: group tokens into values -----------------------------------------------------
    def _emit(self, kind: str) -> None:
        tok = _Tok(kind, self._tok)
        self._tok, self._state = "", "start"
        self._tokens.append(tok)
        self._size += len(tok.text)
        if kind in "{[":
            self._depth[kind] += 1
        elif kind in "}]":
            self._depth["{" if kind == "}" else "["] -= 1
        braces, brackets = self._depth["{"], self._depth["["]
        if braces + brackets > MAX_NESTING:
            self._fail("JSON nesting depth limit exceeded")
        elif len(self._tokens) > MAX_TOKEN_COUNT:
            self._fail("JSON token count limit exceeded")
        elif self._size > MAX_TOKEN_SIZE:
            self._fail("JSON token size limit exceeded")
        elif braces < 0 or brackets < 0 or (braces == 0 and brackets == 0):
            tokens = self._tokens
            self._tokens, self._size = [], 0
            self._depth = {"{": 0, "[": 0}
            try:
                self._out.append(_Parser(tokens).value())
            except _ParseError as exc:
                self._out.append(JsonError(f"JSON parse error, {exc}"))


class _Parser:
    """One balanced token group to a value, with QEMU's error texts.

    Iterative, with an explicit stack: nesting up to `MAX_NESTING` must not hit Python's
    recursion limit.
    """

    def __init__(self, tokens: list[_Tok]) -> None:
        self._tokens = tokens
        self._pos = 0

    def _next(self) -> _Tok | None:
        if self._pos >= len(self._tokens):
            return None
        self._pos += 1
        return self._tokens[self._pos - 1]

    def _peek(self, kind: str) -> bool:
        """Consume the next token if it is ``kind``."""
        if self._pos < len(self._tokens) and self._tokens[self._pos].kind == kind:
            self._pos += 1
            return True
        return False

    def _key(self, obj: dict[str, Any]) -> str:
        tok = self._next()
        if tok is None or tok.kind in "}],:":
            raise _ParseError("expecting value")
        if tok.kind == "kw" and tok.text not in _KEYWORDS:
            raise _ParseError(f"invalid keyword '{tok.text}'")
        if tok.kind != "str":
            raise _ParseError("key is not a string in object")
        key = _unquote(tok.text)
        colon = self._next()
        if colon is None or colon.kind != ":":
            raise _ParseError("missing : in object pair")
        if key in obj:
            raise _ParseError("duplicate key")
        return key

    def value(self) -> Any:
        stack: list[tuple[dict[str, Any] | list[Any], str]] = []  # open containers, their key
        while True:
            tok = self._next()
            if tok is None or tok.kind in "}],:":
                raise _ParseError("expecting value")
            value: Any
            if tok.kind == "{":
                value = {}
                if not self._peek("}"):
                    stack.append((value, self._key(value)))
                    continue
            elif tok.kind == "[":
                value = []
                if not self._peek("]"):
                    stack.append((value, ""))
                    continue
            elif tok.kind == "str":
                value = _unquote(tok.text)
            elif tok.kind == "num":
                value = _number(tok.text)
            elif tok.text in _KEYWORDS:
                value = _KEYWORDS[tok.text]
            else:
                raise _ParseError(f"invalid keyword '{tok.text}'")
            # Store the finished value; close every container it completes.
            while stack:
                container, key = stack[-1]
                sep = self._next()
                if isinstance(container, dict):
                    container[key] = value
                    if sep is not None and sep.kind == ",":
                        stack[-1] = (container, self._key(container))
                        break
                    if sep is None or sep.kind != "}":
                        raise _ParseError("expected separator in dict")
                else:
                    container.append(value)
                    if sep is not None and sep.kind == ",":
                        break
                    if sep is None or sep.kind != "]":
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


def _unquote(text: str) -> str:
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        i += 1
        if ch != "\\":
            out.append(ch)
            continue
        esc = body[i : i + 1]
        if esc in _ESCAPES:
            out.append(_ESCAPES[esc])
            i += 1
        elif esc == "u":
            cp, i = _codepoint(body, i - 1, text)
            out.append(chr(cp))
        else:
            raise _ParseError("invalid escape sequence in string")
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
    """One QMP message as QEMU writes it (``", "`` and ``": "`` separators, no newline)."""
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{_string(k)}: {dumps(v)}" for k, v in obj.items()) + "}"
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


_OUT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r"}
_OUT_ESCAPES |= {"\t": "\\t"}


def _string(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in _OUT_ESCAPES:
            out.append(_OUT_ESCAPES[ch])
        elif " " <= ch < "\x7f":
            out.append(ch)
        else:
            data = ch.encode("utf-16-be", "surrogatepass")
            out.extend(f"\\u{data[k]:02X}{data[k + 1]:02X}" for k in range(0, len(data), 2))
    out.append('"')
    return "".join(out)
