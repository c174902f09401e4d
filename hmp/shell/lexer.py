"""A pygments lexer for monitor lines; its word lists come from a dialect's command and
capability/parameter tables (``lexer_for``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from pygments.lexer import RegexLexer, words
from pygments.token import Error, Keyword, Name, Number, String, Text, Whitespace

from hmp.monitor import DEFAULT_DIALECT, Dialect

_END = r"(?=\s|$)"  # names hold hyphens, so \b would stop inside them


def _names(names: Iterable[str]) -> object:
    # Longest first, so "migrate_set_capability" wins over "migrate".
    return words(sorted(names, key=len, reverse=True), suffix=_END)


# A lexer class compiles once per dialect (ours and a real QEMU's of one release differ by the
# extensions); the dialect is kept with it, so its id is never reused.
_LEXERS: dict[int, tuple[Dialect, type[RegexLexer]]] = {}


def lexer_for(dialect: Dialect) -> type[RegexLexer]:
    """The lexer of ``dialect``'s monitor: its commands, capabilities and parameters."""
    if id(dialect) in _LEXERS:
        return _LEXERS[id(dialect)][1]
    commands = [name for cmd in dialect.commands for name in cmd.names]
    subcommands = [name for cmd in dialect.commands for sub in cmd.sub_table for name in sub.names]

    class MonitorLexer(RegexLexer):
        name = f"QEMU {dialect.release} monitor"
        aliases: ClassVar[list[str]] = ["hmp"]

        tokens: ClassVar[dict[str, list[Any]]] = {
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
                (_names(cap.name for cap in dialect.table.capabilities), Name.Attribute),
                (_names(p.name for p in dialect.table.parameters), Name.Variable),
                (words(("on", "off"), suffix=_END), Keyword.Constant),
                (r"-[a-z]" + _END, Name.Builtin),
                (r"(tcp|unix|exec|fd|rdma|file):\S*", String),
                (r"\{[a-z]+\}", String.Interpol),  # `--pair`'s {dst}
                (r"(0x[0-9a-fA-F]+|\d+(\.\d+)?[bBkKmMgGtTpPeE]?)" + _END, Number),
                (r'"(\\.|[^"\\])*"?', String.Double),
                (r"\S+", Text),
            ],
        }

    _LEXERS[id(dialect)] = (dialect, MonitorLexer)
    return MonitorLexer


MonitorLexer = lexer_for(DEFAULT_DIALECT)
