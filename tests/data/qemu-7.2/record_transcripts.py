"""Re-record what QEMU 7.2 answers to the transcripts it answers alike:
``python tests/data/qemu-7.2/record_transcripts.py [NAME.hmpt...]`` (all of ALIKE by default).

Each transcript of ALIKE (tests/test_against_qemu.py) runs with its qemu-hmp endpoints as
real QEMUs (``qemu-hmp replay --against-qemu``); every step's output is stored raw, as QEMU
printed it (no patterns), in transcripts/NAME.hmpt here. tests/test_transcripts_qemu_data.py
checks, without QEMU, that the transcript's expectations match these lines, as the plain
``pytest`` checks that they match qemu-hmp's.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))
from hmp.harness.runner import Session, run_steps  # noqa: E402
from hmp.harness.transcript import Kind, Step, parse, render  # noqa: E402
from tests.test_against_qemu import ALIKE  # noqa: E402


class RawSession(Session):
    """A session whose steps come back with QEMU's lines as they were printed."""

    def run(self, step: Step) -> Step:
        if step.kind is Kind.PROSE:
            return step
        return replace(step, expected=self._actual(step))


def main(names: list[str]) -> None:
    unknown = set(names) - set(ALIKE)
    if unknown:
        raise SystemExit(f"not in ALIKE: {', '.join(sorted(unknown))}")
    for name in names or ALIKE:
        steps = parse((ROOT / "transcripts" / name).read_text())
        errors: list[str] = []
        with RawSession(against_qemu=True, here=str(ROOT / "transcripts")) as session:
            recorded = render(list(run_steps(steps, session, errors)))
        if errors:
            raise SystemExit(f"{name}: {errors}")
        (HERE / "transcripts" / name).write_text(recorded)
        print(f"recorded {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
