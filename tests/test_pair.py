"""``qemu-hmp --pair``: one shell, two real endpoints (this process and a child destination)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from hmp.shell.completion import MonitorCompleter
from hmp.shell.pair import ENDPOINTS, split_endpoint

TIMEOUT = 60


def pair(lines: list[str], *options: str) -> subprocess.CompletedProcess[str]:
    """``qemu-hmp OPTIONS --pair -m 16M`` fed ``lines``, run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "hmp", *options, "--pair", "-m", "16M"],
        input="".join(f"{line}\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


@pytest.mark.parametrize(
    ("line", "split"),
    [
        ("dst> info migrate", ("dst", "info migrate")),
        ("src> info status", ("src", "info status")),
        ("  dst>info status", ("dst", "info status")),
        ("info status", ("src", "info status")),
        ("xyz> info status", ("src", "xyz> info status")),  # the monitor will reject it
    ],
)
def test_prefix_selects_the_endpoint(line: str, split: tuple[str, str]) -> None:
    assert split_endpoint(line) == split


def test_completion_after_an_endpoint_prefix() -> None:
    completer = MonitorCompleter(endpoints=ENDPOINTS)

    def offered(text: str) -> set[str]:
        event = CompleteEvent(completion_requested=True)
        return {c.text for c in completer.get_completions(Document(text), event)}

    assert {"src>", "dst>", "info", "migrate"} <= offered("")
    assert offered("ds") == {"dst>"}
    assert offered("dst> migrate_set_cap") == {"migrate_set_capability"}
    assert "compress" in offered("dst> migrate_set_capability ")
    assert offered("dst> info migrate_c") == {"migrate_capabilities"}


def test_batch_pair_migrates_to_its_own_destination() -> None:
    lines = [
        "dst> info status",
        "migrate_set_capability compress on",
        "dst> migrate_set_capability compress on",
        "migrate {dst}",
        "info status",
        "dst> info status",
        "dst> bogus",
    ]
    result = pair(lines, "--no-history")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "(qemu) dst> info status\n"
        "VM status: paused (inmigrate)\n"
        "(qemu) migrate_set_capability compress on\n"
        "(qemu) dst> migrate_set_capability compress on\n"
        "(qemu) migrate {dst}\n"
        "(qemu) info status\n"
        "VM status: paused (postmigrate)\n"
        "(qemu) dst> info status\n"
        "VM status: running\n"
        "(qemu) dst> bogus\n"
        "unknown command: 'bogus'\n"
    )


def test_a_destination_that_quit_is_reported() -> None:
    result = pair(["dst> quit", "dst> info status", "info status"])
    assert result.returncode == 0
    assert result.stdout.endswith("(qemu) info status\nVM status: running\n")
    assert "qemu-hmp: dst: " in result.stderr


def test_an_11_1_pair_listens_at_the_first_dst_so_multifd_can_be_set() -> None:
    lines = [
        "dst> info migrate",  # -incoming defer: nothing yet
        "dst> migrate_set_capability multifd on",
        "migrate_set_capability multifd on",
        "migrate {dst}",
        "info status",
        "dst> info status",
    ]
    result = pair(lines, "--qemu", "11.1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "(qemu) dst> info migrate\n"
        "(qemu) dst> migrate_set_capability multifd on\n"
        "(qemu) migrate_set_capability multifd on\n"
        "(qemu) migrate {dst}\n"
        "(qemu) info status\n"
        "VM status: paused (postmigrate)\n"
        "(qemu) dst> info status\n"
        "VM status: running\n"
    )
