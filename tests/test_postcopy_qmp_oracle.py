"""Replay QEMU 7.2's QMP postcopy sessions (tests/data/qemu-7.2/postcopy/*.jsonl).

``qmp_errors`` (one endpoint): every reply as QEMU's, in order (parsed: member order is
test_qmp_order's concern); our extension capabilities (x-compress-auto, README) are left out
of query-migrate-capabilities, QEMU has none. The two-endpoint sessions (a whole postcopy,
pause and recovery, cancel, a peer SIGKILLed, here closed): each reply's shape as QEMU's (its
members, with numbers and port strings as their kind) and each endpoint's events in QEMU's
order, timestamps aside (across the two endpoints the order is the timing's). As in
test_postcopy_oracle, the source's background scan is held from precopy on until the case
waits for `completed`, so the postcopy-active window the recording saw stays open.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from qmp_helpers import RawClient, endpoint

from engine.machine import Machine, MachineOptions
from engine.params import TABLE_7_2
from engine.source import OutgoingMigration
from engine.state import MigrationStatus
from hmp.harness.endpoint import free_port
from hmp.qmp.server import QmpServer

ORACLE = Path(__file__).parent / "data" / "qemu-7.2" / "postcopy"
TIMEOUT = 30.0
RAM = 32 << 20  # as test_postcopy_oracle's guest
DIRTIER = "random-writer,rate=20000,wss=1M"
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


class Peer:
    """One of our endpoints with a QMP client: its replies and its events, each in order."""

    def __init__(self, tmp_path: Path, name: str, opts: MachineOptions) -> None:
        self.machine = Machine(opts)
        self.server = QmpServer(self.machine, f"unix:{tmp_path / name}.sock,server=on,wait=off")
        self.server.start()
        self.client = RawClient(self.server.spec.address.path)
        assert self.client.read(TIMEOUT) is not None  # the greeting
        self.events: list[dict[str, Any]] = []
        self.alive = True

    def _next(self, want_event: bool) -> dict[str, Any]:
        if want_event and self.events:
            return self.events.pop(0)
        while True:
            message = self.client.read(TIMEOUT)
            assert message is not None, "nothing came"
            if "event" not in message:
                if want_event:
                    raise AssertionError(f"a reply before the event: {message}")
                return dict(message)
            if not want_event:
                self.events.append(message)
                continue
            return dict(message)

    def reply(self) -> dict[str, Any]:
        return self._next(want_event=False)

    def event(self) -> dict[str, Any]:
        return self._next(want_event=True)

    def close(self) -> None:
        if self.alive:
            self.alive = False
            self.client.close()
            self.server.close()
            self.machine.close()


def shape(value: Any) -> Any:
    """What a reply says, without its measurements: numbers and ports become their kind."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return "number"
    return "digits" if isinstance(value, str) and value.isdigit() else value


def event_of(message: dict[str, Any]) -> tuple[str, Any]:
    return message["event"], message.get("data")


@pytest.mark.parametrize(
    "case", ["qmp_postcopy", "qmp_recover", "qmp_cancel", "qmp_kill_dst", "qmp_kill_src"]
)
def test_postcopy_sessions_match_qemu_over_qmp(tmp_path: Path, case: str) -> None:
    records = [json.loads(line) for line in (ORACLE / f"{case}.jsonl").read_text().splitlines()]
    dst = Peer(
        tmp_path, "dst", MachineOptions(ram_size=RAM, incoming="tcp:127.0.0.1:0", workload=DIRTIER)
    )
    src = Peer(tmp_path, "src", MachineOptions(ram_size=RAM, workload=DIRTIER))
    peers = {"dst": dst, "src": src}
    address = dst.machine.query_migrate().socket_address
    assert address
    subst = {"$PORT": address[0].rsplit(":", 1)[1], "$RPORT": str(free_port())}
    held: OutgoingMigration | None = None
    current = ""
    try:
        for record in records:
            if "endpoint" in record:
                current = record["endpoint"]
            elif "note" in record:
                peers[record["note"].removeprefix("SIGKILL ")].close()
            elif "send" in record:
                text = record["send"]
                for key, value in subst.items():
                    text = text.replace(key, value)
                peers[current].client.send(text)
            elif "recv" in record:
                theirs = record["recv"]
                if "event" in theirs:
                    if held is not None and theirs.get("data") == {"status": "completed"}:
                        held.background.set()  # the case waits for the end
                        held = None
                    assert event_of(peers[current].event()) == event_of(theirs), (current, theirs)
                    continue
                ours = peers[current].reply()
                assert shape(ours) == shape(theirs), (current, record)
                mig = src.machine._outgoing
                if held is None and isinstance(mig, OutgoingMigration) and mig.background.is_set():
                    if mig.status is MigrationStatus.ACTIVE:
                        held = mig
                        mig.background.clear()  # postcopy stays active until the case's end
    finally:
        if held is not None:
            held.background.set()
        for peer in peers.values():
            peer.close()
