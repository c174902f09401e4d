"""Replay QEMU 7.2's switchover sessions (tests/data/qemu-7.2/switchover/*.txt) on our monitor.

The recorder (tests/data/qemu-7.2/switchover.py) acted on the source's peer between
commands (``# step:`` lines); here each step has its equivalent, with a record proxy where
QEMU's destination was stopped. Outputs must match QEMU's byte for byte, except where the
completion handshake or a peer that is not qemu-hmp makes ours say something else on
purpose: DIFFERENCES lists those, with what ours prints instead.
"""

from __future__ import annotations

import contextlib
import io
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from proxy import UP, Action, RecordProxy, Rule
from test_handshake import CLOSED, source_unsure

from engine import wire
from engine.machine import Machine, MachineOptions
from engine.state import MigrationStatus, RunState
from hmp.monitor import Monitor

DATA = Path(__file__).parent / "data" / "qemu-7.2" / "switchover"
QEMU_STDERR = "# stderr: qemu-system-x86_64: "
PEER_URI = re.compile(r"tcp:127\.0\.0\.1:(?!1$)\d+")  # the recorded peer's port, not port 1
BANNER = b"SSH-2.0-OpenSSH_9.2\r\n"
FOREIGN = str(wire.ForeignPeer(BANNER[: wire.RECORD.size]))
SIZE = 16 << 20


@dataclass
class Step:
    command: str
    output: str = ""
    stderr: set[str] = field(default_factory=set)
    before: list[str] = field(default_factory=list)  # the recorder's actions before it


def load(name: str) -> list[Step]:
    steps: list[Step] = []
    actions: list[str] = []
    for line in (DATA / f"{name}.txt").read_text().splitlines()[1:]:  # after "# argv:"
        if line.startswith("(qemu) "):
            steps.append(Step(line.removeprefix("(qemu) "), before=actions))
            actions = []
        elif line.startswith("# step: "):
            actions.append(line.removeprefix("# step: "))
        elif line.startswith(QEMU_STDERR):
            steps[-1].stderr.add(line.removeprefix(QEMU_STDERR))
        else:
            steps[-1].output += line + "\n"
    assert not actions, f"{name}: steps after the last command"
    return steps


def status_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("Migration status: "))


class Session:
    """Our source and its monitor; the engine's reports reach the monitor, as the CLI wires
    them. Commands name the recorded peer's port: they get ``uri`` instead."""

    def __init__(self, machines: list[Machine], uri: str) -> None:
        self.uri = uri
        self.out, self.err = io.StringIO(), io.StringIO()
        self.machine = Machine(MachineOptions(ram_size=SIZE), notify=self._report)
        machines.append(self.machine)
        self.mon = Monitor(self.machine, self.out, self.err)

    def _report(self, message: str) -> None:
        self.mon.error_report(message)

    def run(self, command: str) -> tuple[str, set[str]]:
        self.out.seek(0), self.out.truncate(), self.err.seek(0), self.err.truncate()
        self.mon.execute(PEER_URI.sub(self.uri, command))
        return self.out.getvalue(), {
            line.removeprefix("qemu-hmp: ") for line in self.err.getvalue().splitlines()
        }


def destination(machines: list[Machine]) -> tuple[Machine, str]:
    dst = Machine(MachineOptions(ram_size=SIZE, incoming="tcp:127.0.0.1:0"))
    machines.append(dst)
    address = dst.query_migrate().socket_address
    assert address is not None
    return dst, address[0]


def replay(
    name: str,
    session: Session,
    differences: dict[str, tuple[str, set[str]]],
    act: Callable[[str], None] = lambda action: None,
) -> None:
    """Each step's output must be QEMU's, or, for a command in ``differences``, ours;
    ``act`` does our equivalent of each of the recorder's actions."""
    failures = []
    for step in load(name):
        for action in step.before:
            act(action)
        got = session.run(step.command)
        want = differences.get(step.command, (step.output, step.stderr))
        if got != want:
            failures.append(f"(qemu) {step.command}\n--- expected\n{want}\n--- ours\n{got}")
    assert not failures, "\n".join(failures)


