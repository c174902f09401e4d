"""QEMU 11.1's JSON reader: 7.2's lexer (jsonstream.py) feeding a push parser.

What changed since 7.2, as QEMU 11.1.3 answers (tests/data/qemu-11.1/qmp/protocol.jsonl, and
README.md there):

- Each token goes to the parser as it is lexed, so an error is reported on the token that
  shows it, even while braces are still open; the tokens after it are dropped until the
  braces and brackets balance again.
- Errors start with ``LINE:COLUMN: `` of that token, counted from 1 since the connection
  opened. A token that begins on the very byte that ended a number, a keyword or the skipping
  after a lexer error is placed one column further on (QEMU counts that byte twice).
- The texts: ``expecting key``, ``expecting ':'``, ``expected ',' or '}'``, ``expected ','
  or ']'``; ``duplicate key`` on the token that completed the value.
- Skipping after a lexer error also stops at ``:`` and ``,``.
"""

from __future__ import annotations

import re
from typing import Any

from hmp.qmp.jsonstream import (
    _KEYWORDS,
    MAX_NESTING,
    MAX_TOKEN_COUNT,
    MAX_TOKEN_SIZE,
    JsonError,
    JsonStreamer,
    _number,
    _ParseError,
    _unquote,
)

_RECOVERY_STOP_11 = re.compile(rb"[{}\[\]:,\x00-\x08\x0a-\x1f\xfe\xff]")
_MORE = object()  # the parser needs more tokens for its value


class _Frame:
    """An open container, what it waits for next, and (a dict's) the key of the coming value."""

    def __init__(self, container: dict[str, Any] | list[Any], wants: str) -> None:
        self.container = container
        self.wants = wants  # "key-or-end", "key", "colon", "value-or-end", "value", "sep"
        self.key = ""


class _PushParser:
    """One token at a time to a value, with QEMU 11.1's texts."""

    def __init__(self) -> None:
        self.stack: list[_Frame] = []

    def push(self, kind: str, text: bytes) -> Any:
        """The finished value, or `_MORE`; a `_ParseError` on the token that is wrong."""
        top = self.stack[-1] if self.stack else None
        wants = top.wants if top else "value"
        if top and wants in ("key-or-end", "key"):
            if wants == "key-or-end" and kind == "}":
                return self._close()
            if kind != "str":
                raise _ParseError("expecting key")
            top.key, top.wants = _unquote(text), "colon"
            return _MORE
        if top and wants == "colon":
            if kind != ":":
                raise _ParseError("expecting ':'")
            top.wants = "value"
            return _MORE
        if top and wants == "sep":
            in_dict = isinstance(top.container, dict)
            if kind == ",":
                top.wants = "key" if in_dict else "value"
                return _MORE
            if kind != ("}" if in_dict else "]"):
                raise _ParseError("expected ',' or '}'" if in_dict else "expected ',' or ']'")
            return self._close()
        if top and wants == "value-or-end" and kind == "]":
            return self._close()
        if top:
            top.wants = "value"
        return self._value(kind, text)

    def _value(self, kind: str, text: bytes) -> Any:
        if kind in "{[":
            container: dict[str, Any] | list[Any] = {} if kind == "{" else []
            self.stack.append(_Frame(container, "key-or-end" if kind == "{" else "value-or-end"))
            return _MORE
        if kind == "str":
            return self._store(_unquote(text))
        if kind == "num":
            return self._store(_number(text.decode()))
        if kind == "kw":
            word = text.decode("utf-8", "replace")
            if word not in _KEYWORDS:
                raise _ParseError(f"invalid keyword '{word}'")
            return self._store(_KEYWORDS[word])
        raise _ParseError("expecting value")

    def _close(self) -> Any:
        return self._store(self.stack.pop().container)

    def _store(self, value: Any) -> Any:
        """A finished value: the result, or the next member of the container it is in."""
        if not self.stack:
            return value
        top = self.stack[-1]
        if isinstance(top.container, dict):
            if top.key in top.container:
                raise _ParseError("duplicate key")
            top.container[top.key] = value
        else:
            top.container.append(value)
        top.wants = "sep"
        return _MORE


