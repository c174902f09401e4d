"""The demo's postcopy case: precopy that does not converge, then postcopy, on a recorded runner
(its lines, charts and PNG) and once for real."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest
from test_demo import series

from hmp.lab.cases import POSTCOPY_CASE, Figures, PostcopyCase
from hmp.lab.demo import ProgressFn, main
from hmp.lab.postcopy_demo import Outcome, present, run_postcopy_case
from hmp.monitor import Faults
from hmp.shell.toolbar import Progress

MiB = 1024 * 1024
FAULTS = Faults(at_ms=[0.0, 500.0, 1000.0, 1500.0], waits_ms=[0.4, 0.6, 2.0, 0.5])


def recorded(case: PostcopyCase, mode: str, progress: ProgressFn) -> Outcome:
    if mode == "precopy":
        left = Progress("active", 256 * MiB, 70 * MiB, 300 * MiB, 270.0, 8000, 3700)
        progress(left)
        return Outcome("cancelled", Figures(0, 0, 307200), series(8.0), "recorded", left)
    left = Progress("postcopy-active", 256 * MiB, 10 * MiB, 200 * MiB, 270.0, 6000, 0)
    progress(left)
    figures = Figures(6600, 3, 219000)
    return Outcome("completed", figures, series(6.6), "recorded", left, 1500, FAULTS)


def test_the_case_says_precopy_does_not_converge_and_postcopy_completes(tmp_path: Path) -> None:
    out = io.StringIO()
    assert present(recorded, POSTCOPY_CASE, tmp_path, out) == 0
    lines = out.getvalue().splitlines()
    assert lines[:4] == [
        "",
        "busy guest that does not converge, then postcopy",
        "  precopy  cancelled after 8.0 s: it does not converge, 70 MiB still to send"
        " (expected downtime 3700 ms)  (recorded)",
        "  postcopy completed: 6600 ms, downtime 3 ms, 219000 kB; the destination's vCPU waited"
        " 1500 ms in 4 faults (p50 0.60 ms, p99 2.00 ms)  (recorded)",
    ]
    text = out.getvalue()
    assert "remaining RAM (MiB, peak " in text
    assert "postcopy page-request wait (ms, peak 2.0, p50 0.60, p99 2.00, 4 faults):\n" in text
    png = tmp_path / "qemu-hmp-demo-busy-postcopy.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and f"chart: {png}\n" in text


def test_a_postcopy_that_fails_fails_the_demo(tmp_path: Path) -> None:
    def failing(case: PostcopyCase, mode: str, progress: ProgressFn) -> Outcome:
        run = recorded(case, mode, progress)
        return replace(run, status="failed") if mode == "postcopy" else run

    assert present(failing, POSTCOPY_CASE, tmp_path, io.StringIO()) == 1


def test_the_demo_offers_the_case_by_its_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--case", "nonsense"])
    assert exited.value.code == 2
    assert "'busy-postcopy'" in capsys.readouterr().err


def test_the_postcopy_runner_migrates_for_real() -> None:
    """A small busy guest, switched to postcopy-preempt with the background unlimited."""
    small = replace(
        POSTCOPY_CASE.postcopy,
        ram="32M",
        workload="random-writer,rate=25000,wss=16M",
        max_bandwidth="8M",
        max_postcopy_bandwidth="0",
    )
    case = replace(POSTCOPY_CASE, postcopy=small)
    seen: list[str] = []
    run = run_postcopy_case(case, "postcopy", lambda p: seen.append(p.status))
    assert run.status == "completed" and seen[-1] == "completed"
    # The destination's record of its faults (it may complete between two polls of the source).
    assert len(run.faults.at_ms) == len(run.faults.waits_ms)
    assert run.blocktime_ms <= sum(run.faults.waits_ms) + 1
    assert run.series and run.figures.transferred_kb > 0
