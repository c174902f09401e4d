"""The QEMU 11.1 transcripts that QEMU 11.1 answers alike replay green against real QEMU 11.1s.

As tests/test_against_qemu.py does for 7.2: `replay --against-qemu` starts each qemu-hmp
endpoint of a transcript that says `@qemu 11.1` as ``qemu11-system-x86_64 -M none`` (the
chroot wrapper of tests/data/qemu-11.1/README.md; its sockets and the `-device loader` image,
copied, under /tmp/qemu11), with the same -m, -incoming and -S. Each transcript is also
collected from transcripts/ against qemu-hmp (the plain `pytest`), so the two runs together
prove that both answer these steps alike.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hmp.harness.qemu_endpoint import RELEASES, qemu_argv
from hmp.harness.replay import main as replay_main
from hmp.harness.runner import replay

FOLDER = Path(__file__).resolve().parent.parent / "transcripts" / "qemu-11.1"
ALIKE = ["plain-image.hmpt", "switchover-ack.hmpt"]


def test_the_11_1_command_line_runs_qemu_11_1() -> None:
    argv = qemu_argv(["qemu-hmp", "--qemu", "11.1", "-m", "64M", "-S"])
    assert argv[0] == RELEASES["11.1"].binary == "qemu11-system-x86_64"
    assert argv[1:4] == ["-m", "64M", "-S"] and "--qemu" not in argv and "11.1" not in argv
    assert qemu_argv(["qemu-hmp", "--qemu=7.2"])[0] == RELEASES["7.2"].binary
    assert RELEASES["11.1"].folder == "/tmp/qemu11"


@pytest.mark.qemu11
@pytest.mark.parametrize("name", ALIKE)
def test_qemu_11_1_answers_alike(name: str) -> None:
    path = FOLDER / name
    result = replay(path.read_text(), name, against_qemu=True, here=str(FOLDER))
    assert result.passed, result.diff()


@pytest.mark.qemu11
def test_a_difference_with_qemu_11_1_is_a_diff(capsys: pytest.CaptureFixture[str]) -> None:
    """`plain.hmpt` pins our idle guest's page counts and our `info version`: QEMU's differ."""
    assert replay_main(["--against-qemu", str(FOLDER / "plain.hmpt")]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out
    assert "+  11.1.3Debian 1:11.1.3+ds-1~bpo13+1\n" in out
