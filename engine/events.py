"""Asynchronous events (QMP's MIGRATION, MIGRATION_PASS, STOP, RESUME) for any front end."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Listener = Callable[[str, dict[str, Any]], None]


log = logging.getLogger(__name__)


class EventBus:
    """Fan-out of (event name, data) to subscribers; a failing subscriber cannot hurt others."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def emit(self, name: str, data: dict[str, Any]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(name, data)
            except Exception:  # a broken subscriber must not stop the migration
                log.exception("event subscriber failed on %s", name)
