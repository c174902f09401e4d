"""QAPI for QMP: argument visitors with QEMU's error texts, and the JSON shapes of snapshots.

Input: a visitor takes a JSON value and its path (``capabilities[0].state``) and returns the
typed value or raises `QmpError`, in the order QEMU's qobject input visitor checks things.
Output: engine snapshots become QAPI objects, members named and omitted as QEMU 7.2 does.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from engine.errors import MigrationError
from engine.params import (
    PARAMETERS,
    TABLE_7_2,
    ConfigTable,
    Kind,
    ParamSpec,
    ParamValue,
    value_words,
    words_value,
)
from engine.snapshot import MigrationInfo, StatusInfo
from engine.state import MigrationStatus
from hmp.qmp.ghash import ghash_order

UINT64 = 1 << 64


class QmpError(Exception):
    """An error reply: ``{"error": {"class": cls, "desc": desc}}``."""

    def __init__(self, desc: str, cls: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.cls = cls

    @classmethod
    def of(cls, err: MigrationError) -> QmpError:
        return cls(err.desc, err.cls)


Visitor = Callable[[Any, str], Any]


def _wrong_type(path: str, expected: str) -> QmpError:
    return QmpError(f"Invalid parameter type for '{path}', expected: {expected}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _wrong_type(path, "string")
    return value


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _wrong_type(path, "boolean")
    return value


def integer(value: Any, path: str) -> int:
    if not _is_int(value) or not -(1 << 63) <= value < (1 << 63):
        raise _wrong_type(path, "integer")
    return int(value)


def uint64(value: Any, path: str) -> int:
    """QEMU's uintN/size visitors: any integer, negative ones wrapped "for compatibility"."""
    if not _is_int(value) or not -(1 << 63) <= value < UINT64:
        raise QmpError(f"Parameter '{path}' expects uint64")
    return int(value) % UINT64


def str_or_null(value: Any, path: str) -> str:
    """``StrOrNull`` (the tls-* parameters): null resets to the empty string."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _wrong_type(path, "StrOrNull")
    return value


def enum(choices: tuple[str, ...]) -> Visitor:
    def visit(value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise _wrong_type(path, "string")
        if value not in choices:
            # QEMU names the bare member here, and 'null' for a list element.
            name = "null" if path.endswith("]") else path.rsplit(".", 1)[-1]
            raise QmpError(f"Parameter '{name}' does not accept value '{value}'")
        return value

    return visit


def array(item: Visitor) -> Visitor:
    def visit(value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise _wrong_type(path, "array")
        return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]

    return visit


def struct(
    required: Mapping[str, Visitor], optional: Mapping[str, Visitor] | None = None
) -> Visitor:
    """An object: members are visited in declaration order, then unknown ones are rejected."""
    members = {**required, **(optional or {})}

    def visit(value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _wrong_type(path, "object")
        out: dict[str, Any] = {}
        for name, member in members.items():
            full = f"{path}.{name}" if path else name
            if name in value:
                out[name] = member(value[name], full)
            elif name in required:
                raise QmpError(f"Parameter '{full}' is missing")
        unexpected = [name for name in value if name not in members]
        if unexpected:  # QEMU names the first its visitor's hash table still holds
            left = ghash_order(value, removed=out)
            name = next(k for k in left if k in unexpected)
            raise QmpError(f"Parameter '{f'{path}.{name}' if path else name}' is unexpected")
        return out

    return visit


NO_ARGS = struct({})

_PARAM_VISITORS: dict[Kind, Visitor] = {
    Kind.UINT8: uint64,  # the engine reports "expects uint8_t" for what does not fit
    Kind.UINT32: uint64,
    Kind.SIZE: uint64,
    Kind.BOOL: boolean,
    Kind.STR: str_or_null,
    Kind.QMP_ONLY: array(lambda value, path: value),  # block-bitmap-mapping: see qmp.py
}


def _words(value: Any, path: str) -> str:
    """``['str']`` (cpr-exec-command), held as one engine value."""
    if not isinstance(value, list):
        raise QmpError(f"Invalid parameter type for '{path}', expected: array")
    return words_value([string(word, f"{path}[{i}]") for i, word in enumerate(value)])


def _param_visitor(spec: ParamSpec) -> Visitor:
    if spec.kind is Kind.WORDS:
        return _words
    return enum(spec.choices) if spec.kind is Kind.ENUM else _PARAM_VISITORS[spec.kind]


def set_parameters(table: ConfigTable) -> Visitor:
    """``MigrateSetParameters`` of a release: every member optional, typed from its table."""
    return struct({}, {p.name: _param_visitor(p) for p in table.parameters})


def set_capabilities(table: ConfigTable) -> Visitor:
    """``migrate-set-capabilities`` of a release: a list of ``MigrationCapabilityStatus``."""
    names = tuple(c.name for c in table.capabilities)
    return struct({"capabilities": array(struct({"capability": enum(names), "state": boolean}))})


SET_PARAMETERS = set_parameters(TABLE_7_2)
SET_CAPABILITIES = set_capabilities(TABLE_7_2)


# -- output ---------------------------------------------------------------------------------------
def _members(obj: Any) -> dict[str, Any]:
    """A snapshot dataclass as QAPI members: hyphenated names, absent (``None``) ones omitted."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is not None:
            out[f.name.replace("_", "-")] = (
                _members(value) if dataclasses.is_dataclass(value) else value
            )
    return out


