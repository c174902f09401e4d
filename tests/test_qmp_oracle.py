"""Replay the recorded QEMU 7.2 QMP sessions (tests/data/qmp/) against qemu-hmp's server.

Every request is sent as the same raw text; the replies must equal QEMU's, in order, and the
events must be the same set. Only what cannot match is normalised: version strings, event
timestamps, ephemeral ports, and qemu-hmp's own extension parameters and capabilities.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from engine.params import CAPS_BY_NAME, PARAMS_BY_NAME
from tests.qmp_helpers import RawClient, endpoint, load, options

EXTENSIONS = {"x-query-postcopy-faults"}  # QMP commands of ours (README, Extensions)
CASES = (
    "protocol",
    "oob",
    "config",
    "runstate",
    "hmp",
    "incoming",
    "outgoing_errors",
    "migrate_flags",
)


def normalise(msg: Any) -> Any:
    """Blank out what legitimately differs between QEMU 7.2.22 and qemu-hmp."""
    if not isinstance(msg, dict):
        return msg
    out = dict(msg)
    if "timestamp" in out:
        stamp = out["timestamp"]
        assert set(stamp) == {"seconds", "microseconds"}
        assert all(isinstance(v, int) for v in stamp.values())
        out["timestamp"] = "T"
    ret = out.get("return")
    if isinstance(ret, dict) and "qemu" in ret:  # query-version
        out["return"] = _version(ret)
    if "QMP" in out:
        out["QMP"] = {**out["QMP"], "version": _version(out["QMP"]["version"])}
    if isinstance(ret, list) and ret and "name" in ret[0]:  # query-commands: tested below
        out["return"] = "COMMANDS"
    if isinstance(ret, dict) and "socket-address" in ret:
        addrs = [{**a, "port": "PORT"} for a in ret["socket-address"]]
        out["return"] = {**ret, "socket-address": addrs}
    if isinstance(ret, dict) and "compress-level" in ret:  # query-migrate-parameters
        out["return"] = {
            k: v
            for k, v in ret.items()
            if k != "block-bitmap-mapping" and not PARAMS_BY_NAME[k].extension
        }
    if isinstance(ret, list) and ret and "capability" in ret[0]:  # query-migrate-capabilities
        out["return"] = [c for c in ret if not CAPS_BY_NAME[c["capability"]].extension]
    return out


def _version(v: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(v["package"], str)
    assert (v["qemu"]["major"], v["qemu"]["minor"]) == (7, 2)
    return {"qemu": "7.2"}


def _is_event(msg: Any) -> bool:
    return isinstance(msg, dict) and "event" in msg


def _steps(case: str) -> list[tuple[str, list[Any]]]:
    steps: list[tuple[str, list[Any]]] = []
    for rec in load(case):
        if "send" in rec:
            steps.append((rec["send"], []))
        elif "recv" in rec:
            steps[-1][1].append(rec["recv"])
    return steps


def _collect(client: RawClient, expected: list[Any]) -> list[Any]:
    """Read as many replies as QEMU gave, then any events QEMU gave that are still due."""
    want_replies = sum(not _is_event(m) for m in expected)
    want_events = len(expected) - want_replies
    got: list[Any] = []
    while sum(not _is_event(m) for m in got) < want_replies:
        msg = client.read(timeout=10)
        assert msg is not None, f"no reply; so far {got}"
        got.append(msg)
    while sum(_is_event(m) for m in got) < want_events:
        msg = client.read(timeout=3.0)
        if msg is None:
            break
        got.append(msg)
    return got


def _status(messages: list[Any]) -> Any:
    replies = [m.get("return") for m in messages if not _is_event(m)]
    return replies[0].get("status") if replies and isinstance(replies[0], dict) else None


def _settle(client: RawClient, text: str, got: list[Any], expected: list[Any]) -> list[Any]:
    """Ask a query-migrate again while ours is still on its way to QEMU's (faster) end state."""
    deadline = time.monotonic() + 10
    while _status(got) in ("setup", "active") and _status(expected) not in (None, _status(got)):
        assert time.monotonic() < deadline, got
        time.sleep(0.01)
        client.send(text)
        got = _collect(client, expected)
    return got


def _comparable(messages: list[Any]) -> tuple[list[Any], list[str]]:
    """Replies in order, events as a sorted list (their interleaving with replies may vary)."""
    replies = [normalise(m) for m in messages if not _is_event(m)]
    return replies, sorted(repr(normalise(m)) for m in messages if _is_event(m))


@pytest.mark.parametrize("case", CASES)
def test_replay(case: str, tmp_path: Path) -> None:
    records = load(case)
    with endpoint(tmp_path, options(records[0]["argv"])) as server:
        client = RawClient(server.spec.address.path)
        try:
            assert normalise(client.read()) == normalise(records[1]["greeting"])
            for text, expected in _steps(case):
                client.send(text)
                got = _settle(client, text, _collect(client, expected), expected)
                assert _comparable(got) == _comparable(expected), text
        finally:
            client.close()


def test_query_commands_are_qemu_commands(tmp_path: Path) -> None:
    """Every command qemu-hmp serves exists in QEMU 7.2 under the same name."""
    qemu = next(
        r["recv"]["return"]
        for r in load("commands")
        if "recv" in r and "return" in r["recv"] and isinstance(r["recv"]["return"], list)
    )
    qemu_names = {c["name"] for c in qemu}
    with endpoint(tmp_path, options(["-S"])) as server:
        client = RawClient(server.spec.address.path)
        client.read()
        client.send('{"execute": "qmp_capabilities"}{"execute": "query-commands"}')
        client.read()
        ours = {c["name"] for c in client.read()["return"]}
        client.close()
    assert ours - EXTENSIONS <= qemu_names
    assert {"query-migrate", "migrate-set-parameters", "human-monitor-command"} <= ours
    # Ours (README, Extensions): x- prefixed, as QEMU names unstable commands, and not QEMU's.
    assert all(name.startswith("x-") and name not in qemu_names for name in EXTENSIONS)
