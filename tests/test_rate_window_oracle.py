"""QEMU 7.2's rate limit at max-bandwidth 64k (tests/data/qemu-7.2/ratelimit/source.txt): each
100 ms window carries its budget and at most a page past it, the first window too, which is
the bound tests/test_rate_window.py holds qemu-hmp's first window to."""

from __future__ import annotations

import re
from pathlib import Path

from engine.guest import PAGE_SIZE

RECORDING = Path(__file__).parent / "data" / "qemu-7.2" / "ratelimit" / "source.txt"
BUDGET = 64 * 1024 // 10  # bytes per 100 ms window
WINDOW_MAX = BUDGET + PAGE_SIZE + 64  # the budget, a page past it and its framing


def samples() -> list[tuple[int, int, int]]:
    """(total time ms, setup ms, transferred bytes) of each recorded `info migrate`."""
    found = re.findall(
        r"total time: (\d+) ms\n.*?setup: (\d+) ms\ntransferred ram: (\d+) kbytes",
        RECORDING.read_text(),
        re.S,
    )
    return [(int(t), int(s), int(kb) * 1024) for t, s, kb in found]


def test_qemu_s_windows_each_carry_their_budget_and_at_most_a_page() -> None:
    recorded = samples()
    assert len(recorded) == 3
    for total, setup, transferred in recorded:
        windows = (total - setup) // 100 + 1  # those begun since the stream started
        assert transferred <= windows * WINDOW_MAX, (total, transferred)
        assert transferred >= (windows - 1) * BUDGET, (total, transferred)  # and they are used
    first_total, first_setup, first = recorded[0]
    assert first_total - first_setup < 100 and 0 < first <= WINDOW_MAX  # the first window
