"""Record QEMU QMP sessions as oracle data (used by tests/data/qmp/ and tests/data/qemu-*/qmp/).

A session starts QEMU with ``-qmp unix:SOCK,server=on,wait=off``, connects, and is stored as
JSON lines: first ``{"argv": [...]}``, then ``{"greeting": ...}``, then for each raw text sent
``{"send": TEXT}`` followed by every message QEMU wrote back, ``{"recv": MSG}`` (replies and
events alike, in arrival order). Raw text, not objects, so malformed JSON can be recorded too.
A session of two QEMUs (``Pair``) adds ``{"endpoint": "src"|"dst"}`` lines that switch
between them, and ``{"note": TEXT}`` lines for what the recorder did meanwhile (killed one).
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

NEG = '{"execute": "qmp_capabilities"}\n'
Record = dict[str, Any]

_NO_ID = object()


def x(cmd: str, args: dict[str, Any] | None = None, id: Any = _NO_ID) -> str:
    """One command's text."""
    msg: dict[str, Any] = {"execute": cmd}
    if args is not None:
        msg["arguments"] = args
    if id is not _NO_ID:
        msg["id"] = id
    return json.dumps(msg) + "\n"


def caps(**states: bool) -> dict[str, Any]:
    """migrate-set-capabilities' arguments (``auto_converge=True`` is ``auto-converge``)."""
    return {
        "capabilities": [{"capability": k.replace("_", "-"), "state": v} for k, v in states.items()]
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Qemu:
    """One QEMU with a QMP socket; ``send`` returns what it answered until it went quiet."""

    def __init__(self, qemu: list[str], args: list[str], workdir: str, name: str = "q") -> None:
        path = os.path.join(workdir, f"{name}.sock")
        self.argv = [*args, "-qmp", "unix:SOCK,server=on,wait=off"]
        self.proc = subprocess.Popen(
            [*qemu, *args, "-qmp", f"unix:{path},server=on,wait=off"],
            stderr=subprocess.DEVNULL,
        )
        self.sock = socket.socket(socket.AF_UNIX)
        deadline = time.monotonic() + 10
        while True:  # the path appears at bind(), before QEMU listens: refused until then
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise TimeoutError(path) from None
                time.sleep(0.02)
        self.buf = b""
        self.greeting = json.loads(next(self.read(first=10.0)))

    def read(self, first: float = 2.0, quiet: float = 0.3) -> Iterator[str]:
        """Lines (CRLF dropped) until ``quiet`` s pass without one (``first`` s for the first)."""
        wait = first
        while True:
            while b"\r\n" in self.buf:
                line, self.buf = self.buf.split(b"\r\n", 1)
                wait = quiet
                yield line.decode()
            if not select.select([self.sock], [], [], wait)[0]:
                return
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:  # after `quit`
                return
            if not chunk:
                return
            self.buf += chunk

    def send(self, text: str, first: float = 2.0) -> list[str]:
        """``first``: how long the first answer may take (QEMU reads huge inputs a byte a turn)."""
        self.sock.sendall(text.encode("utf-8", "surrogateescape"))
        return list(self.read(first))

    def close(self) -> None:
        self.sock.close()
        self.proc.kill()
        self.proc.wait()


def run(
    qemu: list[str], args: list[str], sends: list[str], raw: bool = False, parent: str | None = None
) -> list[Record]:
    """One session; with ``raw``, each message's exact line too (to check the serializer)."""
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        q = Qemu(qemu, args, tmp)
        out: list[Record] = [{"argv": q.argv}, {"greeting": q.greeting}]
        try:
            for text in sends:
                out.append({"send": text})
                for line in q.send(text):
                    out.append({"recv": json.loads(line), **({"raw": line} if raw else {})})
        finally:
            q.close()
    return out


class Pair:
    """Two QEMUs (or more), each named; every step is recorded in ``out``."""

    def __init__(self, qemu: list[str], workdir: str) -> None:
        self.qemu = qemu
        self.workdir = workdir
        self.ends: dict[str, Qemu] = {}
        self.out: list[Record] = []
        self.unseen: dict[str, list[Record]] = {}  # what each sent that ``expect`` has not seen

    def start(self, name: str, args: list[str]) -> None:
        self.ends[name] = end = Qemu(self.qemu, args, self.workdir, name)
        self.out.append({"endpoint": name, "argv": end.argv})
        self.out.append({"greeting": end.greeting})

    def step(self, name: str, text: str) -> list[Any]:
        self.out.append({"endpoint": name})
        self.out.append({"send": text})
        got = [json.loads(line) for line in self.ends[name].send(text)]
        self.out.extend({"recv": m} for m in got)
        self.unseen.setdefault(name, []).extend(got)
        return got

    def poll_migrate(self, name: str, until: tuple[str, ...], timeout: float = 60) -> None:
        """query-migrate at ``name`` until its status is one of ``until`` (each poll recorded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.step(name, x("query-migrate"))
            if any(m.get("return", {}).get("status") in until for m in got):
                return
        raise TimeoutError(f"{name}: query-migrate never reached {until}")

    def expect(self, name: str, until: Callable[[Record], bool], timeout: float = 60) -> Record:
        """The first message ``until`` picks among those ``name`` sent since the last one
        picked (replies and events a ``step`` read included), reading events as they come."""
        unseen = self.unseen.setdefault(name, [])
        while unseen:
            if until(msg := unseen.pop(0)):
                return msg
        self.out.append({"endpoint": name})
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self.ends[name].proc.poll() is not None:
                raise EOFError(f"{name} exited")
            for line in self.ends[name].read(first=left, quiet=0):
                self.out.append({"recv": (msg := json.loads(line))})
                if until(msg):
                    return msg
        raise TimeoutError(f"{name}: nothing expected arrived in {timeout} s")

    def kill(self, name: str) -> None:
        """SIGKILL ``name`` (noted); what it had sent before stays unread."""
        self.ends[name].proc.kill()
        self.ends[name].proc.wait()
        self.out.append({"note": f"SIGKILL {name}"})

    def close(self) -> None:
        for end in self.ends.values():
            end.close()

    def __enter__(self) -> Pair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write(path: Path, records: list[Record]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def pair_migration(
    qemu: list[str], capabilities: dict[str, Any], parent: str | None = None
) -> list[Record]:
    """src -> dst over TCP with ``capabilities`` on both sides, slow enough that query-migrate
    (polled until the end) also sees it active; then each side's query-migrate and status."""
    port = free_port()
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        with Pair(qemu, tmp) as pair:
            argv = {"dst": ["-m", "128", "-incoming", f"tcp:127.0.0.1:{port}"]}
            argv["src"] = ["-m", "128"]
            for name in ("dst", "src"):
                pair.start(name, argv[name])
                pair.step(name, NEG)
                pair.step(name, x("migrate-set-capabilities", capabilities))
                pair.step(name, x("query-migrate"))
            # 128 KiB/s: QEMU 7.2 takes ~4 s for an idle 128 MiB guest.
            pair.step("src", x("migrate-set-parameters", {"max-bandwidth": 131072}))
            pair.step("src", x("migrate", {"uri": f"tcp:127.0.0.1:{port}"}))
            pair.poll_migrate("src", ("completed", "failed"))
            for name in ("src", "dst"):
                pair.step(name, x("query-migrate"))
                pair.step(name, x("query-status"))
    return pair.out


def schema(q: Qemu, wanted: Callable[[str], bool]) -> dict[str, Any]:
    """The commands and events ``wanted`` picks from query-qmp-schema, each type inlined
    (introspection numbers types it does not name), in QEMU's member order."""
    (reply,) = (json.loads(line) for line in q.send(x("query-qmp-schema")))
    entities = {e["name"]: e for e in reply["return"]}
    picked: dict[str, Any] = {"commands": {}, "events": {}}
    for e in reply["return"]:
        if e["meta-type"] in ("command", "event") and wanted(e["name"]):
            kind = "commands" if e["meta-type"] == "command" else "events"
            picked[kind][e["name"]] = {
                key: _inline(entities, e[key], ()) for key in ("arg-type", "ret-type") if key in e
            } | ({"features": e["features"]} if e.get("features") else {})
    return picked


def _inline(entities: dict[str, Any], name: str, outer: tuple[str, ...]) -> Any:
    e = entities[name]
    if name in outer:  # a recursive type: named once
        return f"(recursive {name})"
    within = (*outer, name)
    kind = e["meta-type"]
    if kind == "builtin":
        return name
    if kind == "enum":
        out: dict[str, Any] = {"enum": e["values"]}
    elif kind == "array":
        out = {"array": _inline(entities, e["element-type"], within)}
    elif kind == "alternate":
        out = {"alternate": [_inline(entities, m["type"], within) for m in e["members"]]}
    else:
        out = {"members": [_member(entities, m, within) for m in e["members"]]}
        if "tag" in e:
            out["tag"] = e["tag"]
            out["variants"] = {
                v["case"]: _inline(entities, v["type"], within) for v in e["variants"]
            }
    return out | ({"features": e["features"]} if e.get("features") else {})


def _member(entities: dict[str, Any], m: dict[str, Any], outer: tuple[str, ...]) -> dict[str, Any]:
    out = {"name": m["name"], "type": _inline(entities, m["type"], outer)}
    if "default" in m:
        out["optional"] = True
    return out | ({"features": m["features"]} if m.get("features") else {})
