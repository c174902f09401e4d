"""String → typed value rules of `migrate_set_parameter` (QEMU's string input visitor).

Numbers follow C's ``strtoull`` (base 0: ``0x`` hex, leading ``0`` octal; a leading ``-`` wraps
modulo 2^64) and sizes follow ``qemu_strtosz`` (decimal or ``0x`` hex, an optional fraction,
one of ``B K M G T P E`` in powers of 1024).
"""

from __future__ import annotations

from collections.abc import Callable

from engine.errors import MigrationError
from engine.numbers import C_SPACE, INT64_MAX, SUFFIXES, NumberError, RangeError, strtosz, strtou64
from engine.params import UINT_LIMITS, Kind, ParamSpec, ParamValue

_SIZE_HINT = (
    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
    "and exabytes, respectively.\n"
)
_TRUE = ("on", "yes", "true", "y")
_FALSE = ("off", "no", "false", "n")


def _expects(name: str, what: str) -> MigrationError:
    return MigrationError(f"Parameter '{name}' expects {what}")


def _parse_uint(spec: ParamSpec, text: str) -> int:
    try:
        value = strtou64(text)
    except ValueError:
        raise _expects(spec.name, "uint64") from None
    limit, ctype = UINT_LIMITS[spec.kind]
    if value > limit:
        raise _expects(spec.name, ctype)
    return value


def _warn_hex_suffix(text: str, warn: Callable[[str], None]) -> None:
    body = text.lstrip(C_SPACE)
    if body[:2].lower() == "0x" and body[-1:].upper() in SUFFIXES:
        warn(f"Using a multiplier suffix on hex numbers is deprecated: {text}")


def _parse_size(spec: ParamSpec, text: str, warn: Callable[[str], None]) -> int:
    _warn_hex_suffix(text, warn)
    if spec.name == "max-bandwidth":
        # HMP parses this one itself, with MiB as the default unit.
        try:
            value = strtosz(text, "M")
        except ValueError:
            value = -1
        if not 0 <= value <= INT64_MAX:
            raise MigrationError(f"Invalid size {text}")
        return value
    try:
        value = strtosz(text)
    except RangeError:
        msg = f"Value '{text}' is out of range for parameter '{spec.name}'"
        raise MigrationError(msg) from None
    except NumberError:
        raise MigrationError(
            f"Parameter '{spec.name}' expects a non-negative number below 2^64", hint=_SIZE_HINT
        ) from None
    if spec.name == "xbzrle-cache-size" and value > INT64_MAX:
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
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise _expects(spec.name, "'on' or 'off'")
    if spec.kind is Kind.ENUM and text not in spec.choices:
        raise MigrationError(f"Parameter '{spec.name}' does not accept value '{text}'")
    return text
