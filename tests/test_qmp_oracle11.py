"""Replay QMP sessions recorded from QEMU 11.1 (tests/data/qemu-11.1/qmp/) against a
qemu-hmp server in the 11.1 dialect, as test_qmp_oracle.py does for 7.2: the same raw
requests, the replies equal to QEMU's in order, the events the same set. Normalised: the
version package, timestamps, ports, and our extension parameters; a set block-bitmap-mapping
(qemu-hmp has no disks) as in the 7.2 test."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from engine.params11 import PARAMS_BY_NAME_11, TABLE_11_1
from tests import test_qmp_oracle as seven
from tests.qmp_helpers import RawClient, endpoint, options

ORACLE = Path(__file__).parent / "data" / "qemu-11.1" / "qmp"
CASES = (
    "config11",
    "runstate",
    "incoming",
    "hmp",
    "config",
    "outgoing_errors",
    "migrate_flags",
    "session",
    "oob",
)  # not yet: uris (file: URIs), migration (a second client's session), protocol (11.1's
# JSON error texts), commands (11.1's command list), bytes


def load(case: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (ORACLE / f"{case}.jsonl").read_text().splitlines()]


def normalise(msg: Any) -> Any:
    if isinstance(msg, dict) and "QMP" in msg:
        version = msg["QMP"]["version"]
        assert (version["qemu"]["major"], version["qemu"]["minor"]) == (11, 1)
        return {**msg, "QMP": {**msg["QMP"], "version": "11.1"}}
    ret = msg.get("return") if isinstance(msg, dict) else None
    if isinstance(ret, dict) and "qemu" in ret:
        assert (ret["qemu"]["major"], ret["qemu"]["minor"]) == (11, 1)
        return {**msg, "return": "11.1"}
    if isinstance(ret, dict) and "zero-page-detection" in ret:  # query-migrate-parameters
        # as for 7.2: a set block-bitmap-mapping is not kept here (qemu-hmp has no disks)
        kept = {
            k: v
            for k, v in ret.items()
            if k != "block-bitmap-mapping" and not PARAMS_BY_NAME_11[k].extension
        }
        return {**msg, "return": kept}
    if isinstance(ret, list) and ret and "capability" in ret[0]:  # query-migrate-capabilities
        caps = TABLE_11_1.caps_by_name
        return {**msg, "return": [c for c in ret if not caps[c["capability"]].extension]}
    return SEVEN_NORMALISE(msg)


SEVEN_NORMALISE = seven.normalise


def steps(records: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    out: list[tuple[str, list[Any]]] = []
    for rec in records:
        if "send" in rec:
            out.append((rec["send"], []))
        elif "recv" in rec:
            out[-1][1].append(rec["recv"])
    return out


def comparable(messages: list[Any]) -> tuple[list[Any], list[str]]:
    """Replies in order, events as a sorted list (their interleaving may vary)."""
    events = [m for m in messages if isinstance(m, dict) and "event" in m]
    replies = [normalise(m) for m in messages if m not in events]
    return replies, sorted(repr(normalise(m)) for m in events)


@pytest.mark.parametrize("case", CASES)
def test_replay_11_1(case: str, tmp_path: Path) -> None:
    records = load(case)
    opts = replace(options(records[0]["argv"]), config_table=TABLE_11_1)
    with endpoint(tmp_path, opts) as server:
        client = RawClient(server.spec.address.path)
        try:
            assert normalise(client.read()) == normalise(records[1]["greeting"])
            for text, expected in steps(records):
                client.send(text)
                got = seven._settle(client, text, seven._collect(client, expected), expected)
                assert comparable(got) == comparable(expected), text
        finally:
            client.close()
