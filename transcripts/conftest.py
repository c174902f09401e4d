"""pytest collects every ``*.hmpt`` here: one item per transcript, a unified diff on failure.

``pytest transcripts --update-transcripts`` rewrites the expectations that no longer match
(patterns that still match are kept, as with cram -i). A transcript that starts a real QEMU
(``$ NAME: qemu-system-...``) carries the ``qemu`` marker: ``pytest -m qemu`` runs it (one
that starts ``qemu11-system-...``: ``qemu11``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hmp.harness.qemu_endpoint import is_qemu, release_of
from hmp.harness.runner import Result, replay
from hmp.harness.transcript import Kind, parse


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-transcripts", action="store_true", help="rewrite transcripts that differ"
    )


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.File | None:
    if file_path.suffix == ".hmpt":
        return TranscriptFile.from_parent(parent, path=file_path)
    return None


class TranscriptFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        item = TranscriptItem.from_parent(self, name=self.path.name)
        steps = parse(self.path.read_text())
        for step in steps:
            argv = step.arg.split() if step.kind is Kind.START else []
            if is_qemu(argv):  # `pytest -m qemu` (7.2) or `-m qemu11` runs it
                item.add_marker("qemu11" if release_of(argv[0]) == "11.1" else "qemu")
        yield item


class TranscriptMismatch(Exception):
    def __init__(self, result: Result) -> None:
        super().__init__(result.diff())
        self.result = result


class TranscriptItem(pytest.Item):
    def runtest(self) -> None:
        update = self.config.getoption("--update-transcripts", default=False)
        result = replay(
            self.path.read_text(), self.path.name, update=update, here=str(self.path.parent)
        )
        if update and not result.errors and not result.passed:
            self.path.write_text(result.actual)
            return
        if not result.passed:
            raise TranscriptMismatch(result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, TranscriptMismatch):
            return excinfo.value.result.diff()
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"transcript: {self.name}"
