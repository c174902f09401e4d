"""Tab completion for monitor lines, derived from a dialect's command and engine tables.

Commands and their aliases come from the dialect's command table, ``info``'s sub-commands
from its ``sub_table``, flags from each command's args_type, and the values of an argument
from what its key names: ``capability`` → the capability table, ``parameter`` → the
parameter table, a ``b`` argument → ``on``/``off``; the value of ``migrate_set_parameter`` →
hints from that parameter's kind, choices, range and default (QEMU's own completion does the
same per command).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from engine.params import CapabilitySpec, Kind, ParamSpec, ParamValue
from hmp.monitor import (
    DEFAULT_DIALECT,
    ArgSpec,
    Command,
    Dialect,
    find_command,
    hmp_help,
    spell,
    valid_text,
)

Current = Callable[[str], ParamValue]  # a parameter's value now, for the hint


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0]


def _matches(word: str, candidates: Iterable[tuple[str, str]]) -> Iterator[Completion]:
    for name, meta in candidates:
        if name.startswith(word):
            yield Completion(name, -len(word), display_meta=meta)


def _command_names(table: Sequence[Command]) -> Iterator[tuple[str, str]]:
    for cmd in table:
        for name in cmd.names:
            yield name, _first_line(cmd.help)


def _capabilities(specs: Iterable[CapabilitySpec]) -> Iterator[tuple[str, str]]:
    for cap in specs:
        yield cap.name, cap.doc


def show_value(spec: ParamSpec, value: ParamValue) -> str:
    """A parameter value as a person reads it (`on`, `''`, `300 ms`): menus and the README."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value} {spec.unit}".rstrip() if value != "" else "''"


def param_hint(spec: ParamSpec) -> str:
    """The meta text of a parameter: its default, what it accepts and what it is."""
    return "; ".join((f"default {show_value(spec, spec.default)}", valid_text(spec), spec.doc))


def _parameters(specs: Iterable[ParamSpec]) -> Iterator[tuple[str, str]]:
    for spec in specs:
        if spec.kind is not Kind.QMP_ONLY:  # the monitor cannot set it
            yield spec.name, param_hint(spec)


def _param_values(spec: ParamSpec, current: Current | None) -> Iterator[tuple[str, str]]:
    if spec.kind is Kind.BOOL:
        yield from (("on", ""), ("off", ""))
    elif spec.choices:
        yield from ((choice, "") for choice in spec.choices)
    elif spec.kind is not Kind.STR and spec.kind is not Kind.QMP_ONLY:
        # A number: offer the current value (then the default), spelled so that it reads
        # back as the same value, with what the parameter accepts as meta.
        rule = valid_text(spec)
        if current is not None and current(spec.name) != spec.default:
            yield spell(spec, current(spec.name)), f"current; {rule}"
        yield spell(spec, spec.default), f"default; {rule}"


class MonitorCompleter(Completer):
    """Completes ``COMMAND [ARG...]`` by the position of the word under the cursor."""

    def __init__(
        self,
        table: Sequence[Command] | None = None,
        current: Current | None = None,
        endpoints: Sequence[str] = (),
        dialect: Dialect = DEFAULT_DIALECT,
    ):
        self.table = dialect.commands if table is None else table
        self.config = dialect.table  # the capabilities and parameters it offers
        self.current = current
        self.prefixes = [f"{name}>" for name in endpoints]  # `--pair`'s `dst> LINE`

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        text = document.text_before_cursor
        words = text.split()
        word = "" if not text or text[-1].isspace() else words.pop()
        if words[:1] and words[0] in self.prefixes:
            words.pop(0)
        elif not words:
            yield from _matches(word, ((prefix, "endpoint") for prefix in self.prefixes))
        if not words:
            yield from _matches(word, _command_names(self.table))
            return
        cmd = find_command(self.table, words[0])
        if cmd is not None:
            yield from _matches(word, self._arguments(cmd, words[1:], word))

    def _arguments(self, cmd: Command, done: list[str], word: str) -> Iterator[tuple[str, str]]:
        if cmd.sub_table:
            if not done:
                yield from _command_names(cmd.sub_table)
            return
        if cmd.handler is hmp_help:  # `help CMD [SUB]` names commands
            yield from self._help_words(done)
            return
        flags = [spec for spec in cmd.args if spec.kind == "-"]
        if word.startswith("-"):
            yield from ((f"-{s.flag}", s.key) for s in flags if f"-{s.flag}" not in done)
            return
        positional = [spec for spec in cmd.args if spec.kind != "-"]
        values = [w for w in done if not (w.startswith("-") and len(w) == 2)]
        if len(values) < len(positional):
            yield from self._values(positional[len(values)], values)

    def _help_words(self, done: list[str]) -> Iterator[tuple[str, str]]:
        if not done:
            yield from _command_names(self.table)
            return
        cmd = find_command(self.table, done[0])
        if cmd is not None and cmd.sub_table and len(done) == 1:
            yield from _command_names(cmd.sub_table)

    def _values(self, spec: ArgSpec, before: list[str]) -> Iterator[tuple[str, str]]:
        if spec.kind == "b":
            yield from (("on", ""), ("off", ""))
        elif spec.key == "capability":
            yield from _capabilities(self.config.capabilities)
        elif spec.key == "parameter":
            yield from _parameters(self.config.parameters)
        elif spec.key == "value" and before and before[0] in self.config.params_by_name:
            yield from _param_values(self.config.params_by_name[before[0]], self.current)
