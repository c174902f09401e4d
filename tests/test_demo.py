"""`qemu-hmp demo`'s presentation, on a recorded runner: progress, table, charts."""

from __future__ import annotations

import io
import os
from dataclasses import replace
from pathlib import Path

from engine.stats import Sample
from hmp.lab.cases import CASES, Case, Figures
from hmp.lab.demo import Measured, ProgressFn, cpu_available, run_classic, run_demo, table
from hmp.lab.experiment import Setup
from hmp.shell.toolbar import Progress

MiB = 1024 * 1024


def series(seconds: float, total: int = 64 * MiB) -> list[Sample]:
    steps = int(seconds * 10)
    return [
        Sample(100 * i, total * i // steps, total - total * i // steps, 800.0, 0, 0)
        for i in range(1, steps + 1)
    ]


# What a run of each mode measured (total ms, downtime ms, kB), for every case alike.
RECORDED = {
    "plain": Figures(2000, 50, 100000),
    "compress": Figures(1000, 25, 40000),
    "adaptive": Figures(900, 24, 38000),
}
CORES = (2.0, 2)


def recorded_runner(case: Case, mode: str, progress: ProgressFn) -> Measured:
    figures = RECORDED[mode]
    for done in (0.25, 0.5):
        progress(Progress("active", 64 * MiB, int(64 * MiB * (1 - done)), 0, 800.0, 500, 300))
    return Measured(figures, series(figures.total_time_ms / 1000), "64 MiB, recorded", 0.95)


def test_table_puts_ours_next_to_published_with_ratios() -> None:
    case = CASES["idle-1gbe"]
    runs = {mode: Measured(figures, [], "") for mode, figures in RECORDED.items()}
    lines = table([(case, runs)]).splitlines()
    assert lines[0].split() == [
        "case", "run",
        "total", "time", "ms", "published",
        "downtime", "ms", "published",
        "transferred", "kB", "published",
    ]  # fmt: skip
    assert lines[2].split() == [
        "idle", "4", "GiB", "guest,", "1", "GbE",
        "plain", "2000", "3333", "50", "100", "100000", "363536",
    ]  # fmt: skip
    assert lines[3].split() == ["compress", "1000", "1833", "25", "27", "40000", "107819"]
    assert lines[4].split() == ["adaptive", "900", "-", "24", "-", "38000", "-"]
    assert lines[5].split() == ["compress/plain", "0.50", "0.55", "0.50", "0.27", "0.40", "0.30"]
    assert lines[6].split() == ["adaptive/plain", "0.45", "-", "0.48", "-", "0.38", "-"]


def test_demo_prints_progress_charts_and_the_table(tmp_path: Path) -> None:
    out = io.StringIO()
    cases = [CASES["idle-1gbe"], CASES["random-1gbe"]]
    assert run_demo(recorded_runner, cases, tmp_path, out, CORES) == 0
    text = out.getvalue()
    assert text.startswith("CPU: 2.0 of 2 cores free for the two endpoints\n\n")
    # Not a terminal: no live rewriting, one final line per run.
    assert "\r" not in text
    assert "  plain    2000 ms, downtime 50 ms, 100000 kB  (64 MiB, recorded)\n" in text
    assert "  compress 1000 ms, downtime 25 ms, 40000 kB  (64 MiB, recorded)\n" in text
    assert "  adaptive 900 ms, downtime 24 ms, 38000 kB  (64 MiB, recorded)\n" in text
    assert "  compress/plain total time 0.50, published 0.55: as published\n" in text
    assert (
        "  compress/plain total time 0.50, published 0.43: the articles' guest wrote random"
        " data, which stays incompressible; ours writes 8-byte words into mostly zero pages,"
        " which compress far better\n"
    ) in text
    assert text.count("remaining RAM (MiB, peak ") == 2
    for case in cases:
        png = tmp_path / f"qemu-hmp-demo-{case.key}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
        assert f"chart: {png}\n" in text
    last = text.splitlines()[-1].split()
    assert last == ["adaptive/plain", "0.45", "-", "0.48", "-", "0.38", "-"]


def test_a_cpu_bound_compress_run_is_named_as_such(tmp_path: Path) -> None:
    def busy_machine(case: Case, mode: str, progress: ProgressFn) -> Measured:
        slow = {"plain": Figures(2000, 50, 100000), "compress": Figures(3000, 80, 40000)}
        figures = slow.get(mode, Figures(1950, 50, 100000))
        compress = mode == "compress"
        return Measured(figures, series(1.0), "recorded", 0.3 if compress else 0.97, 1.05)

    out = io.StringIO()
    run_demo(busy_machine, [CASES["idle-1gbe"]], tmp_path, out, (1.1, 2))
    text = out.getvalue()
    assert "  this machine is busy: compressing at level 1 needs about a core per side" in text
    assert (
        "  compress/plain total time 1.50, published 0.55: the compress run filled 30% of its"
        " link while the endpoints used 1.1 of the 1.1 free cores: CPU-bound, compression pays"
        " only with CPU to spare; the adaptive policy measured it (0.97)\n"
    ) in text


def test_a_run_that_leaves_its_link_idle_but_not_its_cpu_is_not_called_cpu_bound(
    tmp_path: Path,
) -> None:
    """A dirtying guest's compressed run can leave the link idle while waiting to converge."""

    def converging(case: Case, mode: str, progress: ProgressFn) -> Measured:
        return Measured(RECORDED[mode], series(1.0), "recorded", 0.4, 0.5)

    out = io.StringIO()
    run_demo(converging, [CASES["idle-1gbe"]], tmp_path, out, (2.0, 2))
    assert "CPU-bound" not in out.getvalue()


def test_cpu_available_counts_cores_we_can_use() -> None:
    cores = cpu_available(0.05)
    assert 0 < cores <= (os.cpu_count() or 1) * 1.05


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_is_rewritten_in_place_on_a_terminal(tmp_path: Path) -> None:
    out = Tty()
    run_demo(recorded_runner, [CASES["idle-1gbe"]], tmp_path, out, CORES)
    assert (
        "\r  plain    migration active █████░░░░░░░░░░░░░░░  25% in sync · 800.0 mbps"
        " · 48.0 MiB remaining · expected downtime 300 ms · 0.5 s\x1b[K"
    ) in out.getvalue()


def test_classic_runner_migrates_for_real() -> None:
    tiny = replace(CASES["idle-1gbe"], setup=Setup("tiny", ram="64M", max_bandwidth="0"))
    seen: list[str] = []
    measured = run_classic(tiny, "compress", lambda p: seen.append(p.status))
    assert measured.figures.transferred_kb > 0 and measured.figures.total_time_ms > 0
    assert measured.series and measured.series[-1].remaining == 0
    assert "zlib level 1, 12/3 threads" in measured.setup
    assert seen[-1] == "completed"
