"""Re-record QEMU 7.2's monitor on a socket: ``python tests/data/qemu-7.2/record_socket.py``.

Each case starts ``qemu-system-x86_64 ... -monitor SPEC`` (SPEC names ``{sock}`` or ``{port}``,
filled in afresh) and drives plain socket clients through it. monitor_socket.json keeps, per
case, the QEMU options, the monitor SPEC, what QEMU wrote to stderr before the first client
connected, the steps, and whether the unix socket file was still there after QEMU exited.
A step is one action of one client (``connect``, ``send`` bytes, or ``close``) and ``recv``: what
every client got afterwards until QEMU went quiet (bytes as latin-1 strings; a client whose
connection QEMU closed gets ``"eof": [CLIENT...]``). Only this recorder waits for quiet; the
replay (tests/test_monitor_socket_oracle.py) reads exactly the recorded byte counts.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
QEMU = ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-smp", "1", "-display", "none"]
QEMU += ["-nodefaults", "-m", "128"]
UNIX = "unix:{sock},server=on,wait=off"
QUIET_S = 0.4

# Telnet bytes: Interpret As Command, and the commands clients send.
IAC, DO, WILL, BREAK, NOP = "\xff", "\xfd", "\xfb", "\xf3", "\xf1"

EDITING = [
    "info status\n",
    "info name\r\n",  # CR ends the line; the LF is an empty line of its own
    "stop\n",
    "info status\n",
    "cont\n",
    "foo bar\n",
    "info foo\n",
    "info st\x7f\x7fname\n",  # DEL
    "stopp\x08\n",  # backspace
    "cont\n",
    "ab\x01X\x05Y\n",  # Ctrl-A, Ctrl-E
    "ab\x1b[DZ\n",  # left
    "ab\x1b[D\x1b[C\x1b[C!\n",  # right, and right at the end
    "ab\x1b[1~Q\x1b[4~W\n",  # home, end
    "ab cd\x1bOHx\x1bOFy\n",  # SS3 home, end
    "abc\x1b[D\x1b[D\x1b[3~\n",  # delete
    "info namex\x1b[D\x04\n",  # Ctrl-D deletes under the cursor
    "\x03\x04\x15\n",  # Ctrl-C, Ctrl-D at the end, Ctrl-U: ignored
    "info name  junk  \x17\n",  # Ctrl-W
    "st\x1bxop\n",  # ESC and a key that starts no sequence
    "\x1b[A",  # history: the last line
    "\x1b[A\x1b[A",
    "\x1b[B",
    "\x1b[B\x1b[B\x1b[B\x1b[B\x1b[B\x1b[B\x1b[B\x1b[B\x1b[B\x1b[B\x1b[B",  # past the newest: empty
    "\x1b[A\n",
    "info migrate_c\t\n",  # one completion: inserted, with a space
    "info mig\t",  # several: listed in columns, common prefix inserted
    "_p\t\n",
    "migrate_set_capability xbz\t",
    "o\t",
    "n\n",
    "migrate_set_parameter compress-th\t4\n",
    "help info mig\t\n",  # help completes what it names
    "help migrate_inc\t\n",
    "migrate_set_parameter block\t",
    "\x17\x17\n",
    "   info   mig\t\n",
    'info "mig\t\n',  # a bad quote: no completion
    "info name \t\n",  # nothing to complete
    "abc\x1b[1~\x05\x9b~X\n",  # 8-bit CSI: its number starts afresh
    "xy\x1b[2~\x1b[5~z\n",  # sequences QEMU ignores
    "\x1b\x1b[A\n",  # ESC ESC: the second is dropped, "[A" typed
    "\x1b[F",  # up, as QEMU reads it
    "\x1b[E\n",  # down
    "stop\x0c",  # Ctrl-L: clear the screen, prompt and line again
    "\n",
    "info \xc3\xa9\n",  # bytes as they come (UTF-8 here)
    "info sta",  # a partial line, then the client leaves
]

CASES: dict[str, dict[str, Any]] = {
    # One client typing: echo, editing keys, history, completion; then a second client finds
    # the line given up, and the history kept.
    "editing": {
        "monitor": UNIX,
        "steps": [("1", "connect")]
        + [("1", text) for text in EDITING]
        + [("1", "close"), ("2", "connect"), ("2", "tus\n"), ("2", "\x1b[A\x1b[A"), ("2", "\n")],
    },
    # One client at a time: a second one is not served until the first leaves.
    "second_client": {
        "monitor": UNIX,
        "steps": [
            ("1", "connect"),
            ("2", "connect"),
            ("2", "info status\n"),
            ("1", "info name\n"),
            ("1", "close"),
            ("2", "stop\n"),
            ("3", "connect"),
            ("2", "quit\n"),
        ],
    },
    "telnet": {
        "monitor": "telnet:127.0.0.1:{port},server=on,wait=off",
        "steps": [
            ("1", "connect"),
            ("1", IAC + DO + "\x01" + IAC + DO + "\x03"),  # the client's answers: ignored
            ("1", "info status\r\0"),  # telnet's CR NUL
            ("1", "info name\r\n"),
            ("1", "foo" + IAC + IAC + "\n"),  # IAC IAC is a 0xff byte
            ("1", "st" + IAC + BREAK + "op\n"),  # IAC BREAK: two bytes
            ("1", "co" + IAC + NOP + "xnt\n"),  # any other command: three bytes
            ("1", "quit\n"),
        ],
    },
    "tcp": {
        "monitor": "tcp:127.0.0.1:{port},server=on,wait=off",
        "steps": [("1", "connect"), ("1", "info status\n"), ("1", "quit\n")],
    },
    # wait=on: QEMU says where it waits (stderr) and starts only once a client is there.
    "wait": {
        "monitor": "unix:{sock},server=on",
        "steps": [("1", "connect"), ("1", "info status\n"), ("1", "quit\n")],
    },
    # With the monitor on a socket, stdin is nobody's: what is piped there never runs.
    "stdin_unread": {
        "monitor": UNIX,
        "stdin": "stop\n",
        "steps": [("1", "connect"), ("1", "info status\n"), ("1", "quit\n")],
    },
}


# -monitor values QEMU refuses: recorded as what it writes to stderr, and its exit status.
# {busy} is a port something else listens on.
ERRORS = [
    "unix:/nonexistent/mon.sock,server=on,wait=off",
    "tcp:127.0.0.1:{busy},server=on,wait=off",
    "tcp:127.0.0.1,server=on,wait=off",
    "foo:bar",
    "stdio,foo",
    "unix:{sock},server=on,wait=off,bogus=1",
    "unix:{sock},server=on,wait=maybe",
]


def record_error(spec: str, scratch: str) -> dict[str, Any]:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        sock = os.path.join(scratch, "mon.sock")
        text = spec.format(sock=sock, busy=port)
        proc = subprocess.run(
            [*QEMU, "-monitor", text], stdin=subprocess.DEVNULL, capture_output=True, timeout=20
        )
    stderr = proc.stderr.decode().replace(sock, "{sock}").replace(str(port), "{busy}")
    return {"monitor": spec, "stderr": stderr, "exit": proc.returncode}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Session:
    def __init__(self, spec: str, stdin: str | None, scratch: str) -> None:
        self.path = os.path.join(scratch, "mon.sock")
        self.port = _free_port()
        self.spec = spec.format(sock=self.path, port=self.port)
        self.proc = subprocess.Popen(
            [*QEMU, "-monitor", self.spec],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdin is not None
        if stdin is not None:
            self.proc.stdin.write(stdin.encode())
            self.proc.stdin.flush()
        self.clients: dict[str, socket.socket] = {}
        self.eof: set[str] = set()
        self.stderr = self._stderr_until_listening(spec)

    def _stderr_until_listening(self, spec: str) -> str:
        """Wait for the socket; with wait=on also for QEMU's line saying so."""
        assert self.proc.stderr is not None
        waits = "wait=off" not in spec
        text = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if waits and select.select([self.proc.stderr], [], [], 0.1)[0]:
                text += os.read(self.proc.stderr.fileno(), 4096)
                if text.endswith(b"\n"):
                    return text.decode()
            elif not waits and self._listening():
                return ""
            time.sleep(0.05)
        raise TimeoutError(spec)

    def _listening(self) -> bool:
        try:
            self._connect().close()
        except OSError:
            return False
        # That probe was QEMU's first client: let it see the hang-up before the real ones.
        time.sleep(QUIET_S)
        return True

    def _connect(self) -> socket.socket:
        if self.spec.startswith("unix:"):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(self.path)
            return sock
        return socket.create_connection(("127.0.0.1", self.port))

    def act(self, client: str, action: str) -> dict[str, Any]:
        if action == "connect":
            self.clients[client] = self._connect()
        elif action == "close":
            self.clients.pop(client).close()
        else:
            self.clients[client].sendall(action.encode("latin-1"))
        recv = {name: data for name, data in self._quiet().items() if data}
        step: dict[str, Any] = {"client": client, "action": action, "recv": recv}
        ended = sorted(name for name in self.clients if name in self.eof)
        if ended:
            step["eof"] = ended
            for name in ended:
                self.clients.pop(name).close()
        return step

    def _quiet(self) -> dict[str, str]:
        got = {name: b"" for name in self.clients}
        while True:
            live = [s for n, s in self.clients.items() if n not in self.eof]
            ready = select.select(live, [], [], QUIET_S)[0] if live else []
            if not ready:
                return {name: data.decode("latin-1") for name, data in got.items()}
            for name, sock in self.clients.items():
                if sock in ready:
                    try:
                        chunk = sock.recv(65536)
                    except ConnectionResetError:
                        print(f"client {name}: connection reset")
                        chunk = b""
                    if chunk:
                        got[name] += chunk
                    else:
                        self.eof.add(name)

    def finish(self) -> dict[str, Any]:
        try:
            status = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = None
        return {"exit": status, "sock_left": os.path.exists(self.path)}


def record(case: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        session = Session(case["monitor"], case.get("stdin"), scratch)
        try:
            steps = [session.act(client, action) for client, action in case["steps"]]
        finally:
            for sock in session.clients.values():
                sock.close()
        end = session.finish()
    out = {"monitor": case["monitor"], "stderr": session.stderr.replace(session.path, "{sock}")}
    if "stdin" in case:
        out["stdin"] = case["stdin"]
    return {**out, "steps": steps, **end}


def main() -> None:
    cases = {}
    for name, case in CASES.items():
        print(name)
        cases[name] = record(case)
    with tempfile.TemporaryDirectory() as scratch:
        errors = [record_error(spec, scratch) for spec in ERRORS]
    data = {"qemu": QEMU[1:], "cases": cases, "errors": errors}
    (HERE / "monitor_socket.json").write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
