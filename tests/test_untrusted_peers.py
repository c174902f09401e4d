"""Peers that are not qemu-hmp, or that send hostile text: forged destinations answering a real
source, and a forged source talking to a real destination.

What a peer says may reach `info migrate`, QMP and stderr: control characters (terminal
escape sequences, a newline faking a ``(qemu) `` prompt) arrive escaped and the text is
bounded; a reply that is not this protocol's gives one clear failure, never an internal error.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading

import pytest
from test_machine import Watch

from engine import wire
from engine.guest import PAGE_SIZE
from engine.machine import Machine, MachineOptions
from engine.state import MigrationStatus, RunState
from hmp.monitor import Monitor

SIZE = 4 << 20
T = 30.0  # upper bound of every wait
HOSTILE = "\x1b[2J\x1b]0;owned\x07\n(qemu) quit\r\n\u202egnp.exe"
HOSTILE_SAFE = r"\x1b[2J\x1b]0;owned\x07\n(qemu) quit\r\n\u202egnp.exe"


class Reported:
    """A Machine whose engine reports (stderr lines) are kept."""

    def __init__(self, machines: list[Machine], incoming: str | None = None) -> None:
        self.lines: list[str] = []
        opts = MachineOptions(ram_size=SIZE, incoming=incoming)
        self.machine = Machine(opts, notify=self.lines.append)
        machines.append(self.machine)


class FakeDestination(threading.Thread):
    """Reads a real source's stream up to DONE, answers ``reply``, then drains to the end."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(daemon=True)
        self.reply = reply
        self.server = socket.create_server(("127.0.0.1", 0))
        self.uri = f"tcp:127.0.0.1:{self.server.getsockname()[1]}"

    def run(self) -> None:
        with self.server:
            conn, _ = self.server.accept()
        with conn, contextlib.suppress(ConnectionResetError):  # the source hangs up
            wire.read_exact(conn, wire.HEADER.size)
            while (head := wire.read_record_head(conn)) is not None:
                wire.read_body(conn, head[1], wire.MAX_RECORD)
                if head[0] == wire.Rec.DONE:
                    break
            conn.sendall(self.reply)
            while conn.recv(1 << 16):
                pass


def migrate_to(machines: list[Machine], reply: bytes) -> Reported:
    src = Reported(machines)
    peer = FakeDestination(reply)
    peer.start()
    src.machine.migrate(peer.uri)
    assert src.machine.wait_migration(T).status is MigrationStatus.FAILED
    peer.join(T)
    return src


def foreign(sent: bytes) -> str:
    return (
        "destination answered with something that is not a qemu-hmp migration stream "
        f"(it sent {sent!r})"
    )


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", foreign(b"SSH-2")),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", foreign(b"HTTP/")),
        (wire.record(wire.Rec.NACK, b"not json at all"), foreign(b"not json at all")),
        (wire.record(wire.Rec.NACK, b"[1, 2]"), foreign(b"[1, 2]")),
        (wire.record(wire.Rec.EOS), foreign(b"\x10\x00\x00\x00\x00")),  # not a reply
        (wire.RECORD.pack(wire.Rec.NACK, wire.MAX_JSON + 1), foreign(b'"\x00\x01\x00\x01')),
    ],
    ids=["ssh-banner", "http", "nack-not-json", "nack-not-an-object", "not-a-reply", "oversized"],
)
def test_a_reply_that_is_not_the_protocol(machines, reply: bytes, error: str):
    src = migrate_to(machines, reply)
    info = src.machine.query_migrate()
    assert (info.status, info.error_desc) == (MigrationStatus.FAILED, error)
    assert src.machine.query_status().status is RunState.RUNNING  # no GO: the guest is ours
    assert src.lines == [error]


def test_a_nack_reason_is_made_safe_and_bounded(machines):
    reason = HOSTILE + "A" * 5000
    src = migrate_to(machines, wire.json_record(wire.Rec.NACK, {"error": reason}))
    info = src.machine.query_migrate()
    assert info.error_desc == wire.peer_text(reason)
    assert info.error_desc.startswith(HOSTILE_SAFE + "AAAA")
    assert info.error_desc.endswith("A...")
    assert len(info.error_desc) == wire.PEER_TEXT_LIMIT + len("...")
    assert src.lines == [info.error_desc]
    out = io.StringIO()
    Monitor(src.machine, out, io.StringIO()).execute("info migrate")
    assert f"Migration status: failed ({info.error_desc})\n" in out.getvalue()
    assert all(ch.isprintable() for line in out.getvalue().splitlines() for ch in line)
    assert "\n(qemu) " not in out.getvalue()


def forge_source(uri: str, **config: object) -> None:
    """Connect like a source and send a configuration with ``config`` changed."""
    body = wire.StreamConfig(PAGE_SIZE, SIZE, True, "zlib").to_json() | config
    host, port = uri.removeprefix("tcp:").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(wire.header() + wire.record(wire.Rec.CONFIG, json.dumps(body).encode()))
        sock.settimeout(T)
        reply = wire.read_record(sock, wire.MAX_JSON)
    assert reply is not None and reply[0] == wire.Rec.NACK


@pytest.mark.parametrize(
    ("config", "capability", "error"),
    [
        (
            {"compress-method": HOSTILE},
            "compress",
            f"compress method mismatch: source {HOSTILE_SAFE}, destination zlib",
        ),
        (
            {"compress": False, "multifd-channels": 1, "multifd-compression": HOSTILE},
            "multifd",
            f"multifd: unknown compression {HOSTILE_SAFE}",
        ),
        ({"page-size": 10**4000}, "compress", "configuration section is incomplete"),
        ({"ram-size": -(10**30)}, "compress", "configuration section is incomplete"),
    ],
    ids=["compress-method", "multifd-compression", "huge-page-size", "huge-ram-size"],
)
def test_a_forged_configuration_is_made_safe(machines, config, capability: str, error: str):
    dst = Reported(machines, incoming="tcp:127.0.0.1:0")
    dst.machine.set_capabilities({capability: True, "events": True})
    watch = Watch(dst.machine)
    address = dst.machine.query_migrate().socket_address
    assert address is not None
    forge_source(address[0], **config)
    watch.wait_status("failed")
    info = dst.machine.query_migrate()
    assert info.error_desc == error
    assert f"load of migration failed: {error}" in dst.lines
    assert dst.machine.query_status().status is RunState.INMIGRATE
