"""Fixtures every test module may use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.machine import Machine


@pytest.fixture
def machines() -> Iterator[list[Machine]]:
    """Machines a test makes; each is closed at the end, whatever happened."""
    made: list[Machine] = []
    yield made
    for m in made:
        m.close()
