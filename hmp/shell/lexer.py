"""A pygments lexer for monitor lines; its word lists come from the command and engine tables."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from pygments.lexer import RegexLexer, words
from pygments.token import Error, Keyword, Name, Number, String, Text, Whitespace

from engine.params import CAPABILITIES, PARAMETERS
from hmp.monitor import COMMANDS

_END = r"(?=\s|$)"  # names hold hyphens, so \b would stop inside them


def _names(names: Iterable[str]) -> object:
    # Longest first, so "migrate_set_capability" wins over "migrate".
    return words(sorted(names, key=len, reverse=True), suffix=_END)


_COMMANDS = [name for cmd in COMMANDS for name in cmd.names]
_SUBCOMMANDS = [name for cmd in COMMANDS for sub in cmd.sub_table for name in sub.names]


class MonitorLexer(RegexLexer):
    name = "QEMU monitor"
    aliases: ClassVar[list[str]] = ["hmp"]

    tokens: ClassVar[dict[str, list[Any]]] = {
        "root": [
            (r"\s+", Whitespace),
            (r"[a-z][a-z0-9]*>", Name.Label),  # `--pair`'s endpoint prefix: src>, dst>
            (_names(_COMMANDS), Keyword, "args"),
            (r"\S+", Error, "args"),
        ],
        "args": [
            (r"\n", Whitespace, "#pop"),
            (r"\s+", Whitespace),
            (_names(_SUBCOMMANDS), Name.Function),
            (_names(cap.name for cap in CAPABILITIES), Name.Attribute),
            (_names(p.name for p in PARAMETERS), Name.Variable),
            (words(("on", "off"), suffix=_END), Keyword.Constant),
            (r"-[a-z]" + _END, Name.Builtin),
            (r"(tcp|unix|exec|fd|rdma):\S*", String),
            (r"\{[a-z]+\}", String.Interpol),  # `--pair`'s {dst}
            (r"(0x[0-9a-fA-F]+|\d+(\.\d+)?[bBkKmMgGtTpPeE]?)" + _END, Number),
            (r'"(\\.|[^"\\])*"?', String.Double),
            (r"\S+", Text),
        ],
    }
