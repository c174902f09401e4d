"""String → typed value rules of `migrate_set_parameter` (QEMU's string input visitor).

Numbers follow C's ``strtoull`` (base 0: ``0x`` hex, leading ``0`` octal; a leading ``-`` wraps
modulo 2^64) and sizes follow ``qemu_strtosz`` (decimal or ``0x`` hex, an optional fraction,
one of ``B K M G T P E`` in powers of 1024).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from engine.errors import MigrationError
from engine.params import UINT64_MAX, Kind, ParamSpec, ParamValue

C_SPACE = " \t\n\v\f\r"
_SUFFIXES = "BKMGTPE"
_INT64_MAX = 2**63 - 1
SIZE_HINT = (
    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
    "and exabytes, respectively.\n"
)
_TRUE = ("on", "yes", "true", "y")
_FALSE = ("off", "no", "false", "n")


class NumberError(ValueError):
    """Not a number (C's EINVAL)."""


class RangeError(ValueError):
    """A number beyond 2^64 - 1 (C's ERANGE)."""


_DIGITS = {8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}


def _strtoull_prefix(text: str, base: int) -> tuple[int, int]:
    """C ``strtoull`` without the sign: value and end index; ``RangeError`` on overflow."""
    i = 0
    if base == 0:
        if text[:2].lower() == "0x" and text[2:3] and text[2] in _DIGITS[16]:
            base, i = 16, 2
        elif text[:1] == "0":
            base = 8
        else:
            base = 10
    elif base == 16 and text[:2].lower() == "0x" and text[2:3] and text[2] in _DIGITS[16]:
        i = 2
    start = i
    while i < len(text) and text[i] in _DIGITS[base]:
        i += 1
    if i == start:
        raise NumberError(text)
    value = int(text[start:i], base)
    if value > UINT64_MAX:
        raise RangeError(text)
    return value, i


def _split_sign(text: str) -> tuple[str, bool]:
    body = text.lstrip(C_SPACE)
    if body and body[0] in "+-":
        return body[1:], body[0] == "-"
    return body, False


def strtou64(text: str) -> int:
    """QEMU's ``qemu_strtou64(text, NULL, 0)``: the whole string must be one number."""
    body, negative = _split_sign(text)
    value, end = _strtoull_prefix(body, 0)
    if end != len(body):
        raise NumberError(text)
    return (-value) % 2**64 if negative else value


def strtosz(text: str, default_suffix: str = "B") -> int:
    """QEMU's ``qemu_strtosz``: ``1.5k`` is 1536; a fraction needs a unit above bytes."""
    body, negative = _split_sign(text)
    if negative:
        raise NumberError(text)
    value, i = _strtoull_prefix(body, 10)
    fraction = 0.0
    if value == 0 and body[i : i + 1] in ("x", "X"):
        value, i = _strtoull_prefix(body, 16)
        if body[i : i + 1] == ".":
            raise NumberError(text)
    elif body[i : i + 1] == ".":
        match = re.match(r"\.[0-9]*([eE][+-]?[0-9]+)?", body[i:])
        assert match is not None
        if match.group(1):
            raise NumberError(text)
        fraction = float("0" + match.group(0)) if len(match.group(0)) > 1 else 0.0
        i += len(match.group(0))
    suffix = body[i : i + 1].upper()
    if suffix and suffix in _SUFFIXES:
        i += 1
    else:
        suffix = default_suffix
    if i != len(body):
        raise NumberError(text)
    mul = 1024 ** _SUFFIXES.index(suffix)
    # QEMU keeps the fraction as 64.64 fixed point; a fraction that rounds to 1.0 wraps to 0.
    fixed = int(fraction * 2**64)
    fixed = 0 if fixed >= 2**64 else fixed
    if mul == 1:
        if fixed:
            raise NumberError(text)
        return value
    total = value * mul + ((fixed * mul) >> 64) + ((fixed * mul >> 63) & 1)
    if total > UINT64_MAX:
        raise RangeError(text)
    return total


def parse_bool(text: str) -> bool:
    """QEMU's qapi_bool_parse: ``on|yes|true|y`` or ``off|no|false|n``; ValueError otherwise."""
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(text)


def _expects(name: str, what: str) -> MigrationError:
    return MigrationError(f"Parameter '{name}' expects {what}")


def _parse_uint(spec: ParamSpec, text: str) -> int:
    try:
        value = strtou64(text)
    except ValueError:
        raise _expects(spec.name, "uint64") from None
    limit, ctype = (255, "uint8_t") if spec.kind is Kind.UINT8 else (2**32 - 1, "uint32_t")
    if value > limit:
        raise _expects(spec.name, ctype)
    return value


def _warn_hex_suffix(text: str, warn: Callable[[str], None]) -> None:
    body = text.lstrip(C_SPACE)
    if body[:2].lower() == "0x" and body[-1:].upper() in _SUFFIXES:
        warn(f"Using a multiplier suffix on hex numbers is deprecated: {text}")


def _parse_size(spec: ParamSpec, text: str, warn: Callable[[str], None]) -> int:
    _warn_hex_suffix(text, warn)
    if spec.name == "max-bandwidth":
        # HMP parses this one itself, with MiB as the default unit.
        try:
            value = strtosz(text, "M")
        except ValueError:
            value = -1
        if not 0 <= value <= _INT64_MAX:
            raise MigrationError(f"Invalid size {text}")
        return value
    try:
        value = strtosz(text)
    except RangeError:
        msg = f"Value '{text}' is out of range for parameter '{spec.name}'"
        raise MigrationError(msg) from None
    except NumberError:
        raise MigrationError(
            f"Parameter '{spec.name}' expects a non-negative number below 2^64", hint=SIZE_HINT
        ) from None
    if spec.name == "xbzrle-cache-size" and value > _INT64_MAX:
        raise MigrationError(f"Invalid size {text}")
    return value


def parse_parameter(spec: ParamSpec, text: str, warn: Callable[[str], None]) -> ParamValue:
    """``migrate_set_parameter NAME TEXT`` → the typed value, or QEMU's error.

    ``warn`` receives QEMU's deprecation warnings (hex with a unit suffix).
    """
    if spec.kind is Kind.QMP_ONLY:
        raise MigrationError(f"The {spec.name} parameter can only be set through QMP")
    if spec.kind in (Kind.UINT8, Kind.UINT32):
        return _parse_uint(spec, text)
    if spec.kind is Kind.SIZE:
        return _parse_size(spec, text, warn)
    if spec.kind is Kind.BOOL:
        try:
            return parse_bool(text)
        except ValueError:
            raise _expects(spec.name, "'on' or 'off'") from None
    if spec.kind is Kind.ENUM and text not in spec.choices:
        raise MigrationError(f"Parameter '{spec.name}' does not accept value '{text}'")
    return text
