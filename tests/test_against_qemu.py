"""The transcripts that QEMU 7.2 answers alike replay green against real QEMUs too.

Each one is also collected from transcripts/ against qemu-hmp (the plain `pytest`), so the
two runs together prove that both answer these steps alike. `replay --against-qemu` starts
each qemu-hmp endpoint as ``qemu-system-x86_64 -M none`` with the same -m, -incoming, -S and
`-device loader` image (hmp/harness/qemu_endpoint.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hmp.harness.replay import main as replay_main
from hmp.harness.runner import replay

pytestmark = pytest.mark.qemu

TRANSCRIPTS = Path(__file__).resolve().parent.parent / "transcripts"
ALIKE = [
    "errors.hmpt",
    "capabilities-parameters.hmpt",
    "plain-image.hmpt",
    "compress-image.hmpt",
    "cancel-source.hmpt",
    "dst-killed.hmpt",
    "postcopy-image.hmpt",
]


@pytest.mark.parametrize("name", ALIKE)
def test_qemu_answers_alike(name: str) -> None:
    path = TRANSCRIPTS / name
    result = replay(path.read_text(), name, against_qemu=True, here=str(TRANSCRIPTS))
    assert result.passed, result.diff()


def test_a_difference_is_a_diff(capsys: pytest.CaptureFixture[str]) -> None:
    """`classic-compress.hmpt` pins our idle guest's page counts: QEMU's RAM is zeros."""
    assert replay_main(["--against-qemu", str(TRANSCRIPTS / "classic-compress.hmpt")]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out
    assert "-  duplicate: 27853 pages\n" in out
