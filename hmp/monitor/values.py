"""String → typed value rules of `migrate_set_parameter` (QEMU's string input visitor).

Numbers follow C's ``strtoull`` (base 0: ``0x`` hex, leading ``0`` octal; a leading ``-`` wraps
modulo 2^64) and sizes follow ``qemu_strtosz`` (decimal or ``0x`` hex, an optional fraction,
one of ``B K M G T P E`` in powers of 1024).
"""

from __future__ import annotations

from collections.abc import Callable

from engine.errors import MigrationError
from engine.numbers import (
    C_SPACE,
    INT64_MAX,
    SIZE_HINT,
    SUFFIXES,
    UINT64_MAX,
    NumberError,
    RangeError,
    strtosz,
    strtou64,
)
from engine.params import UINT_LIMITS, Kind, ParamSpec, ParamValue
from hmp.qemuopts import parse_bool


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


def default_unit(spec: ParamSpec) -> str:
    """The unit of a bare number: HMP parses the bandwidths itself, in MiB; sizes are bytes."""
    return "M" if spec.name in ("max-bandwidth", "avail-switchover-bandwidth") else "B"


def spell(spec: ParamSpec, value: ParamValue) -> str:
    """``value`` as it must be typed so that the monitor reads it back as the same value:
    a byte size in its largest exact unit (33554432 → ``32M``, never a bare number that
    max-bandwidth would read as MiB), a duration or count as it is."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if not isinstance(value, int) or "bytes" not in spec.unit or value == 0:
        return str(value)
    for i in range(len(SUFFIXES) - 1, -1, -1):
        if value % 1024**i == 0:
            return f"{value // 1024**i}{SUFFIXES[i]}"
    raise AssertionError("unreachable: 1024**0 divides every integer")


def valid_text(spec: ParamSpec) -> str:
    """What ``spec`` accepts, for menus and the README. QEMU's own error text can be off
    (announce-step's says "between 0" but takes 1 up), so this reads the rule itself."""
    if spec.kind is Kind.QMP_ONLY:
        return "QMP only"
    if spec.choices:
        return " | ".join(spec.choices)
    if spec.kind in (Kind.BOOL, Kind.STR):
        return "on | off" if spec.kind is Kind.BOOL else "any string"
    check = spec.check
    if check is None:
        return {Kind.UINT8: "0–255", Kind.UINT32: "0–4294967295"}.get(spec.kind, "size")
    if check.power_of_two:
        return f"power of 2, ≥ {check.low}"
    return "size" if check.high == UINT64_MAX else f"{check.low}–{check.high}"


def size_value(spec: ParamSpec, text: str, parse: Callable[[str, str], int]) -> int:
    """A size parameter's value read by ``parse`` (a ``qemu_strtosz``), or QEMU's error."""
    unit = default_unit(spec)
    if unit == "M":
        try:
            value = parse(text, unit)
        except ValueError:
            value = -1
        if not 0 <= value <= INT64_MAX:
            raise MigrationError(f"Invalid size {text}")
        return value
    try:
        value = parse(text, "B")
    except RangeError:
        msg = f"Value '{text}' is out of range for parameter '{spec.name}'"
        raise MigrationError(msg) from None
    except NumberError:
        raise MigrationError(
            f"Parameter '{spec.name}' expects a non-negative number below 2^64", hint=SIZE_HINT
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
        _warn_hex_suffix(text, warn)
        return size_value(spec, text, strtosz)
    if spec.kind is Kind.BOOL:
        try:
            return parse_bool(text)
        except ValueError:
            raise _expects(spec.name, "'on' or 'off'") from None
    if spec.kind is Kind.ENUM and text not in spec.choices:
        raise MigrationError(f"Parameter '{spec.name}' does not accept value '{text}'")
    return text
