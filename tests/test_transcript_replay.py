"""Transcripts against real endpoints: the driver, replay diffs, hangs, record round trips."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hmp.harness import record
from hmp.harness import replay as replay_cli
from hmp.harness.endpoint import Endpoint, EndpointTimeout
from hmp.harness.runner import Session, replay
from hmp.harness.transcript import parse
from hmp.monitor.batch import END_MARKER_ENV

pytest_plugins = ["pytester"]

TRANSCRIPTS = Path(__file__).parent.parent / "transcripts"
ONE_ENDPOINT = """\
  $ src: qemu-hmp -m 16M -name demo
  src> info status
  VM status: running
  src> info migrate
  globals:
  store-global-state: on
  only-migratable: off
  send-configuration: on
  send-section-footer: on
  decompress-error-check: on
  clear-bitmap-shift: 18
  src> info name
  demo
"""


def test_batch_end_marker_is_opt_in() -> None:
    def run(env: dict[str, str]) -> str:
        argv = [sys.executable, "-m", "hmp", "-m", "16M"]
        done = subprocess.run(
            argv, input="info status\n", capture_output=True, text=True, env=env, timeout=30
        )
        return done.stdout

    plain = {k: v for k, v in os.environ.items() if k != END_MARKER_ENV}
    assert run(plain) == "(qemu) info status\nVM status: running\n"
    assert run(plain | {END_MARKER_ENV: "END"}) == "(qemu) info status\nVM status: running\nEND\n"


def test_endpoint_returns_exact_output_and_stderr() -> None:
    with Endpoint(["qemu-hmp", "-m", "16M"], name="src") as src:
        src.wait_ready(10)
        assert src.execute("info status", 10) == "VM status: running\n"
        assert src.execute("nonsense", 10) == "unknown command: 'nonsense'\n"
        assert src.execute("", 10) == ""
        assert src.close() == 0
        assert src.read_stderr(timeout=10) == []


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never reads: a migration to it hangs."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def test_endpoint_command_that_hangs_times_out(silent_port: int) -> None:
    with Endpoint(["qemu-hmp", "-m", "64M"], name="src") as src:
        src.wait_ready(10)
        started = time.monotonic()
        with pytest.raises(EndpointTimeout, match=r"did not finish within 0\.5s"):
            src.execute(f"migrate tcp:127.0.0.1:{silent_port}", 0.5)
        assert time.monotonic() - started < 5


def test_the_curated_set_is_there() -> None:
    names = {path.stem for path in TRANSCRIPTS.glob("*.hmpt")}
    assert names >= {
        "classic-compress", "plain-blocking", "plain-detached", "errors", "cancel",
        "dst-killed", "auto-converge", "compress-levels", "no-convergence",
        "bandwidth-downtime", "multifd",
    }  # fmt: skip


def test_an_edited_expectation_fails_with_a_readable_diff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "edited.hmpt"
    path.write_text(ONE_ENDPOINT.replace("VM status: running", "VM status: paused"))
    assert replay_cli.main([str(path)]) == 1
    out = capsys.readouterr().out
    assert f"FAILED {path}" in out
    assert f"--- {path}\n+++ {path} (actual)\n" in out
    assert "\n-  VM status: paused\n+  VM status: running\n" in out


def test_update_rewrites_what_differs_and_keeps_patterns(tmp_path: Path) -> None:
    text = ONE_ENDPOINT + "  src> migrate foo:bar\n  src> info migrate\n"
    first = replay(text, update=True)
    assert not first.errors
    assert "  total time: {ms} ms\n" in first.actual  # recorded as a pattern
    edited = first.actual.replace("VM status: running", "VM status: paused")
    second = replay(edited, update=True)
    assert second.actual == first.actual
    assert replay(first.actual).passed


def test_a_hung_endpoint_fails_within_its_timeout(silent_port: int) -> None:
    text = f"""\
  $ src: qemu-hmp -m 64M
  src> info status
  VM status: running
  src> migrate tcp:127.0.0.1:{silent_port}
  src> info status
  VM status: running
