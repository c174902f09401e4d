"""What QEMU 7.2 printed for the transcripts it answers alike (tests/data/qemu-7.2/transcripts/,
recorded by record_transcripts.py there) matches those transcripts' expectations.

The plain `pytest` replays the same transcripts against qemu-hmp (transcripts/), so without
QEMU installed the two together still prove that both answer them alike; `pytest -m qemu`
(tests/test_against_qemu.py) checks the same against a live QEMU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hmp.harness.transcript import Kind, parse, reconcile
from tests.test_against_qemu import ALIKE

ROOT = Path(__file__).resolve().parent.parent
RECORDED = Path(__file__).parent / "data" / "qemu-7.2" / "transcripts"


def unmatched(line: str) -> str:
    return f"QEMU printed: {line}"


@pytest.mark.parametrize("name", ALIKE)
def test_qemu_recording_matches_the_transcript(name: str) -> None:
    pinned = [
        s for s in parse((ROOT / "transcripts" / name).read_text()) if s.kind is not Kind.PROSE
    ]
    qemu = [s for s in parse((RECORDED / name).read_text()) if s.kind is not Kind.PROSE]
    assert [s.text for s in qemu] == [s.text for s in pinned]  # the same steps, nothing more
    for ours, theirs in zip(pinned, qemu, strict=True):
        # QEMU's lines, written as the transcript's wherever one matches: the transcript itself.
        assert reconcile(ours.expected, theirs.expected, {}, unmatched) == ours.expected, ours.text


def test_a_recording_that_differs_is_caught() -> None:
    pinned = ["Migration status: completed", "total time: {ms} ms"]
    assert reconcile(pinned, ["Migration status: failed", "total time: 3 ms"], {}, unmatched) == [
        "QEMU printed: Migration status: failed",
        "total time: {ms} ms",
    ]
