"""QEMU's JSON reader limits and lexer, and a reader that stays linear in its input.

tests/data/qmp/limits.jsonl holds QEMU 7.2's answers to values at and over its json-streamer
limits (nesting 1024, 2 Mi tokens, 64 MiB of tokens, a 10 MiB string) and lexer.jsonl its
answers byte by byte (what a string may hold, where skipping after an error ends); both are
replayed as text. A 10 MiB string is read in a few steps per chunk, never one per byte.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.machine import MachineOptions
from hmp.qmp.jsonstream import JsonStreamer
from tests.qmp_helpers import endpoint, replay_lines

# Pieces that exercise every lexer state and its ends, including bytes QEMU refuses.
_PIECES = [bytes([b]) for b in b"{}[]:,\"'\\ \t\n-+.eE019aeflnrstu@"] + [
    b"true",
    b"\xc3\xa9",
    b"\xff",
    b"\xc0\x80",
    b"\x01",
    b"\\u00e9",
]

PAUSED = MachineOptions(ram_size=16 << 20, start_paused=True)


@pytest.mark.parametrize("case", ["lexer", pytest.param("limits", marks=pytest.mark.slow)])
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


def _feed(chunks: list[bytes]) -> list[object]:
    streamer = JsonStreamer()
    return [value for data in chunks for value in streamer.feed(data)]


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(_PIECES), max_size=40), st.lists(st.integers(0, 200), max_size=4))
def test_where_the_input_is_split_changes_nothing(pieces: list[bytes], cuts: list[int]) -> None:
    """The lexer takes runs up to a chunk's end and goes on in the next: same values."""
    data = b"".join(pieces)
    bounds = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    assert _feed(chunks) == _feed([data])
