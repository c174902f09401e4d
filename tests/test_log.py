"""`-D FILE`: state changes and tracebacks of unexpected errors go to the log; none without it."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.machine import Machine
from hmp import cli


@pytest.fixture
def clean_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[len(handlers) :]:
        handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_state_changes_go_to_the_log(tmp_path: Path) -> None:
    log = tmp_path / "qemu.log"
    result = subprocess.run(
        [sys.executable, "-m", "hmp", "-m", "16M", "-D", str(log)],
        input="migrate tcp:127.0.0.1:1\ninfo migrate\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    text = log.read_text()
    assert "MIGRATION {'status': 'setup'}" in text
    assert "MIGRATION {'status': 'failed'}" in text


def test_an_unexpected_error_logs_its_traceback(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    clean_root_logger: None,
) -> None:
    def broken(_machine: Machine) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(Machine, "query_status", broken)
    monkeypatch.setattr(sys, "stdin", io.StringIO("info status\n"))
    log = tmp_path / "qemu.log"
    assert cli.main(["-m", "16M", "-D", str(log)]) == 0
    assert "internal error: KeyError('a bug')" in capsys.readouterr().err
    text = log.read_text()
    assert "monitor command 'info status'" in text and "Traceback" in text
    assert "KeyError: 'a bug'" in text


def test_without_d_nothing_is_logged(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], clean_root_logger: None
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("info status\n"))
    assert cli.main(["-m", "16M"]) == 0
    logging.getLogger("engine.machine").error("not shown anywhere")
    assert "not shown" not in capsys.readouterr().err


def test_a_log_file_that_cannot_be_opened_is_qemus_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hmp", "-D", str(tmp_path / "no" / "x.log")],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"qemu-hmp: Error opening logfile {tmp_path}/no/x.log: No such file or directory\n"
    )
