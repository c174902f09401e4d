"""Fixtures every test module may use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from engine.machine import Machine

if TYPE_CHECKING:
    from test_repl_tty import Terminal


@pytest.fixture
def machines() -> Iterator[list[Machine]]:
    """Machines a test makes; each is closed at the end, whatever happened."""
    made: list[Machine] = []
    yield made
    for m in made:
        m.close()


@pytest.fixture
def term(tmp_path: Path) -> Iterator[Terminal]:
    """A qemu-hmp under a real pseudo-terminal (test_repl_tty.Terminal), killed at the end."""
    from test_repl_tty import Terminal  # a test module: imported only by the tests that use it

    t = Terminal(tmp_path)
    yield t
    t.kill()
