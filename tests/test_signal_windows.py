"""A SIGTERM lands wherever the main thread is (Python raises `Terminated` there): the windows
of startup where that once lost what existed, each forced open here instead of hoped for.

Found by SIGTERMing `-monitor unix:...,server=on,wait=off` processes at startup milestones
under load (docs/reliability.md): a signal inside `Thread.start()` left the monitor socket a
thread that `close()` could not join, and the RuntimeError skipped the machine's release.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.machine import Machine, MachineOptions
from hmp import exits
from hmp.exits import ProcessEnd, Terminated, deferred, interruptible
from hmp.monitor.socket import MonitorSocket, parse_monitor_spec


@pytest.fixture
def handler() -> Iterator[None]:
    """The process's SIGTERM handler, as run_as_process installs it; restored after."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, exits._terminate)
    try:
        yield
    finally:
        for sig, action in saved.items():
            signal.signal(sig, action)


def test_a_signal_inside_deferred_waits_for_its_end(handler: None) -> None:
    reached = []
    with pytest.raises(Terminated) as raised:
        with deferred():
            signal.raise_signal(signal.SIGTERM)
            reached.append("after the signal")  # the block is not interrupted
    assert reached == ["after the signal"]
    assert raised.value.signum == signal.SIGTERM


def test_a_signal_outside_deferred_raises_at_once(handler: None) -> None:
    with deferred():
        pass
    with pytest.raises(Terminated):
        signal.raise_signal(signal.SIGTERM)


def test_a_wait_for_a_first_client_stays_interruptible(handler: None) -> None:
    """wait=on: startup is deferred, but a client that never comes must not hold a signal."""
    reached = []
    with pytest.raises(Terminated), deferred():
        with interruptible():
            signal.raise_signal(signal.SIGTERM)
            reached.append("after the signal")
    assert reached == []


def test_a_signal_held_before_a_wait_ends_it_at_once(handler: None) -> None:
    reached = []
    with pytest.raises(Terminated), deferred():
        signal.raise_signal(signal.SIGTERM)
        with interruptible():
            reached.append("the wait began")
    assert reached == []


def test_release_runs_every_cleanup_when_one_fails() -> None:
    end, ran = ProcessEnd(), []

    def broken() -> None:
        raise RuntimeError("a cleanup that fails")

    end.on_end(lambda: ran.append("machine"))
    end.on_end(broken)
    end.release()
    assert ran == ["machine"]


def test_a_signal_inside_the_monitor_threads_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Terminated` out of Thread.start(): close() must still release (no join of a thread
    that never began) and remove the socket file."""
    path = tmp_path / "mon.sock"
    machine = Machine(MachineOptions(ram_size=16 << 20))
    try:
        server = MonitorSocket(
            machine, parse_monitor_spec(f"unix:{path},server=on,wait=off"), lambda: None
        )

        def interrupted(_thread: threading.Thread) -> None:
            raise Terminated(signal.SIGTERM)

        monkeypatch.setattr(threading.Thread, "start", interrupted)
        with pytest.raises(Terminated):
            server.start()
        monkeypatch.undo()
        server.close()
        assert not path.exists()
    finally:
        machine.close()
