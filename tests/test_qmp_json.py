"""QEMU's QMP JSON: the byte layout of replies and the streaming reader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hmp.qmp.jsonstream import JsonError, JsonStreamer, dumps
from tests.qmp_helpers import RawClient, endpoint, load, options


def test_replies_are_byte_identical_to_qemu(tmp_path: Path) -> None:
    """tests/data/qmp/bytes.jsonl keeps QEMU's exact lines: numbers, escapes, key order."""
    records = load("bytes")
    with endpoint(tmp_path, options(records[0]["argv"])) as server:
        client = RawClient(server.spec.address.path)
        client.read()
        for rec in records[2:]:
            if "send" in rec:
                client.send(rec["send"])
            else:
                assert client.read() is not None
                assert client.raw[-1] == (rec["raw"] + "\r\n").encode()
        client.close()


def feed(*chunks: str) -> list[Any]:
    streamer = JsonStreamer()
    out = []
    for chunk in chunks:
        out += streamer.feed(chunk.encode())
    return [o.desc if isinstance(o, JsonError) else o for o in out]


def test_values_span_chunks_and_share_lines() -> None:
    assert feed('{"a": [1, ', '2]}{"b"', ": 'x'}\n") == [{"a": [1, 2]}, {"b": "x"}]
    # A multi-byte character split across reads.
    text = json.dumps({"k": "é"}, ensure_ascii=False).encode()
    streamer = JsonStreamer()
    assert streamer.feed(text[:7]) == [] and streamer.feed(text[7:]) == [{"k": "é"}]


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("1\n", [1]),
        ("-0.5e+2 ", [-50.0]),
        ("18446744073709551615 ", [2**64 - 1]),  # uint64 stays an integer
        ("18446744073709551616 ", [float(2**64)]),  # beyond it, a double
        ('"\\ud83d\\ude00"', ["\U0001f600"]),
        ("[1 2]", ["JSON parse error, expected separator in list"]),
        ("True\n", ["JSON parse error, stray 'T'"]),
        ("1.}", ["JSON parse error, stray '1.}'"]),
        ('"\\ud83d"', ["JSON parse error, \\ud83d is not a valid Unicode character"]),
        ('"a\x01" 5 [1]', ["JSON parse error, stray '\"a\x01'", [1]]),  # recovery skips to '['
        ("@x\n7\n", ["JSON parse error, stray '@'", 7]),  # ... or to the end of the line
    ],
)
def test_tokens_and_errors(text: str, values: list[Any]) -> None:
    assert feed(text) == values


def test_nesting_limit() -> None:
    assert feed("[" * 1025) == ["JSON nesting depth limit exceeded"]
    (deepest,) = feed("[" * 1024 + "]" * 1024)
    for _ in range(1023):
        (deepest,) = deepest
    assert deepest == []


def test_dumps() -> None:
    assert dumps({"a": [0.0, 2.5, None, False]}) == '{"a": [0, 2.5, null, false]}'
    assert dumps("\x7fé\U0001f600\n") == '"\\u007F\\u00E9\\uD83D\\uDE00\\n"'


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_any_bytes_give_values_or_errors(chunks: list[bytes]) -> None:
    """Whatever a client sends, the reader returns values or JsonErrors and never raises."""
    streamer = JsonStreamer()
    for chunk in chunks:
        for value in streamer.feed(chunk):
            dumps(value.desc if isinstance(value, JsonError) else value)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    )
)
def test_round_trip(value: Any) -> None:
    assert feed(dumps(value) + "\n") == [value]  # a bare scalar ends at a delimiter
