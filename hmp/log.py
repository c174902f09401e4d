"""`-D FILE`: QEMU's log file. Tracebacks of unexpected errors, migration state changes and
the adaptive policy's decisions go there; without it qemu-hmp logs nothing (the monitor's
one-line messages are what a user sees)."""

from __future__ import annotations

import logging

from hmp.qemuopts import take_option

FORMAT = "%(asctime)s %(threadName)s %(name)s %(levelname)s: %(message)s"


def extract_log_option(argv: list[str]) -> tuple[str | None, list[str]]:
    """``-D FILE`` (or ``--D``) out of ``argv``; the last one counts, as in QEMU."""
    paths, rest = take_option(argv, "D")
    return (paths[-1] if paths else None), rest


def start_log(path: str | None) -> None:
    """Log to ``path``, or nowhere (not even Python's last-resort stderr handler)."""
    root = logging.getLogger()
    if path is None:
        root.addHandler(logging.NullHandler())
        return
    try:
        handler = logging.FileHandler(path)
    except OSError as exc:  # QEMU's text
        raise ValueError(f"Error opening logfile {path}: {exc.strerror}") from None
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
