"""An ``exec:`` command that exits with status 0 but leaves part of the stream unread lost it:
the migration fails, whether the command exits before the last write (which then meets
EPIPE) or after it (our end is reset: engine/command.py `finish`).

`test_fuzz_inputs.py::test_migrate_to_any_uri_is_no_internal_error` failed 1 full-suite run
in 2 under load on `exec:true`: a loaded machine started `sh -c true` late, the small stream
was already in the socket buffer, and the migration said `completed`. Here the command is
held, by a FIFO it waits on, until the whole stream is written, so the late exit always
happens.
"""

from __future__ import annotations

import errno
import os
import shlex
from pathlib import Path

import pytest

from engine.command import CommandChannel

TIMEOUT = 10.0


def held(fifo: Path, then: str) -> CommandChannel:
    """A command that waits for a line on ``fifo`` before it runs ``then`` (on its stdin)."""
    os.mkfifo(fifo)
    return CommandChannel(f"read -r go < {shlex.quote(str(fifo))}; {then}", outgoing=True)


def release(fifo: Path) -> None:
    with open(fifo, "w") as writer:  # opens once the command waits on it
        writer.write("go\n")


def test_a_command_that_exits_without_reading_loses_the_stream(tmp_path: Path) -> None:
    channel = held(tmp_path / "go", "true")
    try:
        channel.sock.sendall(b"the whole stream")  # written before the command can exit
        release(tmp_path / "go")
        with pytest.raises(OSError) as raised:
            channel.finish(TIMEOUT)
        assert raised.value.errno == errno.EPIPE  # the text a refused write has
    finally:
        channel.sock.close()


def test_a_command_that_reads_it_all_completes(tmp_path: Path) -> None:
    channel = held(tmp_path / "go", "cat > /dev/null")
    try:
        channel.sock.sendall(b"the whole stream")
        release(tmp_path / "go")
        channel.finish(TIMEOUT)  # no error: read to the end, status 0
    finally:
        channel.sock.close()
