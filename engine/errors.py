"""Errors the engine reports to its front ends (HMP, QMP)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class MigrationError(Exception):
    """A QMP-level error: ``desc`` is QEMU's message, ``hint`` extra lines.

    HMP prints ``Error: <desc>`` then the hint; QMP returns ``{"class": cls, "desc": desc}``.
    """

    def __init__(self, desc: str, *, hint: str = "", cls: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.hint = hint
        self.cls = cls

    def report(self) -> str:
        """What QEMU's error_report_err prints: the message, then the hint's lines."""
        return f"{self.desc}\n{self.hint.rstrip()}" if self.hint else self.desc


class ReportedFailure(MigrationError):
    """A migration that failed as it started while its command succeeded: QEMU reports the
    text with error_report (on the HMP monitor itself; on stderr under QMP), and its status
    is failed with no reason."""


@contextmanager
def file_errors(path: str) -> Iterator[None]:
    """QEMU's text for a file that cannot be opened or written (a NUL in the name: EINVAL)."""
    try:
        yield
    except OSError as exc:
        raise MigrationError(f"Could not open '{path}': {exc.strerror}") from exc
    except ValueError as exc:
        raise MigrationError(f"Could not open '{path}': Invalid argument") from exc