def socket_address(uri: str) -> dict[str, Any]:
    """A bound ``tcp:HOST:PORT``/``unix:PATH`` as a QAPI ``SocketAddress`` (port as a string,
    as QEMU has it). The host is numeric and unbracketed (``tcp:::1:4444``), as QEMU prints it."""
    scheme, _, rest = uri.partition(":")
    if scheme == "unix":
        return {"type": "unix", "path": rest}
    host, _, port = rest.rpartition(":")
    out: dict[str, Any] = {"type": "inet", "host": host, "port": port}
    try:
        out[f"ipv{ipaddress.ip_address(host).version}"] = True
    except ValueError:
        pass  # a host name: QEMU reports the family only for what it bound
    return out


def migration_info(info: MigrationInfo) -> dict[str, Any]:
    """``query-migrate``: the same snapshot `info migrate` prints (its globals are HMP-only)."""
    out = _members(dataclasses.replace(info, socket_address=None))
    del out["globals"]
    if info.socket_address is not None:
        out["socket-address"] = [socket_address(uri) for uri in info.socket_address]
    return out


def migration_info_11(info: MigrationInfo) -> dict[str, Any]:
    """QEMU 11.1's ``query-migrate``: no ``compression`` nor ``ram.skipped``; ``remaining``
    while the source is active (the bytes `info migrate` shows as ``Remaining:``)."""
    out = migration_info(dataclasses.replace(info, compression=None))
    if "ram" in out:
        del out["ram"]["skipped"]
        if info.status is MigrationStatus.ACTIVE:
            out["remaining"] = out["ram"]["remaining"]
    return out


def status_info(info: StatusInfo) -> dict[str, Any]:
    return {"running": info.running, "singlestep": False, "status": str(info.status)}


def status_info_11(info: StatusInfo) -> dict[str, Any]:
    """QEMU 11.1's StatusInfo: `singlestep` is gone."""
    return {"running": info.running, "status": str(info.status)}


def migration_parameters(
    params: Mapping[str, ParamValue], specs: tuple[ParamSpec, ...] = PARAMETERS
) -> dict[str, Any]:
    """``query-migrate-parameters``; block-bitmap-mapping is never set here, so never shown."""
    return {
        p.name: value_words(params[p.name]) if p.kind is Kind.WORDS else params[p.name]
        for p in specs
        if p.kind is not Kind.QMP_ONLY
    }


def migration_capabilities(caps: Mapping[str, bool]) -> list[dict[str, Any]]:
    return [{"capability": name, "state": state} for name, state in caps.items()]
