"""QEMU 11.1's JSON reader (hmp/qmp/jsonstream11.py) beyond the recorded sessions: where the
input is split changes nothing, errors included (their LINE:COLUMN too), and any bytes give
values or errors. The recorded behaviour is replayed by test_qmp_oracle11.py (json11,
protocol)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from hmp.qmp.jsonstream import JsonError, dumps
from hmp.qmp.jsonstream11 import JsonStreamer11
from tests.test_qmp_limits import _PIECES


def feed(chunks: list[bytes]) -> list[object]:
    streamer = JsonStreamer11()
    return [value for data in chunks for value in streamer.feed(data)]


def test_an_error_is_placed_and_given_before_the_braces_balance() -> None:
    streamer = JsonStreamer11()
    assert streamer.feed(b'{"execute": "qmp_capabilities"}\n') == [{"execute": "qmp_capabilities"}]
    assert streamer.feed(b'{"a" 1 ') == [JsonError("2:6: JSON parse error, expecting ':'")]
    assert streamer.feed(b"}\n") == []  # the rest of that value is dropped
    assert streamer.feed(b"{'a': tru") == []
    assert streamer.feed(b"e}") == [{"a": True}]


def test_a_token_begun_in_one_chunk_is_placed_where_it_began() -> None:
    assert feed([b'\n {"a" "abc', b'def"}']) == [JsonError("2:7: JSON parse error, expecting ':'")]
    assert feed([b"\n [tr", b"uex]"]) == [
        JsonError("2:3: JSON parse error, invalid keyword 'truex'")
    ]


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(_PIECES), max_size=40), st.lists(st.integers(0, 200), max_size=4))
def test_where_the_input_is_split_changes_nothing(pieces: list[bytes], cuts: list[int]) -> None:
    data = b"".join(pieces)
    bounds = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    assert feed(chunks) == feed([data])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_any_bytes_give_values_or_errors(chunks: list[bytes]) -> None:
    for value in feed(chunks):
        dumps(value.desc if isinstance(value, JsonError) else value)
