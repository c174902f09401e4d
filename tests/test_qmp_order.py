"""QEMU 7.2's QMP output as text: keys in its order, events in their place among the replies.

QEMU lists an object's keys in its QDict's hash order, and sends the MIGRATION events of a
`migrate` that fails at once before the error, but the `failed` of one that cannot connect
after the reply. These tests replay sessions recorded with their exact lines
(tests/data/qmp/{keyorder,events,incoming_events,migration}.jsonl) and compare the lines as
text; only what cannot be equal is masked: timestamps, ports, the version, and figures.
"""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from engine.machine import Machine, MachineOptions
from engine.params import CAPABILITIES, PARAMETERS
from hmp.qmp.jsonstream import JsonStreamer, dumps
from tests.qmp_helpers import TIMEOUT, RawClient, endpoint, load, options, replay_lines

_EXTENSION_PARAMS = [p.name for p in PARAMETERS if p.extension]
_EXTENSION_CAPS = [c.name for c in CAPABILITIES if c.extension]


def mask(line: str) -> str:
    """Blank timestamps, ports and the version; drop qemu-hmp's extension members."""
    line = re.sub(r'"seconds": \d+, "microseconds": \d+', '"seconds": S, "microseconds": U', line)
    line = re.sub(r'"port": "\d+"', '"port": "P"', line)
    line = re.sub(r'"micro": \d+', '"micro": M', line)
    line = re.sub(r'"package": "[^"]*"', '"package": "P"', line)
    for name in _EXTENSION_PARAMS:
        line = re.sub(rf'(, )?"{name}": [^,}}]+', "", line)
    for name in _EXTENSION_CAPS:
        line = re.sub(rf', \{{"state": (true|false), "capability": "{name}"\}}', "", line)
    return line


@pytest.mark.parametrize("case", ["keyorder", "events", "incoming_events"])
def test_lines_are_qemus(case: str, tmp_path: Path) -> None:
    with endpoint(tmp_path, options(load(case)[0]["argv"])) as server:
        replay_lines(server.spec.address.path, case, mask)


def test_keys_sharing_a_bucket_come_last_inserted_first() -> None:
    """``status`` and ``singlestep`` share a QDict bucket: QEMU lists the later one first."""
    (parsed,) = JsonStreamer().feed(b'{"b": 1, "a": 2, "status": 3, "singlestep": 4, "id": 5}')
    assert dumps(parsed) == '{"singlestep": 4, "status": 3, "a": 2, "b": 1, "id": 5}'
    assert dumps({"running": False, "singlestep": False, "status": "running"}) == (
        '{"status": "running", "singlestep": false, "running": false}'
    )


# -- query-migrate during and after a migration -----------------------------------------------
def _figures(line: str) -> str:
    """Every number blanked: the layout is what must match, not the figures."""
    return re.sub(r"(?<=[:\[] )-?\d+(\.\d+)?([eE][+-]?\d+)?", "N", line)


def _qemu_query_migrate(status: str) -> str:
    """QEMU's source-side query-migrate line in ``status``, from the recorded migration."""
    for rec in load("migration"):
        ret = rec.get("recv", {}).get("return")
        if isinstance(ret, dict) and ret.get("status") == status and "ram" in ret:
            return str(rec["raw"])
    raise AssertionError(f"no {status} query-migrate in migration.jsonl")


def _events_on(machine: Machine) -> None:
    machine.set_capabilities({"compress": True, "events": True})


def _query_migrate(client: RawClient) -> str:
    """The reply's line (the migration's events may come before it)."""
    client.send('{"execute": "query-migrate"}')
    while (line := client.line(TIMEOUT)) is not None and line.startswith('{"timestamp"'):
        pass
    assert line is not None
    return line


def test_query_migrate_while_active_is_qemus(tmp_path: Path) -> None:
    """A destination that never reads holds the migration active for as long as we look."""
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(1)  # the kernel completes the connection; nobody ever reads it
    with endpoint(tmp_path, MachineOptions(ram_size=64 << 20)) as server:
        machine = server.machine
        _events_on(machine)
        active = threading.Event()

        def on_event(name: str, data: dict[str, Any]) -> None:
            if name == "MIGRATION" and data["status"] == "active":
                active.set()

        machine.events.subscribe(on_event)
        client = RawClient(server.spec.address.path)
        try:
            client.send('{"execute": "qmp_capabilities"}')
            client.line(), client.line()  # greeting, reply
            machine.migrate(f"tcp:127.0.0.1:{sink.getsockname()[1]}")
            assert active.wait(TIMEOUT)
            line = _query_migrate(client)
            assert '"status": "active"' in line
            assert _figures(line) == _figures(_qemu_query_migrate("active"))
        finally:
            machine.migrate_cancel()
            client.close()
            sink.close()


def test_query_migrate_after_completion_is_qemus(tmp_path: Path) -> None:
    dst = Machine(MachineOptions(ram_size=64 << 20, incoming="tcp:127.0.0.1:0"))
    try:
        _events_on(dst)
        with endpoint(tmp_path, MachineOptions(ram_size=64 << 20)) as server:
            _events_on(server.machine)
            client = RawClient(server.spec.address.path)
            try:
                client.send('{"execute": "qmp_capabilities"}')
                client.line(), client.line()
                (uri,) = dst.query_migrate().socket_address or ()
                server.machine.migrate(uri)
                assert server.machine.wait_migration(TIMEOUT).status == "completed"
                line = _query_migrate(client)
                assert _figures(line) == _figures(_qemu_query_migrate("completed"))
            finally:
                client.close()
    finally:
        dst.close()
