"""QEMU 11.1's ``MigrationChannel`` list (``migrate``'s ``channels``), read as QEMU's visitor
reads it and turned into the URI the engine migrates to.

The schema (tests/data/qemu-11.1/qmp/schema.json): ``{"channel-type": "main"|"cpr", "addr":
MigrationAddress}``, ``MigrationAddress`` a union on ``transport`` (socket, exec, rdma, file),
``socket`` a ``SocketAddress`` union on ``type`` (inet, unix, vsock, fd).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hmp.qmp import qapi
from hmp.qmp.qapi import QmpError, Visitor


def union(tag: str, tags: Mapping[str, Visitor]) -> Visitor:
    """A flat union: the tag member first (an enum of ``tags``), then its variant's members."""
    read_tag = qapi.struct({tag: qapi.enum(tuple(tags))})

    def visit(value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            return read_tag(value, path)  # the type error
        kind = read_tag({tag: value[tag]} if tag in value else {}, path)[tag]
        rest = {k: v for k, v in value.items() if k != tag}
        return {tag: kind, **tags[kind](rest, path)}

    return visit


_INET_OPTIONAL: dict[str, Visitor] = {
    **dict.fromkeys(("numeric", "ipv4", "ipv6", "keep-alive", "mptcp"), qapi.boolean),
    **dict.fromkeys(
        ("to", "keep-alive-count", "keep-alive-idle", "keep-alive-interval"), qapi.integer
    ),
}
_INET = qapi.struct({"host": qapi.string, "port": qapi.string}, _INET_OPTIONAL)
_SOCKET = union(
    "type",
    {
        "inet": _INET,
        "unix": qapi.struct(
            {"path": qapi.string}, dict.fromkeys(("abstract", "tight"), qapi.boolean)
        ),
        "vsock": qapi.struct({"cid": qapi.string, "port": qapi.string}),
        "fd": qapi.struct({"str": qapi.string}),
    },
)
_ADDRESS = union(
    "transport",
    {
        "socket": _SOCKET,
        "exec": qapi.struct({"args": qapi.array(qapi.string)}),
        "rdma": _INET,
        "file": qapi.struct({"filename": qapi.string, "offset": qapi.integer}),
    },
)
CHANNELS = qapi.array(qapi.struct({"channel-type": qapi.enum(("main", "cpr")), "addr": _ADDRESS}))


def _uri(addr: dict[str, Any]) -> str:
    """The URI QEMU's own parser would have turned into this address."""
    transport = addr["transport"]
    if transport == "exec":  # QEMU runs the argv itself, a URI's command goes through a shell
        raise QmpError("qemu-hmp runs exec: migrations through /bin/sh: give 'uri' instead")
    if transport == "file":
        return f"file:{addr['filename']},offset={addr['offset']}"
    if transport == "rdma":
        return f"rdma:{addr['host']}:{addr['port']}"
    kind = addr["type"]
    if kind == "inet":
        host = addr["host"]
        return f"tcp:[{host}]:{addr['port']}" if ":" in host else f"tcp:{host}:{addr['port']}"
    if kind == "unix":
        return f"unix:{addr['path']}"
    if kind == "vsock":
        return f"vsock:{addr['cid']}:{addr['port']}"
    return f"fd:{addr['str']}"


def main_uri(channels: list[dict[str, Any]], incoming: bool = False) -> str:
    """The URI of the one ``main`` channel (qemu-hmp has no CPR channel to hand over; QEMU
    11.1's `migrate` aborts on a list of two mains or of a cpr one alone: ours refuses)."""
    if len(channels) != 1 or channels[0]["channel-type"] != "main":
        raise QmpError(
            "Channel list must have only one entry, for type 'main'"
            if incoming
            else "qemu-hmp migrates over exactly one channel, of type 'main'"
        )
    return _uri(channels[0]["addr"])
