"""QEMU 11.1's `migrate_set_parameter` value rules, where they differ from 7.2's (values.py).

11.1 hands the rest of the line to the parameter verbatim (trailing spaces included), reads
``cpr-exec-command`` as shell words, and reads sizes with its rewritten ``qemu_strtosz``: no
sign (a ``-`` is out of range), a bare fraction (``.5``), no fraction or suffix after hex,
and a fraction that rounds to 1.0 carried into the integer.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable

from engine.errors import MigrationError
from engine.numbers import (
    C_SPACE,
    SUFFIXES,
    UINT64_MAX,
    NumberError,
    RangeError,
    unit_multiplier,
)
from engine.params import Kind, ParamSpec, ParamValue, words_value
from hmp.monitor import values

_FRACTION = re.compile(r"\.[0-9]*([eE][+-]?[0-9]+)?")


def _digits(text: str, i: int, alphabet: str) -> int:
    end = i
    while end < len(text) and text[end] in alphabet:
        end += 1
    return end


def strtosz(text: str, default_suffix: str = "B") -> int:
    """QEMU 11.1's ``qemu_strtosz``; ``NumberError`` or ``RangeError`` as its EINVAL/ERANGE."""
    body = text.lstrip(C_SPACE)
    if body[:1] == "-":
        raise RangeError(text)  # parse_uint refuses a sign with ERANGE
    body = body.removeprefix("+")
    end = _digits(body, 0, "0123456789")
    value = int(body[:end]) if end else 0
    fraction = 0.0
    if end and value == 0 and body[end : end + 1] in ("x", "X"):
        hex_end = _digits(body, end + 1, "0123456789abcdefABCDEF")
        if hex_end == end + 1:
            raise NumberError(text)
        value, end = int(body[end + 1 : hex_end], 16), hex_end
        after = body[end : end + 1]
        if after == "." or (after and after.upper() in SUFFIXES):
            raise NumberError(text)
    elif body[end : end + 1] == ".":
        match = _FRACTION.match(body, end)
        assert match is not None
        if match.group(1) or (not end and len(match.group(0)) == 1):
            raise NumberError(text)
        fraction = float("0" + match.group(0)) if len(match.group(0)) > 1 else 0.0
        end = match.end()
        if fraction == 1.0:  # strtod rounded the fraction up: carry it
            value, fraction = value + 1, 0.0
    elif not end:
        raise NumberError(text)
    mul = unit_multiplier(text, body, end, default_suffix)
    fixed = int(fraction * 2**64) or (1 if fraction > 0 else 0)
    if mul == 1 and fixed:
        raise NumberError(text)
    total = value * mul + ((fixed * mul) >> 64)
    if total > UINT64_MAX:
        raise RangeError(text)
    return total


def parse_parameter(spec: ParamSpec, text: str, warn: Callable[[str], None]) -> ParamValue:
    """``migrate_set_parameter NAME REST-OF-LINE`` → the typed value, or QEMU 11.1's error."""
    if spec.kind is Kind.SIZE:
        return values.size_value(spec, text, strtosz)
    if spec.kind is Kind.WORDS:
        try:
            return words_value(shlex.split(text))
        except ValueError as exc:  # an unterminated quote
            raise MigrationError(f"Parameter '{spec.name}' expects a command line: {exc}") from None
    return values.parse_parameter(spec, text, warn)
