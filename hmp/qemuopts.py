"""QEMU's ``name=value,...`` option strings (QemuOpts), with QEMU 7.2's parse rules and texts.

``,,`` is a comma inside a value; a bare ``name`` means ``name=on`` and ``noname``
``name=off``; the first item may leave its name out when the option list has an implied one
(``-m 64M`` is ``size=64M``); ``id`` is skipped; of two settings the later wins. Each name must
be in the table, and each value must parse as its type, or the whole string is refused.
"""

from __future__ import annotations

from enum import Enum

from engine.numbers import SIZE_HINT, NumberError, RangeError, strtosz, strtou64


class OptType(Enum):
    STRING = "string"
    BOOL = "bool"
    NUMBER = "number"
    SIZE = "size"


_TRUE = ("on", "yes", "true", "y")
_FALSE = ("off", "no", "false", "n")


def parse_bool(text: str) -> bool:
    """QEMU's qapi_bool_parse: ``on|yes|true|y`` or ``off|no|false|n``; ValueError otherwise."""
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(text)


class OptionError(ValueError):
    """QEMU's ``error_report`` messages about one command-line option, in order.

    Each message is printed as ``qemu-hmp: MESSAGE``; a message may carry hint lines after
    its first, which QEMU prints bare.
    """

    def __init__(self, *messages: str) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages

    def located(self, where: str) -> OptionError:
        """The same messages after QEMU's location prefix (``-qmp VALUE: ``)."""
        return OptionError(*(f"{where}: {message}" for message in self.messages))


def _value(params: str, start: int) -> tuple[str, int]:
    """A value up to the next single comma (``,,`` is a comma); the value and that index."""
    out: list[str] = []
    i = start
    while i < len(params):
        if params[i] == ",":
            if params[i + 1 : i + 2] != ",":
                break
            i += 1
        out.append(params[i])
        i += 1
    return "".join(out), i


def _check(name: str, kind: OptType, value: str) -> None:
    """QEMU's qemu_opt_parse of one value: its error for a value its type refuses."""
    try:
        if kind is OptType.BOOL:
            parse_bool(value)
        elif kind is OptType.NUMBER:
            strtou64(value)
        elif kind is OptType.SIZE:
            strtosz(value)
    except RangeError:
        limit = "out of range" if kind is OptType.SIZE else "too large"
        raise OptionError(f"Value '{value}' is {limit} for parameter '{name}'") from None
    except NumberError:
        if kind is OptType.SIZE:
            expected = f"a non-negative number below 2^64\n{SIZE_HINT.rstrip()}"
        else:
            expected = "a number"
        raise OptionError(f"Parameter '{name}' expects {expected}") from None
    except ValueError:
        raise OptionError(f"Parameter '{name}' expects 'on' or 'off'") from None


def parse_opts(
    params: str, table: dict[str, OptType], implied: str | None = None
) -> dict[str, str]:
    """``params`` → name → value (as written), checked against ``table``; OptionError."""
    opts: dict[str, str] = {}
    i = 0
    while i < len(params):
        end = i
        while end < len(params) and params[end] not in "=,":
            end += 1
        if end < len(params) and params[end] == "=":
            name = params[i:end]
            value, i = _value(params, end + 1)
        elif implied is not None:
            name = implied
            value, i = _value(params, i)
        else:  # a flag: "name" or "noname"
            name, i = params[i:end], end
            name, value = (name[2:], "off") if name.startswith("no") else (name, "on")
        implied = None
        i += i < len(params)  # the comma after this item
        if name == "id":
            continue
        if name not in table:
            raise OptionError(f"Invalid parameter '{name}'")
        _check(name, table[name], value)
        opts[name] = value
    return opts


def flag(opts: dict[str, str], name: str, default: bool = False) -> bool:
    """A BOOL option's value (already checked by parse_opts)."""
    return parse_bool(opts[name]) if name in opts else default


def take_option(argv: list[str], name: str) -> tuple[list[str], list[str]]:
    """Every value of ``-NAME VALUE`` (or ``--NAME``, as QEMU allows) out of ``argv``, in
    order, and the arguments left; OptionError when the last one has no value."""
    values: list[str] = []
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in (f"-{name}", f"--{name}"):
            value = next(args, None)
            if value is None:
                raise OptionError(f"{arg}: requires an argument")
            values.append(value)
        else:
            rest.append(arg)
    return values, rest
