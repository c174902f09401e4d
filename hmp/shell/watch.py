"""Background notices for a person at the prompt: migration completed or cancelled; events.

QEMU's monitor prints nothing when a detached migration completes or is cancelled; a shell
for people says so. The
watcher polls the endpoint's snapshot (cheap, lock-free for the monitor), so it needs nothing
from the engine beyond ``query_migrate``, and it works whether or not the `events` capability
is on. MIGRATION and MIGRATION_PASS events, which the engine emits only when a user turned
`events` on, are shown as they come. Batch mode never starts a watcher: its output stays QEMU's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from engine.machine import Machine
from engine.snapshot import MigrationInfo
from engine.state import MigrationStatus
from hmp.shell.toolbar import Progress, mib

POLL_S = 0.1
# A failure needs no notice: the engine reports its error (as QEMU does) at either end.
ANNOUNCED = frozenset({MigrationStatus.COMPLETED, MigrationStatus.CANCELLED})
SHOWN_EVENTS = frozenset({"MIGRATION", "MIGRATION_PASS"})


def ended_notice(p: Progress) -> str:
    """One line for a migration that just reached ``p.status`` (one of ANNOUNCED); from our
    engine's snapshot or from a QEMU's ``query-migrate`` (hmp/shell/connect.py)."""
    if p.status != MigrationStatus.COMPLETED:
        return f"* migration {p.status}\n"
    if p.total is None:  # the destination's side
        return "* incoming migration completed\n"
    return (
        f"* migration completed in {p.elapsed_ms} ms (downtime {p.downtime_ms} ms,"
        f" {mib(p.transferred)} sent, {p.mbps:.1f} mbps)\n"
    )


def event_notice(name: str, data: dict[str, Any]) -> str:
    fields = " ".join(f"{key}={value}" for key, value in data.items())
    return f"* event {name} {fields}\n"


class MigrationWatcher:
    """Calls ``post(text)`` from its own thread; ``post`` must be safe to call from any thread."""

    def __init__(self, machine: Machine, post: Callable[[str], None]) -> None:
        self._machine = machine
        self._post = post
        self._stop = threading.Event()
        self._last = self._key(machine.query_migrate())
        self._thread = threading.Thread(target=self._run, name="hmp-watcher", daemon=True)
        self._unsubscribe = machine.events.subscribe(self._event)

    def __enter__(self) -> MigrationWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._unsubscribe()
        self._stop.set()
        self._thread.join()

    def _event(self, name: str, data: dict[str, Any]) -> None:
        if name in SHOWN_EVENTS:
            self._post(event_notice(name, data))

    @staticmethod
    def _key(info: MigrationInfo) -> tuple[MigrationStatus | None, int | None]:
        # The total time tells a second completed migration from the first.
        return info.status, info.total_time

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            info = self._machine.query_migrate()
            key = self._key(info)
            if key != self._last and info.status in ANNOUNCED:
                self._post(ended_notice(Progress.from_info(info)))
            self._last = key
