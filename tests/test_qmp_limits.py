"""QEMU's JSON reader limits and lexer, and a reader that stays linear in its input.

tests/data/qmp/limits.jsonl holds QEMU 7.2's answers to values at and over its json-streamer
limits (nesting 1024, 2 Mi tokens, 64 MiB of tokens, a 10 MiB string) and lexer.jsonl its
answers byte by byte (what a string may hold, where skipping after an error ends); both are
replayed as text. A 10 MiB string is read in a few steps per chunk, never one per byte.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.machine import MachineOptions
from hmp.qmp_json import JsonStreamer
from tests.qmp_helpers import endpoint, replay_lines

PAUSED = MachineOptions(ram_size=16 << 20, start_paused=True)


@pytest.mark.parametrize("case", ["lexer"])
def test_replies_are_qemus(case: str, tmp_path: Path) -> None:
    with endpoint(tmp_path, PAUSED) as server:
        replay_lines(server.spec.address.path, case)
        if case == "limits":  # the 10 MiB string arrived whole
            assert server.machine.config.param("tls-hostname") == "a" * (10 << 20)


def test_a_long_string_takes_a_few_steps_per_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lexer scans a string's body a chunk at a time (it was a copy of the token per byte:
    quadratic, so a 10 MB request got no answer)."""
    steps = 0
    step = JsonStreamer._step

    def counted(self: JsonStreamer, data: bytes, pos: int) -> int:
        nonlocal steps
        steps += 1
        return step(self, data, pos)

    monkeypatch.setattr(JsonStreamer, "_step", counted)
    text = "é" * (5 << 20)  # 10 MiB of UTF-8
    payload = ('{"s": "' + text + '"}').encode()
    chunk = 64 << 10
    streamer = JsonStreamer()
    chunks = [payload[k : k + chunk] for k in range(0, len(payload), chunk)]
    values = [value for data in chunks for value in streamer.feed(data)]
    assert values == [{"s": text}]
    assert steps <= len(chunks) + 10
