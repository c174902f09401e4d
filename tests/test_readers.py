"""Drivers read an endpoint's figures from `query-migrate` JSON, as tools read QEMU's: the
accessors of the lab and the demo, on QEMU 7.2's own answers (tests/data/qmp/migration.jsonl)."""

from __future__ import annotations

from typing import Any

from hmp.lab.cases import Figures
from hmp.lab.demo import figures
from hmp.lab.experiment import Result, Setup, figure
from hmp.shell.toolbar import Progress, progress_text
from tests.qmp_helpers import load


def qemu_answers(status: str) -> list[dict[str, Any]]:
    """QEMU's `query-migrate` answers with ``status``, in the order it gave them."""
    answers = [m["recv"]["return"] for m in load("migration") if "return" in m.get("recv", {})]
    return [a for a in answers if isinstance(a, dict) and a.get("status") == status]


def test_figures_by_json_key_with_absent_ones_zero() -> None:
    done = qemu_answers("completed")[0]  # the source's (the destination's has no figures)
    assert figure(done, "total-time") == 4271
    assert figure(done, "downtime") == 2
    assert figure(done, "ram.transferred") == 563611
    assert figure(done, "compression.compression-rate") == 2.2059166927036227
    active = qemu_answers("active")[0]
    assert figure(active, "downtime") == 0.0  # not measured while it runs
    assert figure({}, "ram.transferred") == 0.0  # no migration: no RAM figures
    assert figure(done, "ram.transferred.x") == 0.0  # a key below a number is absent too


def test_demo_figures_come_from_the_final_query_migrate() -> None:
    done = qemu_answers("completed")[0]
    result = Result(Setup("qemu"), "completed", done, {"src": 0, "dst": 0})
    assert figures(result) == Figures(4271, 2, 550)  # kbytes truncated, as `info migrate` has it


def test_progress_line_of_qemus_migration() -> None:
    assert progress_text(Progress.from_query_migrate(qemu_answers("active")[0])) == (
        "migration active ░░░░░░░░░░░░░░░░░░░░   1% in sync · 1.2 mbps · 127.5 MiB remaining"
        " · expected downtime 300 ms · 0.3 s"
    )
    done = qemu_answers("completed")[0]
    assert progress_text(Progress.from_query_migrate(done), "postmigrate") == (
        "migration completed in 4271 ms · downtime 2 ms · 0.5 MiB sent · VM postmigrate"
    )
    assert progress_text(Progress.from_query_migrate({})) == "no migration"