class JsonStreamer11(JsonStreamer):
    """`JsonStreamer` as QEMU 11.1 reads: tokens pushed one by one, errors placed."""

    _recovery_stop = _RECOVERY_STOP_11

    def __init__(self) -> None:
        super().__init__()
        self._parser = _PushParser()
        self._depth = [0, 0]  # open braces, open brackets
        self._tokens = self._bytes = 0  # of the value being read
        self._dropping = False  # after an error, until the braces balance
        self._data = b""
        self._lines = 0  # newlines before the data being fed
        self._line_start = 0  # the offset just after the last of them
        self._lookahead_at = -1  # the byte that ended a number, keyword or skipping
        self._started: tuple[int, str] = (-1, "")  # a token begun in earlier data, its place

    def feed(self, data: bytes) -> list[Any]:
        self._data = data
        return super().feed(data)

    def _fed(self, data: bytes) -> None:
        if self._parts and self._started[0] != self._token_at:  # a token goes on next time
            self._started = (self._token_at, self._where(self._token_at))
        if (last := data.rfind(b"\n")) >= 0:
            self._lines += data.count(b"\n")
            self._line_start = self._base + last + 1

    def _where(self, at: int) -> str:
        """``LINE:COLUMN`` of the token starting at offset ``at``, as QEMU counts them."""
        if at < self._base:
            return self._started[1]
        i = at - self._base
        line, start = self._lines + 1, self._line_start
        if (last := self._data.rfind(b"\n", 0, i)) >= 0:
            line += self._data.count(b"\n", 0, i)
            start = self._base + last + 1
        return f"{line}:{at - start + 1 + (at == self._lookahead_at)}"

    def _recovered(self, at: int) -> None:
        self._lookahead_at = at

    def _emit(self, kind: str, text: bytes) -> None:
        place = self._token_at
        self._process(kind, text, place)
        if kind in ("num", "kw"):
            self._lookahead_at = place + len(text)

    def _stray_token(self, text: str) -> None:
        self._process("error", text.encode(), self._token_at, text)

    def _process(self, kind: str, text: bytes, at: int, stray: str = "") -> None:
        """QEMU 11.1's json_message_process_token: count, check the limits, parse."""
        depth = self._depth
        which = "{}[]".find(kind) if kind in ("{", "}", "[", "]") else -1
        if which in (0, 2):
            depth[which // 2] += 1
        elif which in (1, 3) and depth[which // 2]:
            depth[which // 2] -= 1
        elif which in (1, 3) or kind == "error":  # unbalanced: start afresh
            depth[0] = depth[1] = 0
        self._tokens += 1
        self._bytes += len(text)
        if not self._dropping:
            error = ""
            if self._bytes >= MAX_TOKEN_SIZE:
                error = "JSON token size limit exceeded"
            elif self._tokens > MAX_TOKEN_COUNT:
                error = "JSON token count limit exceeded"
            elif depth[0] + depth[1] > MAX_NESTING:
                error = "JSON nesting depth limit exceeded"
            elif kind == "error":
                error = f"{self._where(at)}: JSON parse error, stray '{stray}'"
            else:
                try:
                    value = self._parser.push(kind, text)
                except _ParseError as exc:
                    error = f"{self._where(at)}: JSON parse error, {exc}"
                else:
                    if value is not _MORE:
                        self._out.append(value)
            if error:
                self._out.append(JsonError(error))
                self._dropping = True
        if depth[0] == depth[1] == 0:
            self._reset()

    def _reset(self) -> None:
        self._parser.stack.clear()
        self._depth = [0, 0]
        self._tokens = self._bytes = 0
        self._dropping = False

    def _fail(self, desc: str) -> None:
        """The lexer's own limit (a token over MAX_TOKEN_SIZE) ends the value, as in 7.2."""
        self._out.append(JsonError(desc))
        self._reset()
        self._state = "start"
