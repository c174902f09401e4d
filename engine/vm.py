"""The VM's run state (QEMU's RunState) and the vCPU gate that enforces it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from engine.errors import MigrationError
from engine.events import EventBus
from engine.guest import VcpuGate
from engine.state import RunState


class Vm:
    """Run state transitions used by the monitor (stop/cont) and by migration."""

    def __init__(self, state: RunState, events: EventBus, vcpus: int = 1) -> None:
        self._events = events
        self.vcpus = vcpus
        # QEMU's big lock, for the run state: every change takes it, and a migration step
        # that must pass between run states with no stop or cont in between holds it.
        self._bql = threading.RLock()
        self._state = state
        self.gate = VcpuGate(running=state is RunState.RUNNING)

    @property
    def state(self) -> RunState:
        return self._state

    @property
    def running(self) -> bool:
        return self._state is RunState.RUNNING

    @contextmanager
    def held(self) -> Iterator[None]:
        """No stop, cont or other run-state change but this thread's until the block ends."""
        with self._bql:
            yield

    def stop(self, state: RunState = RunState.PAUSED) -> bool:
        """Stop the vCPUs if they run (QEMU's vm_stop); True if they were running."""
        with self._bql:
            was_running = self._state is RunState.RUNNING
            if was_running:
                self._state = state
                self.gate.set_running(False)
                self._events.emit("STOP", {})
            return was_running

    def force_stop(self, state: RunState) -> RunState:
        """Enter stopped ``state`` whether the vCPUs run or not (QEMU's vm_stop_force_state),
        with no cont in between; returns the state before."""
        with self._bql:
            prior = self._state
            if not self.stop(state):
                self.set_state(state)
            return prior

    def start(self, *, cont: bool = False) -> None:
        """Run the vCPUs. ``cont`` (the monitor's) is refused in finish-migrate, as in QEMU:
        the completion handshake decides where the guest runs, and a cont must not race it."""
        with self._bql:
            if cont and self._state is RunState.FINISH_MIGRATE:
                raise MigrationError("Migration is not finalized yet")
            was_running = self._state is RunState.RUNNING
            self._state = RunState.RUNNING
            self.gate.set_running(True)
            if not was_running:
                self._events.emit("RESUME", {})

    def set_state(self, state: RunState) -> None:
        """Enter a stopped state (postmigrate, inmigrate, prelaunch...) without running vCPUs."""
        if state is RunState.RUNNING:
            self.start()
            return
        with self._bql:
            self._state = state
            self.gate.set_running(False)
