"""Errors the engine reports to its front ends (HMP, QMP)."""

from __future__ import annotations


class MigrationError(Exception):
    """A QMP-level error: ``desc`` is QEMU's message, ``hint`` extra lines.

    HMP prints ``Error: <desc>`` then the hint; QMP returns ``{"class": cls, "desc": desc}``.
    """

    def __init__(self, desc: str, *, hint: str = "", cls: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.hint = hint
        self.cls = cls
