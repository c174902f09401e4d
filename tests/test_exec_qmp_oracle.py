"""QEMU 7.2's query-migrate during and after an exec: save and a background-snapshot, and on
the side that restores it, replayed against qemu-hmp's QMP server.

The sessions (tests/data/qemu-7.2/exec/qmp.jsonl, background/qmp_query.jsonl, recorded by
tests/data/qemu-7.2/gated_qmp.py) hold each command on a FIFO, so "during" is certain here
as there. Every reply must be QEMU's, member for member; only the figures that depend on the
guest's content and the machine's speed are compared by type (VOLATILE). Events must come in
QEMU's order (MIGRATION_PASS by presence: their number is the guest's). And exec: with
multifd over QMP (exec/qmp_multifd.jsonl, recorded by exec/record_exec.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.qmp_helpers import TIMEOUT, RawClient, endpoint, options
from tests.test_qmp_oracle import _collect, _comparable

DATA = Path(__file__).parent / "data" / "qemu-7.2"
CASES = {"exec": DATA / "exec" / "qmp.jsonl", "background": DATA / "background" / "qmp_query.jsonl"}
MULTIFD = DATA / "exec" / "qmp_multifd.jsonl"
VOLATILE = frozenset(
    {
        "setup-time",
        "downtime",
        "total-time",
        "expected-downtime",
        "total",  # RAM plus ROMs in QEMU
        "remaining",
        "transferred",
        "precopy-bytes",
        "downtime-bytes",
        "normal",
        "normal-bytes",
        "duplicate",
        "pages-per-second",
        "mbps",
        "dirty-sync-count",  # the passes a save needs: the guest's dirtying decides
    }
)
# What a restore underway answers before its end, in QEMU as here: nothing yet read ({}),
# or loading (QEMU 7.2 showed each, one per recording).
UNDERWAY: list[Any] = [{}, {"status": "active"}]


def shape(value: Any, key: str = "") -> Any:
    """``value`` with each volatile figure replaced by its type."""
    if isinstance(value, dict):
        return {k: shape(v, k) for k, v in value.items()}
    if key in VOLATILE and isinstance(value, int | float) and value >= 0:
        return "number"
    return value


@dataclass
class Step:
    kind: str  # "start", "send", "expect" (events read while waiting), "open" (a gate)
    name: str
    text: str = ""
    argv: list[str] = field(default_factory=list)
    replies: list[Any] = field(default_factory=list)


def steps(path: Path) -> list[Step]:
    out: list[Step] = []
    name = ""
    for rec in map(json.loads, path.read_text().splitlines()):
        if "argv" in rec:
            name = rec["endpoint"]
            out.append(Step("start", name, argv=rec["argv"][:-2]))  # without -qmp
        elif "endpoint" in rec:
            name = rec["endpoint"]
            out.append(Step("expect", name))  # a send, if one follows
        elif "send" in rec:
            out[-1].kind, out[-1].text = "send", rec["send"]
        elif "note" in rec:
            out.append(Step("open", name, text=rec["note"].removeprefix("open ")))
        elif "recv" in rec and "event" not in rec["recv"] and out[-1].kind == "send":
            out[-1].replies.append(rec["recv"])
    return out


def qemu_events(path: Path, name: str) -> list[str]:
    events, side = [], ""
    for rec in map(json.loads, path.read_text().splitlines()):
        side = rec.get("endpoint", side)
        msg = rec.get("recv", {})
        if side == name and "event" in msg:
            events.append(msg["data"]["status"] if msg["event"] == "MIGRATION" else msg["event"])
    return events


class Client:
    """One endpoint's QMP client: replies in order, events set aside as they come."""

    def __init__(self, path: str) -> None:
        self.raw = RawClient(path)
        self.events: list[str] = []
        assert "QMP" in self.raw.read(TIMEOUT)

    def _next(self) -> Any:
        msg = self.raw.read(TIMEOUT)
        assert msg is not None, "no answer"
        return msg

    def _note(self, msg: Any) -> bool:
        if "event" not in msg:
            return False
        self.events.append(msg["data"]["status"] if msg["event"] == "MIGRATION" else msg["event"])
        return True

    def ask(self, text: str) -> Any:
        self.raw.send(text)
        while self._note(msg := self._next()):
            pass
        return msg

    def wait_event(self, status: str) -> None:
        while status not in self.events:
            self._note(self._next())


