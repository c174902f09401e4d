"""What a machine reports on stderr (its notify), collected and waited for without sleeping."""

from __future__ import annotations

import threading


class Reports:
    """Pass as a machine's ``notify``; ``wait`` blocks (bounded) until enough lines came."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()

    def __call__(self, line: str) -> None:
        with self._cond:
            self.lines.append(line)
            self._cond.notify_all()

    def wait(self, count: int = 1, timeout: float = 30.0) -> list[str]:
        """The lines so far, once there are at least ``count``."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.lines) >= count, timeout), self.lines
            return list(self.lines)
