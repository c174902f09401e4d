"""The monitor on a socket beyond what QEMU's recordings show (tests/test_monitor_socket_oracle.py
compares those): option spellings, the editor's limits, telnet commands split across reads,
stdio and a socket side by side, and who removes the socket file when the process ends."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.machine import Machine, MachineOptions
from hmp.exits import ProcessEnd
from hmp.monitor import MonitorSockets
from hmp.monitor.commands import COMMANDS
from hmp.monitor.readline import HISTORY_SIZE, LINE_MAX, LineEditor, complete
from hmp.monitor.socket import MonitorSocket, TelnetFilter, parse_monitor_spec
from hmp.qmp import QmpFrontend
from hmp.qmp.server import parse_qmp_spec
from tests.listening import wait_listening

TIMEOUT = 10.0
PROMPT = b"(qemu) "


@pytest.mark.parametrize(
    ("text", "kind", "telnet", "wait"),
    [
        ("unix:/tmp/m.sock,server,nowait", "unix", False, False),
        ("unix:/tmp/m.sock,server=yes,wait=no,telnet=on", "unix", True, False),
        ("tcp:127.0.0.1:4444,server=on,wait=off,telnet=on,ipv4=on", "tcp", True, False),
        ("telnet:127.0.0.1:4444,server=on", "tcp", True, True),
        # QEMU sets telnet=on for the telnet: prefix after the options: it wins.
        ("telnet:127.0.0.1:4444,server=on,wait=off,telnet=off", "tcp", True, False),
    ],
)
def test_socket_spellings(text: str, kind: str, telnet: bool, wait: bool) -> None:
    spec = parse_monitor_spec(text)
    assert spec.address is not None
    assert (spec.address.kind, spec.telnet, spec.wait, spec.stdio) == (kind, telnet, wait, False)


def test_stdio_and_none() -> None:
    assert parse_monitor_spec("stdio").stdio
    none = parse_monitor_spec("none")
    assert (none.stdio, none.address) == (False, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("unix:/tmp/m.sock", "qemu-hmp only listens: add server=on"),
        ("tcp:127.0.0.1:4444,server=on,websocket=on",
         "option 'websocket' is not supported by qemu-hmp"),
        ("vc", "only stdio, none, unix:, tcp: and telnet: are supported"),
    ],
)  # fmt: skip
def test_what_qemu_has_and_we_do_not(text: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_monitor_spec(text)
    assert str(err.value) == f"-monitor {text}: {message}"


def typed(editor: LineEditor, data: bytes) -> tuple[bytes, list[bytes]]:
    """What the client sees and the lines entered, the prompt shown after each line."""
    lines = []
    out = bytearray()
    for byte in data:
        line = editor.feed(byte)
        out += editor.take_output()
        if line is not None:
            lines.append(line)
            editor.show_prompt()
            out += editor.take_output()
    return bytes(out), lines


def screen(out: bytes) -> bytes:
    """The last line a terminal shows after ``out`` (the cursor kept inside it)."""
    line, cursor, i = bytearray(), 0, 0
    moves = {b"\x1b[D": -1, b"\x1b[C": 1}
    while i < len(out):
        if out[i : i + 3] in moves:
            cursor += moves[out[i : i + 3]]
            i += 3
        elif out.startswith(b"\x1b[K", i):
            del line[cursor:]
            i += 3
        elif out.startswith(b"\r\n", i) or out.startswith(b"\x1b[2J\x1b[1;1H", i):
            line, cursor = bytearray(), 0
            i += 2 if out[i] == 13 else 10
        else:
            line[cursor : cursor + 1] = out[i : i + 1]
            cursor += 1
            i += 1
        assert 0 <= cursor <= len(line), out
    return bytes(line)


KEYS = [b"\x1b[A", b"\x1b[B", b"\x1b[C", b"\x1b[D", b"\x1b[1~", b"\x1b[4~", b"\x1b[3~",
        b"\x1bOH", b"\x9b", b"\x01", b"\x04", b"\x05", b"\x17", b"\x7f", b"\t", b"\x0c",
        b"\r", b"info ", b"mig", b"migrate_set_", b" ", b'"', b"\xc3\xa9"]  # fmt: skip


@settings(max_examples=500, deadline=2000, derandomize=True)
@given(st.lists(st.sampled_from(KEYS) | st.binary(max_size=3), max_size=40))
def test_any_keys_leave_the_screen_showing_the_line(keys: list[bytes]) -> None:
    """Whatever is typed, the echo draws on the client's screen exactly the line the editor
    holds: what Enter hands over is what the terminal showed after the prompt."""
    editor = LineEditor(complete)
    editor.show_prompt()
    out = bytearray(editor.take_output())
    for byte in b"".join(keys) + b"\n":
        line = editor.feed(byte)
        out += editor.take_output()
        if line is not None:
            assert out.endswith(b"\r\n")
            assert screen(bytes(out[:-2])) == PROMPT + line
            editor.show_prompt()
            out += editor.take_output()


def test_history_keeps_the_newest_distinct_lines() -> None:
    editor = LineEditor(complete)
    entered = [f"line{i}".encode() for i in range(HISTORY_SIZE + 6)]
    typed(editor, b"".join(line + b"\n" for line in [*entered, entered[-3]]))
    out, _ = typed(editor, b"\x1b[A" * (HISTORY_SIZE + 3))
    # Going up: entered[-3] moved to the end, then the others newest first, 64 in all.
    kept = [entered[-3], *(line for line in reversed(entered) if line != entered[-3])]
    shown = [part.split(b"\x1b[K")[0] for part in out.replace(b"\x1b[D", b"").split(b"\x1b[K")]
    assert [s for s in shown if s] == kept[:HISTORY_SIZE]


def test_a_line_stops_growing_at_qemus_buffer_size() -> None:
    editor = LineEditor(complete)
    _, lines = typed(editor, b"x" * (LINE_MAX + 10) + b"\n")
    assert lines == [b"x" * LINE_MAX]


def test_tab_on_an_empty_line_lists_every_command_in_qemus_columns() -> None:
    out, _ = typed(LineEditor(complete), b"\t")
    names = sorted(name for cmd in COMMANDS for name in cmd.names)
    width = max(len(n) for n in names) + 2
    rows = out.removeprefix(b"\r\n").removesuffix(PROMPT).split(b"\r\n")
    assert rows[-1] == b""
    assert b"".join(rows).split() == [n.encode() for n in names]
    assert all(len(row) == width * (80 // width) for row in rows[:-2])


def test_telnet_commands_split_across_reads() -> None:
    telnet = TelnetFilter()
    chunks = [b"st\xff", b"\xfd", b"\x01op", b"\xff", b"\xff!", b"\xff\xf3", b"x"]
    assert b"".join(telnet.feed(chunk) for chunk in chunks) == b"stop\xff!x"


def read_until(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    deadline = time.monotonic() + TIMEOUT
    while not data.endswith(end):
        assert select.select([sock], [], [], max(deadline - time.monotonic(), 0))[0], data
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def test_close_hangs_up_and_removes_the_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "mon.sock"
    machine = Machine(MachineOptions(ram_size=16 << 20))
    quit = threading.Event()
    server = MonitorSocket(machine, parse_monitor_spec(f"unix:{path},server,nowait"), quit.set)
    server.start()
    try:
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))
        read_until(client, PROMPT)
        server.close()
        assert client.recv(1) == b""
        assert not path.exists() and not quit.is_set()
        client.close()
    finally:
        server.close()
        machine.close()


def wait_for(path: Path, proc: subprocess.Popen[bytes]) -> None:
    wait_listening([path], [proc], TIMEOUT)


def test_stdio_and_a_socket_side_by_side(tmp_path: Path) -> None:
    """Two monitors of one VM; stdin's end leaves the socket's running, whose quit ends all."""
    path = tmp_path / "mon.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hmp", "-m", "16", "-monitor", "stdio",
         "-monitor", f"unix:{path},server=on,wait=off"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        wait_for(path, proc)
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))
        read_until(client, PROMPT)
        client.sendall(b"stop\n")
        read_until(client, b"\r\n" + PROMPT)
        proc.stdin.write(b"info status\n")
        proc.stdin.close()
        assert proc.stdout.readline() == b"(qemu) info status\n"
        assert proc.stdout.readline() == b"VM status: paused\n"
        client.sendall(b"info status\n")
        assert read_until(client, PROMPT).endswith(b"\r\nVM status: paused\r\n" + PROMPT)
        client.sendall(b"quit\n")
        assert proc.wait(TIMEOUT) == 0
        assert proc.stderr is not None and (proc.stdout.read(), proc.stderr.read()) == (b"", b"")
        assert not path.exists()
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_qmp_quit_also_removes_the_monitor_socket(tmp_path: Path) -> None:
    mon, qmp = tmp_path / "mon.sock", tmp_path / "qmp.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hmp", "-m", "16", "-monitor", f"unix:{mon},server=on,wait=off",
         "-qmp", f"unix:{qmp},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(mon, proc)
        wait_for(qmp, proc)
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(qmp))
        for name in ("qmp_capabilities", "quit"):
            client.sendall(json.dumps({"execute": name}).encode())
        _, err = proc.communicate(timeout=TIMEOUT)
        assert (proc.returncode, err) == (0, b"")
        assert not mon.exists() and not qmp.exists()
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_quit_at_once_still_removes_every_socket_file(tmp_path: Path) -> None:
    """The front ends put their cleanup into the process's end before they serve: a quit that
    comes before the caller does anything more (here: at once) removes every socket file."""
    machine = Machine(MachineOptions(ram_size=16 << 20))
    end = ProcessEnd()
    mon, qmp = tmp_path / "mon.sock", tmp_path / "qmp.sock"
    try:
        QmpFrontend(machine, [parse_qmp_spec(f"unix:{qmp},server=on,wait=off")], end)
        MonitorSockets(machine, [parse_monitor_spec(f"unix:{mon},server=on,wait=off")], end)
        assert mon.exists() and qmp.exists()
        end.release()  # what a quit typed at either runs
        assert not mon.exists() and not qmp.exists()
    finally:
        machine.close()