@pytest.fixture
def gates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Each FIFO held open at both ends for the whole test: a byte written waits in it
    whether or not the command has opened it yet."""
    monkeypatch.chdir(tmp_path)  # the recorded commands name their files relatively
    held = {}
    for gate in ("gate", "gate2"):
        os.mkfifo(gate)
        held[gate] = os.open(gate, os.O_RDWR)
    yield held
    for fd in held.values():
        os.close(fd)


def settle(client: Client, step: Step, ours: Any) -> Any:
    """A status still on its way to QEMU's (ours was asked sooner): ask again, bounded."""
    theirs = shape(step.replies[0])
    deadline = time.monotonic() + TIMEOUT
    while shape(ours) != theirs and ours.get("return", {}).get("status") == "setup":
        assert time.monotonic() < deadline, ours
        time.sleep(0.01)
        ours = client.ask(step.text)
    return ours


def poll(client: Client, run: list[Step]) -> None:
    """A run of query-migrate polls: ours may pass through what a restore underway shows,
    and must end where QEMU's did."""
    final = shape(run[-1].replies[0])
    deadline = time.monotonic() + TIMEOUT
    while (ours := shape(client.ask(run[-1].text))) != final:
        assert ours.get("return") in UNDERWAY, ours
        assert time.monotonic() < deadline, ours
        time.sleep(0.01)


@pytest.mark.parametrize("case", list(CASES))
def test_query_migrate_matches_qemu(case: str, tmp_path: Path, gates: dict[str, int]) -> None:
    recorded = steps(CASES[case])
    clients: dict[str, Client] = {}
    with contextlib.ExitStack() as stack:
        i = 0
        while i < len(recorded):
            step = recorded[i]
            if step.kind == "start":
                server = stack.enter_context(endpoint(tmp_path, options(step.argv), step.name))
                clients[step.name] = Client(server.spec.address.path)
                stack.callback(clients[step.name].raw.close)
            elif step.kind == "open":
                os.write(gates[step.text], b"\n")  # the command's `head -c 1` reads it
            elif step.kind == "expect":
                clients[step.name].wait_event("completed")
            elif "query-migrate" in step.text and recorded[i + 1].text == step.text:
                run = [step]
                while recorded[i + 1].text == step.text and recorded[i + 1].name == step.name:
                    i += 1
                    run.append(recorded[i])
                poll(clients[step.name], run)
            else:
                ours = settle(clients[step.name], step, clients[step.name].ask(step.text))
                assert shape(ours) == shape(step.replies[0]), step.text
            i += 1
    for name, client in clients.items():
        theirs = qemu_events(CASES[case], name)
        assert [e for e in client.events if e != "MIGRATION_PASS"] == [
            e for e in theirs if e != "MIGRATION_PASS"
        ], name
        assert ("MIGRATION_PASS" in client.events) == ("MIGRATION_PASS" in theirs), name


def test_multifd_to_a_command_over_qmp_matches_qemu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """QEMU's `migrate` succeeds (the refusal goes to stderr), then setup and failed, with
    no reason in query-migrate, and the guest runs on (exec/qmp_multifd.jsonl)."""
    records = [json.loads(line) for line in MULTIFD.read_text().splitlines()]
    sent: list[tuple[str, list[Any]]] = []
    for rec in records:
        if "send" in rec:
            sent.append((rec["send"], []))
        elif "recv" in rec:
            sent[-1][1].append(rec["recv"])
    with endpoint(tmp_path, options(records[0]["argv"][:-2])) as server:
        client = RawClient(server.spec.address.path)
        try:
            client.read(TIMEOUT)  # the greeting
            for text, expected in sent:
                client.send(text)
                got = _collect(client, expected)
                assert _comparable(got) == _comparable(expected), text
        finally:
            client.close()
    # QEMU 7.2's error_report under a QMP command: the bare text, without its program name.
    assert capsys.readouterr().err == (MULTIFD.parent / "qmp_multifd_stderr.txt").read_text()
