"""Replay QEMU 7.2's QMP postcopy errors (tests/data/qemu-7.2/postcopy/qmp_errors.jsonl) on one
of our endpoints: every reply as QEMU's, in order (the recorded replies are parsed, so member
order is test_qmp_order's concern). The two-endpoint QMP sessions of that folder are not
replayed yet. Our extension capabilities (x-compress-auto, README) are left out of
query-migrate-capabilities: QEMU has none."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qmp_helpers import RawClient, endpoint

from engine.machine import MachineOptions
from engine.params import TABLE_7_2

ORACLE = Path(__file__).parent / "data" / "qemu-7.2" / "postcopy"
TIMEOUT = 30.0
EXTENSIONS = {spec.name for spec in TABLE_7_2.capabilities if spec.extension}


def qemu_s(reply: Any) -> Any:
    """A reply without our extension capabilities (a query-migrate-capabilities list)."""
    if isinstance(reply, dict) and isinstance(reply.get("return"), list):
        kept = [c for c in reply["return"] if c.get("capability") not in EXTENSIONS]
        return {**reply, "return": kept}
    return reply


def test_postcopy_errors_match_qemu_over_qmp(tmp_path: Path) -> None:
    records = [json.loads(line) for line in (ORACLE / "qmp_errors.jsonl").read_text().splitlines()]
    sent = [r["send"] for r in records if "send" in r]
    assert len(sent) > 10  # the recording holds every error, not just the handshake
    with endpoint(tmp_path, MachineOptions(ram_size=64 << 20)) as server:
        client = RawClient(server.spec.address.path)
        try:
            assert client.read(TIMEOUT) is not None  # the greeting
            for record in records:
                if "send" in record:
                    client.send(record["send"])
                elif "recv" in record:
                    assert qemu_s(client.read(TIMEOUT)) == record["recv"], record
        finally:
            client.close()