def test_finish_migrate(machines):
    """A stopped destination: QEMU's source waits in finish-migrate (its return path), ours
    waits for READY. `cont` is refused, `stop` changes nothing, and `migrate_cancel` (before
    the switchover is committed) restarts the guest, in both."""
    dst, uri = destination(machines)
    proxy = RecordProxy(uri, Rule(UP, wire.Rec.DONE, Action.HOLD))  # DONE never read
    proxy.start()
    session = Session(machines, proxy.uri)

    def act(action: str) -> None:
        if action == "waited until info status said finish-migrate":
            assert proxy.reached.wait(30)
        elif action == "waited until info status said running":
            assert session.machine.wait_migration(30).status is MigrationStatus.CANCELLED
            proxy.release()
        else:
            assert action == "the destination is stopped (SIGSTOP)"  # the held DONE

    replay("finish_migrate", session, {}, act)
    proxy.join(30)
    assert dst.query_migrate().status is MigrationStatus.FAILED  # it never ran the guest


@pytest.mark.parametrize("rule", [None, Rule(UP, wire.Rec.GO, Action.CUT)], ids=str)
def test_postmigrate(machines, rule: Rule | None):
    """What an operator can do with a source in postmigrate: after a completed migration (as
    recorded), and after the switchover lost its destination, which the operator resolves
    the same way once the destination says it gave the guest up."""
    dst, uri = destination(machines)
    proxy = RecordProxy(uri, rule)
    proxy.start()
    differences = {}
    if rule is not None:  # QEMU completed; ours reports the lost switchover
        differences[load("postmigrate")[0].command] = ("", {source_unsure(CLOSED)})
    replay("postmigrate", Session(machines, proxy.uri), differences)
    proxy.join(30)
    assert dst.vm.running is (rule is None)


def banner_peer() -> tuple[str, threading.Thread]:
    """The recorder's fake peer: an SSH banner, then it reads and discards the stream."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with server:
            conn, _ = server.accept()
        with conn, contextlib.suppress(ConnectionResetError):
            conn.sendall(BANNER)
            while conn.recv(1 << 16):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"tcp:127.0.0.1:{server.getsockname()[1]}", thread


@pytest.mark.parametrize("name", ["foreign_peer", "foreign_peer_rp"])
def test_a_peer_that_is_not_qemu_hmp(machines, name: str):
    """QEMU never reads its peer without return-path (it completes, its guest left paused);
    with it, it fails writing after "RP: Received invalid message". Ours always reads the
    destination's verdict: it fails saying what the peer is not, and its guest runs on."""
    uri, peer = banner_peer()
    steps = {step.command: step for step in load(name)}
    migrate = next(cmd for cmd in steps if cmd.startswith("migrate "))
    rp_info = load("foreign_peer_rp")[-2].output  # QEMU's failed `info migrate`
    ours_info = rp_info.replace(status_line(rp_info), f"Migration status: failed ({FOREIGN})")
    differences = {migrate: ("", {FOREIGN}), "info migrate": (ours_info, set())}
    if name == "foreign_peer":
        differences["info status"] = ("VM status: running\n", set())
    replay(name, Session(machines, uri), differences)
    peer.join(30)


def test_tls_creds_are_refused(machines):
    """qemu-hmp has no TLS objects, so a `tls-creds` id names none, as in QEMU when the object
    is missing: the migration fails after connecting instead of going out in plain text."""
    dst, uri = destination(machines)
    replay("tls_creds", Session(machines, uri), {})
    assert dst.query_status().status is RunState.INMIGRATE


def test_a_destination_with_tls_creds_refuses_a_plain_stream(machines):
    """QEMU's destination would expect a TLS handshake; ours refuses the plain stream with
    QEMU's error, fails (as qemu-hmp destinations do) and listens again."""
    dst, uri = destination(machines)
    dst.set_parameters({"tls-creds": "foo"})
    src = Machine(MachineOptions(ram_size=SIZE))
    machines.append(src)
    src.migrate(uri)
    info = src.wait_migration(30)
    assert (info.status, info.error_desc) == (
        MigrationStatus.FAILED,
        "No TLS credentials with id 'foo'",
    )
    assert src.query_status().status is RunState.RUNNING
    failed = dst.query_migrate()
    assert failed.status is MigrationStatus.FAILED and failed.socket_address == (uri,)
