"""``human-monitor-command`` with a `migrate` that does not say ``-d``: QEMU's HMP there cannot
suspend, so the migration goes on detached and the command answers at once; meanwhile every
other client's commands, HMP ones included, are answered.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from engine.machine import MachineOptions
from engine.state import MigrationStatus
from tests.qmp_helpers import TIMEOUT, RawClient, endpoint

DETACHED = "terminal does not allow synchronous migration, continuing detached\r\n"


def _hmp(client: RawClient, line: str) -> object:
    args = {"command-line": line}
    client.send(json.dumps({"execute": "human-monitor-command", "arguments": args}))
    while (msg := client.read(TIMEOUT)) is not None and "event" in msg:
        pass
    return msg


def test_hmp_migrate_goes_on_detached_and_blocks_no_one(tmp_path: Path) -> None:
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(1)  # accepted by the kernel, never read: the migration cannot end by itself
    with endpoint(tmp_path, MachineOptions(ram_size=64 << 20)) as server:
        clients = [RawClient(server.spec.address.path) for _ in range(2)]
        try:
            for client in clients:
                client.read()
                client.send('{"execute": "qmp_capabilities"}')
                client.read()
            first, second = clients
            port = sink.getsockname()[1]
            assert _hmp(first, f"migrate tcp:127.0.0.1:{port}") == {"return": DETACHED}
            assert _hmp(second, "info status") == {"return": "VM status: running\r\n"}
            assert _hmp(first, "info status") == {"return": "VM status: running\r\n"}
            status = server.machine.query_migrate().status
            assert status in (MigrationStatus.SETUP, MigrationStatus.ACTIVE)
        finally:
            server.machine.migrate_cancel()
            for client in clients:
                client.close()
            sink.close()
