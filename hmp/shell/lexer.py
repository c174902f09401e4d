"""A pygments lexer for monitor lines; its word lists come from the command and engine tables."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from pygments.lexer import RegexLexer, words
from pygments.token import Error, Keyword, Name, Number, String, Text, Whitespace

from hmp.shell.dialect import Dialect, dialect_for

_END = r"(?=\s|$)"  # names hold hyphens, so \b would stop inside them


def _names(names: Iterable[str]) -> object:
    # Longest first, so "migrate_set_capability" wins over "migrate".
    return words(sorted(names, key=len, reverse=True), suffix=_END)


def _tokens(dialect: Dialect) -> dict[str, list[Any]]:
    commands = [name for cmd in dialect.commands for name in cmd.names]
    subcommands = [name for cmd in dialect.commands for sub in cmd.sub_table for name in sub.names]
    return {
        "root": [
            (r"\s+", Whitespace),
            (r"[a-z][a-z0-9]*>", Name.Label),  # `--pair`'s endpoint prefix: src>, dst>
            (_names(commands), Keyword, "args"),
            (r"\S+", Error, "args"),
        ],
        "args": [
            (r"\n", Whitespace, "#pop"),
            (r"\s+", Whitespace),
            (_names(subcommands), Name.Function),
            (_names(cap.name for cap in dialect.capabilities), Name.Attribute),
            (_names(p.name for p in dialect.parameters), Name.Variable),
            (words(("on", "off"), suffix=_END), Keyword.Constant),
            (r"-[a-z]" + _END, Name.Builtin),
            (r"(tcp|unix|exec|fd|rdma):\S*", String),
            (r"\{[a-z]+\}", String.Interpol),  # `--pair`'s {dst}
            (r"(0x[0-9a-fA-F]+|\d+(\.\d+)?[bBkKmMgGtTpPeE]?)" + _END, Number),
            (r'"(\\.|[^"\\])*"?', String.Double),
            (r"\S+", Text),
        ],
    }


def lexer_for(dialect: Dialect) -> type[RegexLexer]:
    """A lexer class whose word lists are ``dialect``'s (pygments compiles a class's tokens)."""
    attrs = {"name": f"QEMU monitor ({dialect.version})", "tokens": _tokens(dialect)}
    return type(f"MonitorLexer_{dialect.version.replace('.', '_')}", (RegexLexer,), attrs)


class MonitorLexer(RegexLexer):
    """qemu-hmp's own monitor, extensions included."""

    name = "QEMU monitor"
    aliases: ClassVar[list[str]] = ["hmp"]
    tokens: ClassVar[dict[str, list[Any]]] = _tokens(dialect_for(None))
