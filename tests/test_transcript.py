"""The transcript format: parsing, writing, line matching, alignment, recorded patterns."""

from __future__ import annotations

import pytest

from hmp.harness.transcript import (
    Kind,
    TranscriptError,
    generaliser,
    literal,
    matches,
    parse,
    reconcile,
    render,
)

TEXT = """\
Prose, unindented.

  $ dst: qemu-hmp -m 64M -incoming tcp:127.0.0.1:{port}
  dst> info status
  VM status: paused (inmigrate)
  @wait dst status running timeout=5
  other> not a command: no endpoint named other was started
"""


def test_parse_then_render_gives_the_text_back() -> None:
    steps = parse(TEXT)
    assert [s.kind for s in steps] == [
        Kind.PROSE, Kind.PROSE, Kind.START, Kind.COMMAND, Kind.DIRECTIVE
    ]  # fmt: skip
    start = ("dst", "qemu-hmp -m 64M -incoming tcp:127.0.0.1:{port}")
    assert (steps[2].name, steps[2].arg) == start
    assert (steps[3].name, steps[3].arg, steps[3].expected) == (
        "dst", "info status", ["VM status: paused (inmigrate)"]
    )  # fmt: skip
    assert steps[4].expected == ["other> not a command: no endpoint named other was started"]
    assert render(steps) == TEXT


def test_output_needs_a_step_above_it() -> None:
    with pytest.raises(TranscriptError, match="line 2"):
        parse("prose\n  orphan output\n")


@pytest.mark.parametrize(
    ("expected", "actual", "ok"),
    [
        ("total time: 5 ms", "total time: 5 ms", True),
        ("total time: 5 ms", "total time: 6 ms", False),
        ("total time: {ms} ms", "total time: 1234 ms", True),
        ("total time: {ms} ms", "total time: ms", False),
        ("throughput: {float} mbps", "throughput: 662.49 mbps", True),
        ("throughput: {float} mbps", "throughput: 662 mbps", False),
        ("a {*} b", "a anything at all b", True),
        ("tcp:127.0.0.1:{port}", "tcp:127.0.0.1:4444", True),
        ("tcp:127.0.0.1:{port}", "tcp:127.0.0.1:4445", False),
        ("tcp:127.0.0.1:{port2}", "tcp:127.0.0.1:4445", True),  # not allocated: any number
        ("failed \\((Broken pipe|reset)\\) (re)", "failed (reset)", True),
        ("failed \\((Broken pipe|reset)\\) (re)", "failed (reset) more", False),
        ("[unclosed (re)", "[unclosed", False),  # a broken regex matches nothing
        ("{not-a-placeholder}", "{not-a-placeholder}", True),
    ],
)
def test_matches(expected: str, actual: str, ok: bool) -> None:
    assert matches(expected, actual, {"port": 4444}) is ok


def test_reconcile_keeps_matching_patterns_and_aligns_extra_lines() -> None:
    expected = ["Migration status: completed", "total time: {ms} ms", "setup: {ms} ms"]
    actual = ["Migration status: completed", "total time: 12 ms", "downtime: 3 ms", "setup: 1 ms"]
    assert reconcile(expected, actual, {}, str.upper) == [
        "Migration status: completed", "total time: {ms} ms", "DOWNTIME: 3 MS", "setup: {ms} ms"
    ]  # fmt: skip


INFO_MIGRATE = [
    "Migration status: completed",
    "total time: 217 ms",
    "transferred ram: 19821 kbytes",
    "throughput: 767.14 mbps",
    "total ram: 131072 kbytes",
    "cpu throttle percentage: 80",
]


def test_recording_keeps_counts_of_a_quiet_completed_migration() -> None:
    generalise = generaliser(INFO_MIGRATE, {}, quiet_guest=True)
    assert [generalise(line) for line in INFO_MIGRATE] == [
        "Migration status: completed",
        "total time: {ms} ms",
        "transferred ram: 19821 kbytes",
        "throughput: {float} mbps",
        "total ram: 131072 kbytes",
        "cpu throttle percentage: {pct}",
    ]


@pytest.mark.parametrize("status", ["completed", "active"])
def test_recording_generalises_counts_of_a_busy_guest_or_a_running_migration(status: str) -> None:
    output = [f"Migration status: {status}", *INFO_MIGRATE[1:]]
    generalise = generaliser(output, {}, quiet_guest=status == "active")
    assert generalise("transferred ram: 19821 kbytes") == "transferred ram: {kb} kbytes"
    assert generalise("total ram: 131072 kbytes") == "total ram: 131072 kbytes"


@pytest.mark.parametrize(
    ("line", "written"),
    [
        ("\ttcp:127.0.0.1:40123", "\ttcp:127.0.0.1:{port}"),
        ("transferred ram: 401234 kbytes", "transferred ram: 401234 kbytes"),
        ("a {ms} b", "a\\ \\{ms\\}\\ b (re)"),
        ("@wait", "(?:)@wait (re)"),
        ("src> x", "(?:)src>\\ x (re)"),
    ],
)
def test_literal_lines_read_back_as_exactly_themselves(line: str, written: str) -> None:
    ports = {"port": 40123}
    assert literal(line, ports) == written
    assert matches(written, line, ports)
    assert parse("  $ src: x\n  src> info\n  " + written + "\n")[-1].expected == [written]
