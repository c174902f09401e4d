"""The transcript runner's @wait reads QMP (`query-migrate`, `query-status`), not monitor text."""

from __future__ import annotations

import re

from hmp.harness.runner import replay


def test_wait_for_a_run_state_and_a_failure_with_its_reason() -> None:
    text = """\
  $ dst: qemu-hmp -m 16M -incoming tcp:127.0.0.1:{port}
  @wait dst status inmigrate timeout=10
  $ src: qemu-hmp -m 16M
  src> migrate -d tcp:127.0.0.1:{port2}
  @wait src migrate completed timeout=10
"""
    result = replay(text, "waits.hmpt")
    assert len(result.errors) == 1, result.errors
    # Nothing listens on {port2}: the wait ends at once, naming QEMU's reason.
    assert re.fullmatch(
        r"""line 5: src: migrate is "failed \(Failed to connect to '127\.0\.0\.1:\d+': """
        r"""Connection refused\)", waited for 'completed'""",
        result.errors[0],
    ), result.errors
    # The waits printed nothing, and the steps before the failure stand as written.
    assert result.actual == text


def test_wait_reports_what_it_saw_when_it_times_out() -> None:
    text = """\
  $ dst: qemu-hmp -m 16M -incoming tcp:127.0.0.1:{port}
  @wait dst status running timeout=0.2
"""
    result = replay(text, "timeout.hmpt")
    assert result.errors == ["line 2: dst: status still 'inmigrate' after 0.2s"]
