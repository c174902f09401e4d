"""Our QEMU 11.1 QMP against QEMU 11.1's own schema (tests/data/qemu-11.1/qmp/schema.json, the
migration part of its query-qmp-schema): the replies conform to the return types, every
argument member is one we read (a wrongly typed value is refused for its type, not as
unexpected), and the capability set and order are the schema's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from engine.params11 import TABLE_11_1
from tests.qmp_helpers import RawClient, endpoint, options

SCHEMA: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "qemu-11.1" / "qmp" / "schema.json").read_text()
)
COMMANDS = SCHEMA["commands"]
NOT_OURS = {"client_migrate_info"}  # a display's command
SCALARS: dict[str, tuple[type, ...]] = {"str": (str,), "bool": (bool,), "null": (type(None),)}
SCALARS |= {"int": (int,), "number": (int, float)}
EXTENSION_PARAMS = {p.name for p in TABLE_11_1.parameters if p.extension}


def problems(value: Any, schema: Any, path: str = "") -> Iterator[str]:
    """Where ``value`` does not conform to the inlined QAPI type ``schema``."""
    if isinstance(schema, str):
        ok = isinstance(value, SCALARS[schema]) and (schema == "bool") == isinstance(value, bool)
        if not ok:
            yield f"{path}: {value!r} is not {schema}"
    elif "enum" in schema:
        if value not in schema["enum"]:
            yield f"{path}: {value!r} is not one of {schema['enum']}"
    elif "array" in schema:
        if not isinstance(value, list):
            yield f"{path}: not an array"
        else:
            for i, item in enumerate(value):
                yield from problems(item, schema["array"], f"{path}[{i}]")
    elif "alternate" in schema:
        if all(any(problems(value, alt, path)) for alt in schema["alternate"]):
            yield f"{path}: {value!r} is none of {schema['alternate']}"
    elif not isinstance(value, dict):
        yield f"{path}: not an object"
    else:
        members = {m["name"]: m for m in schema["members"]}
        if "tag" in schema and value.get(schema["tag"]) in schema["variants"]:
            members |= {m["name"]: m for m in schema["variants"][value[schema["tag"]]]["members"]}
        for name, member in members.items():
            if name in value:
                yield from problems(value[name], member["type"], f"{path}.{name}")
            elif not member.get("optional"):
                yield f"{path}.{name}: missing"
        yield from (f"{path}.{name}: not in the schema" for name in value if name not in members)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[RawClient]:
    with endpoint(tmp_path, replace(options(["-S"]), config_table=TABLE_11_1)) as server:
        raw = RawClient(server.spec.address.path)
        raw.read()
        raw.send('{"execute": "qmp_capabilities"}')
        raw.read()
        yield raw
        raw.close()


def execute(client: RawClient, command: str, arguments: Any = None) -> Any:
    request = {"execute": command, **({"arguments": arguments} if arguments is not None else {})}
    client.send(json.dumps(request))
    reply = client.read()
    assert reply is not None
    return reply


@pytest.mark.parametrize(
    "command",
    ["query-status", "query-version", "query-migrate-capabilities", "query-migrate-parameters"],
)
def test_replies_conform(client: RawClient, command: str) -> None:
    reply = execute(client, command)["return"]
    if command == "query-migrate-parameters":  # our extensions (README) are not QEMU's
        reply = {k: v for k, v in reply.items() if k not in EXTENSION_PARAMS}
    assert list(problems(reply, COMMANDS[command]["ret-type"])) == []


def test_every_migration_parameter_and_capability_is_qemus(client: RawClient) -> None:
    params = execute(client, "query-migrate-parameters")["return"]
    schema = COMMANDS["query-migrate-parameters"]["ret-type"]["members"]
    # block-bitmap-mapping is shown only once set (qemu-hmp has no disks to map)
    assert set(params) - EXTENSION_PARAMS == {m["name"] for m in schema} - {"block-bitmap-mapping"}
    caps = COMMANDS["query-migrate-capabilities"]["ret-type"]["array"]["members"][0]["type"]
    names = [c["capability"] for c in execute(client, "query-migrate-capabilities")["return"]]
    ours = {c.name for c in TABLE_11_1.capabilities if c.extension}
    assert [name for name in names if name not in ours] == caps["enum"]


def _wrong(schema: Any) -> Any:
    """A JSON value no visitor of ``schema`` takes."""
    return "x" if schema in ("int", "number", "bool") else 1


@pytest.mark.parametrize(
    "command", [c for c, t in COMMANDS.items() if c not in NOT_OURS and t["arg-type"]["members"]]
)
def test_every_argument_member_is_read(client: RawClient, command: str) -> None:
    for member in COMMANDS[command]["arg-type"]["members"]:
        name = member["name"]
        desc = execute(client, command, {name: _wrong(member["type"])})["error"]["desc"]
        assert desc.startswith(
            (f"Invalid parameter type for '{name}'", f"Parameter '{name}' expects")
        ), (command, desc)
    required = [
        m["name"] for m in COMMANDS[command]["arg-type"]["members"] if not m.get("optional")
    ]
    desc = execute(client, command, {"zz": 1})["error"]["desc"]
    # QEMU's visitor looks for the required members first
    assert desc == (
        f"Parameter '{required[0]}' is missing" if required else "Parameter 'zz' is unexpected"
    )