"""
    started = time.monotonic()
    result = replay(text, "hung.hmpt", timeout=1.0)
    assert time.monotonic() - started < 10
    assert not result.passed
    migrate = f"migrate tcp:127.0.0.1:{silent_port}"
    assert result.errors == [f"line 4: src: `{migrate}` did not finish within 1s"]
    assert result.actual == text  # the steps after the failure are left as they were


def test_endpoints_are_killed_when_a_session_ends() -> None:
    with Session(timeout=10) as session:
        session.run(parse("  $ src: qemu-hmp -m 16M\n")[0])
        proc = session.endpoints["src"].proc
        assert proc.poll() is None
    assert proc.poll() is not None


def record_and_replay(tmp_path: Path, script: str) -> str:
    (tmp_path / "script").write_text(script)
    out = tmp_path / "recorded.hmpt"
    assert record.main(["--out", str(out), str(tmp_path / "script")]) == 0
    result = replay(out.read_text(), str(out))
    assert result.passed, result.diff()
    return result.expected


def test_record_then_replay_one_endpoint(tmp_path: Path) -> None:
    text = record_and_replay(
        tmp_path,
        "# One endpoint.\n$ src: qemu-hmp -m 16M\nsrc> info status\n"
        "src> migrate_set_parameter compress-level 10\nsrc> info migrate_parameters\n",
    )
    assert text.startswith("One endpoint.\n  $ src: qemu-hmp -m 16M\n  src> info status\n")
    assert "  Error: Parameter 'compress_level' expects a value between 0 and 9\n" in text


def test_record_then_replay_a_two_endpoint_migration(tmp_path: Path) -> None:
    text = record_and_replay(
        tmp_path,
        "$ dst: qemu-hmp -m 32M -incoming tcp:127.0.0.1:{port}\n$ src: qemu-hmp -m 32M\n"
        "src> migrate -d tcp:127.0.0.1:{port}\n@wait src migrate completed timeout=20\n"
        "src> info migrate\n@wait dst status running timeout=20\ndst> info migrate\n",
    )
    assert "  src> migrate -d tcp:127.0.0.1:{port}\n" in text
    assert "  total time: {ms} ms\n" in text
    assert "  total ram: 32768 kbytes\n" in text


def test_wait_pass_fails_at_once_on_a_migration_that_has_ended() -> None:
    text = """\
  $ dst: qemu-hmp -m 16M -incoming tcp:127.0.0.1:{port}
  $ src: qemu-hmp -m 16M
  @wait src pass 1 timeout=0.2
  src> migrate tcp:127.0.0.1:{port}
  @wait src pass 1 timeout=20
"""
    result = replay(text, "pass.hmpt")
    assert len(result.errors) == 1, result.errors  # the run stopped at the first failed @wait
    assert result.errors[0] == "line 3: src: pass still '(none)' after 0.2s"  # no migration
    text = text.replace("  @wait src pass 1 timeout=0.2\n", "")
    result = replay(text, "pass.hmpt")
    assert len(result.errors) == 1, result.errors
    assert result.errors[0].startswith("line 4: src: migrate is 'completed' at pass ")
    result = replay(text.replace("pass 1 timeout=20", "pass one"), "pass.hmpt")
    assert result.errors == ["line 4: @wait src pass: a number, not 'one'"]


def test_pytest_reports_a_transcript_mismatch_as_a_diff(pytester: pytest.Pytester) -> None:
    pytester.makeconftest((TRANSCRIPTS / "conftest.py").read_text())
    bad = ONE_ENDPOINT.replace("  demo\n", "  other\n")
    (pytester.path / "bad.hmpt").write_text(bad)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*transcript: bad.hmpt*", "-  other", "+  demo"])
