"""pytest collects every ``*.hmpt`` here: one item per transcript, a unified diff on failure.

``pytest transcripts --update-transcripts`` rewrites the expectations that no longer match
(patterns that still match are kept, as with cram -i).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hmp.harness.runner import Result, replay


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
        yield TranscriptItem.from_parent(self, name=self.path.name)


class TranscriptMismatch(Exception):
    def __init__(self, result: Result) -> None:
        super().__init__(result.diff())
        self.result = result


class TranscriptItem(pytest.Item):
    def runtest(self) -> None:
        update = self.config.getoption("--update-transcripts", default=False)
        result = replay(self.path.read_text(), self.path.name, update=update)
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
