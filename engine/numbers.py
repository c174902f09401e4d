"""QEMU's number rules (util/cutils.c), shared by the monitor, the command line and the
engine's own option strings, so every size is spelled the same everywhere.

Numbers follow C's ``strtoull`` (base 0: ``0x`` hex, leading ``0`` octal; a leading ``-`` wraps
modulo 2^64) and sizes follow ``qemu_strtosz`` (decimal or ``0x`` hex, an optional fraction,
one of ``B K M G T P E`` in powers of 1024).
"""

from __future__ import annotations

import re

UINT8_MAX = 2**8 - 1
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
INT64_MAX = 2**63 - 1
C_SPACE = " \t\n\v\f\r"
SUFFIXES = "BKMGTPE"
# QEMU's hint after a size it could not read.
SIZE_HINT = (
    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
    "and exabytes, respectively.\n"
)


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


def unit_multiplier(text: str, body: str, end: int, default_suffix: str) -> int:
    """The multiplier of the unit at ``body[end:]`` (``default_suffix`` when there is none),
    which must end ``body``; ``NumberError`` naming ``text`` when something follows it."""
    suffix = body[end : end + 1].upper()
    if suffix and suffix in SUFFIXES:
        end += 1
    else:
        suffix = default_suffix
    if end != len(body):
        raise NumberError(text)
    return 1024 ** SUFFIXES.index(suffix)


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
    mul = unit_multiplier(text, body, i, default_suffix)
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
