"""Re-record the QEMU 7.2 QMP oracle: ``python tests/data/qmp/record.py [CASE...]``.

Each case starts ``qemu-system-x86_64 ... -qmp unix:SOCK,server=on,wait=off``, connects, and
writes CASE.jsonl: the first line ``{"argv": [...]}``, then ``{"greeting": ...}``, then for each
raw text sent ``{"send": TEXT}`` followed by every message QEMU wrote back, ``{"recv": MSG}``
(replies and events alike, in arrival order). Raw text, not objects, so malformed JSON can be
recorded too; a text too big to store is ``{"prefix", "fill", "count", "suffix"}`` (`expand`).
Cases in `RAW` also keep each message's exact line (``"raw"``), for byte-for-byte checks. The
``migration`` case drives two QEMUs (``{"endpoint": "src"|"dst"}`` lines switch between them)
through a compressed migration with events on. The ``client`` case is qemu-hmp's own QMP
client (hmp/harness/qmp_client.py) driving QEMU through a tap that writes each line either
way as it passes (``{"send": TEXT}``, ``{"recv": MSG, "raw": LINE}``), then
``{"closed": true}`` when QEMU hung up.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hmp.harness.qmp_client import QmpClient, QmpClientError, listening_uri

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from qmp_recorder import NEG, Qemu, caps  # noqa: E402
from qmp_recorder import x as _x  # noqa: E402

QEMU = ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-display", "none", "-nodefaults"]


def big(prefix: str, fill: str, count: int, suffix: str) -> dict[str, Any]:
    """A send of ``prefix + fill * count + suffix``, stored as its recipe."""
    return {"prefix": prefix, "fill": fill, "count": count, "suffix": suffix}


def expand(send: str | dict[str, Any]) -> str:
    if isinstance(send, str):
        return send
    return send["prefix"] + send["fill"] * send["count"] + send["suffix"]


def _recv(line: str, raw: bool) -> dict[str, Any]:
    return {"recv": json.loads(line), **({"raw": line} if raw else {})}


def run(args: list[str], sends: list[Any], raw: bool = False) -> list[dict[str, Any]]:
    """One session; with ``raw``, each message's exact line too (to check the serializer)."""
    with tempfile.TemporaryDirectory() as tmp:
        q = Qemu(QEMU, args, tmp)
        out: list[dict[str, Any]] = [{"argv": q.argv}, {"greeting": q.greeting}]
        try:
            for send in sends:
                out.append({"send": send})
                # QEMU reads a byte per main-loop turn: a big send takes a minute or more.
                first = 2.0 if isinstance(send, str) else 900.0
                out.extend(_recv(line, raw) for line in q.send(expand(send), first))
        finally:
            q.close()
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def migration() -> list[dict[str, Any]]:
    """src -> dst over TCP, compress and events on both sides; poll query-migrate until done.

    Every message keeps its exact line (``"raw"``): the layout of query-migrate's answers."""
    port = _free_port()
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        dst = Qemu(QEMU, ["-m", "128", "-incoming", f"tcp:127.0.0.1:{port}"], tmp, "dst")
        src = Qemu(QEMU, ["-m", "128"], tmp, "src")
        ends = {"src": src, "dst": dst}

        def step(name: str, text: str) -> list[Any]:
            out.append({"endpoint": name})
            out.append({"send": text})
            got = [_recv(line, raw=True) for line in ends[name].send(text)]
            out.extend(got)
            return [m["recv"] for m in got]

        try:
            for name in ("dst", "src"):
                out.append({"endpoint": name, "argv": ends[name].argv})
                out.append({"greeting": ends[name].greeting})
                step(name, NEG)
                step(name, _x("migrate-set-capabilities", caps(compress=True, events=True)))
                step(name, _x("query-migrate"))
            # Slow enough (~4 s) that the polls below also see the active state.
            step("src", _x("migrate-set-parameters", {"max-bandwidth": 131072}))
            step("src", _x("migrate", {"uri": f"tcp:127.0.0.1:{port}"}))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                got = step("src", _x("query-migrate"))
                if any(m.get("return", {}).get("status") in ("completed", "failed") for m in got):
                    break
            for name in ("src", "dst"):
                step(name, _x("query-migrate"))
                step(name, _x("query-status"))
        finally:
            src.close()
            dst.close()
    return out


class Tap:
    """A unix socket in front of ``target`` that records every line passing either way."""

    def __init__(self, path: str, target: str) -> None:
        self.path, self.target = path, target
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(path)
        self._server.listen(1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        client, _ = self._server.accept()
        qemu = socket.socket(socket.AF_UNIX)
        qemu.connect(self.target)
        to_qemu = threading.Thread(target=self._pump, args=(client, qemu, "send"), daemon=True)
        to_qemu.start()
        self._pump(qemu, client, "recv")
        client.close()

    def _pump(self, src: socket.socket, dst: socket.socket, key: str) -> None:
        buf = b""
        while chunk := src.recv(65536):
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                with self._lock:
                    if key == "send":
                        self.records.append({"send": line.decode() + "\n"})
                    else:
                        text = line.decode().removesuffix("\r")
                        self.records.append({"recv": json.loads(text), "raw": text})
                dst.sendall(line + b"\n")
        if key == "recv":
            with self._lock:
                self.records.append({"closed": True})

    def join(self) -> None:
        self._thread.join(10)


def client() -> list[dict[str, Any]]:
    """qemu-hmp's QmpClient against QEMU: queries, an event before a reply, errors, quit."""
    args = ["-m", "128", "-incoming", "defer"]
    with tempfile.TemporaryDirectory() as tmp:
        q = Qemu(QEMU, args, tmp)  # its own session is the first; QEMU serves one client at a time
        q.sock.close()
        tap = Tap(os.path.join(tmp, "tap.sock"), os.path.join(tmp, "q.sock"))
        try:
            with QmpClient(tap.path) as c:
                c.execute("query-status")
                c.execute("query-migrate")
                c.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
                print(listening_uri(c.execute("query-migrate")))
                for bad in (("no-such-command", None), ("migrate-set-parameters", {"x": 1})):
                    try:
                        c.execute(*bad)
                    except QmpClientError as err:
                        print(err)
                c.execute("quit")
                tap.join()
        finally:
            q.proc.wait(10)
    return [{"argv": q.argv}, *tap.records]


S = ["-m", "128", "-S"]
SET_PARAMS = [
    {"compress-level": 9, "compress-threads": 12, "decompress-threads": 3},
    {"compress-wait-thread": False, "max-bandwidth": 1048576, "downtime-limit": 500},
    {"tls-creds": "x"},
    {"compress-level": 10},
    {"compress-level": 256},
    {"compress-level": -1},
    {"compress-level": 1.5},
    {"compress-level": "1"},
    {"compress-threads": 0},
    {"downtime-limit": 2000001},
    {"compress-wait-thread": 1},
    {"multifd-compression": "lz4"},
    {"max-cpu-throttle": 10},
    {"no-such-param": 1},
    {"block-bitmap-mapping": []},
    {"max-bandwidth": "x"},
    {"max-bandwidth": 1.5},
    {"max-bandwidth": 18446744073709551616},
    {"downtime-limit": "x"},
    {"x-checkpoint-delay": 4294967296},
    {"compress-wait-thread": "true"},
    {"tls-creds": 5},
    {"multifd-compression": 5},
    {"tls-creds": None, "tls-hostname": None},
    {},
    {"compress-level": 5, "compress-threads": 0},
]
SET_CAPS: list[Any] = [
    caps(compress=True, auto_converge=True),
    caps(multifd=True),
    {"capabilities": [{"capability": "foo", "state": True}]},
    {"capabilities": [{"capability": "compress"}]},
    {"capabilities": [{"capability": "compress", "state": "on"}]},
    {"capabilities": [{"capability": "compress", "state": True, "x": 1}]},
    {"capabilities": {}},
    {"capabilities": [1]},
    {"capabilities": [{"capability": 5, "state": True}]},
    {"capabilities": [{"state": True}]},
    {},
    caps(compress=False),
]

CASES: dict[str, tuple[list[str], list[str]]] = {
    "protocol": (
        S,
        [
            _x("query-status", id=1),
            _x("qmp_capabilities", {"enable": ["foo"]}),
            _x("qmp_capabilities", id="neg"),
            _x("qmp_capabilities"),
            _x("query-status", id={"a": [1, "b"]}),
            _x("query-status", id=None),
            _x("query-version"),
            _x("no-such-command", id=7),
            _x("query-status", {"x": 1}),
            _x("migrate"),
            _x("migrate", {"uri": 5}),
            _x("migrate-incoming", {"uri": True}),
            _x("human-monitor-command", {"command-line": "info status", "cpu-index": "0"}),
            _x("human-monitor-command", {"command-line": "info status", "cpu-index": 5}),
            _x("migrate", {"uri": "tcp:127.0.0.1:1", "blk": 1}),
            _x("stop", {"a": 1}),
            _x("query-commands", {}),
            _x("migrate-set-parameters"),
            "[1]\n",
            '"str"\n',
            "true\n",
            '{"id": 3}\n',
            '{"execute": 1}\n',
            '{"execute": "query-status", "foo": 1}\n',
            '{"execute": "query-status", "arguments": []}\n',
            '{"execute": "query-status", "arguments": null}\n',
            '{"exec-oob": "query-status"}\n',
            '{"execute": "query-status",}\n',
            '{"execute": "query-status"]\n',
            '{"execute": "query-status", "execute": "stop"}\n',
            "{bad}\n",
            '{"a" 1}\n',
            "{1: 2}\n",
            "[1 2]\n",
            '{"a": "\\q"}\n',
            '{"a": "\\u12"}\n',
            '{"a": 01}\n',
            '{"a": @}\n',
            '@abc {"execute": "query-status", "id": 1}\n',
            "}\n",
            "{'execute': 'query-status', 'id': 'single'}\n",
            '{"execute": "query-status", "id": 1}{"execute": "query-name", "id": 2}\n',
            '{"execute":\n "query-status", "id": "split"}\n',
            '{"execute": "query-status", "id": "\\u00e9\\u0001"}\n',
        ],
    ),
    "oob": (
        S,
        [
            _x("qmp_capabilities", {"enable": ["oob"]}),
            '{"exec-oob": "query-status", "id": 1}\n',
            '{"exec-oob": "no-such-command"}\n',
            '{"execute": "query-status", "exec-oob": "query-status"}\n',
            _x("query-status", id=2),
        ],
    ),
    "config": (
        S,
        [
            NEG,
            _x("query-migrate"),
            _x("query-migrate-capabilities"),
            _x("query-migrate-parameters"),
            *(_x("migrate-set-parameters", p) for p in SET_PARAMS),
            *(_x("migrate-set-capabilities", c) for c in SET_CAPS),
            _x("query-migrate-capabilities"),
            _x("query-migrate-parameters"),
        ],
    ),
    "runstate": (
        S,
        [
            NEG,
            _x("query-status"),
            _x("stop"),
            _x("cont"),
            _x("query-status"),
            _x("cont"),
            _x("stop"),
            _x("stop"),
            _x("query-status"),
            _x("quit"),
        ],
    ),
    "hmp": (
        S,
        [
            NEG,
            *(
                _x("human-monitor-command", {"command-line": line})
                for line in (
                    "info status",
                    "info migrate_capabilities",
                    "info migrate",
                    "migrate_set_parameter compress-level 10",
                    "migrate_set_capability compress maybe",
                    "bogus",
                    "",
                    "stop",
                    "migrate tcp:127.0.0.1:1",
                )
            ),
            _x("human-monitor-command", {}),
            _x("query-status"),
            _x("human-monitor-command", {"command-line": "quit"}),
        ],
    ),
    "incoming": (
        ["-m", "128", "-incoming", "defer"],
        [
            NEG,
            _x("query-status"),
            _x("query-migrate"),
            _x("migrate", {"uri": "tcp:127.0.0.1:1"}),
            _x("migrate-incoming", {"uri": "foo:bar"}),
            _x("migrate-incoming", {"uri": "tcp:127.0.0.1:0"}),
            _x("query-migrate"),
            _x("migrate-incoming", {"uri": "tcp:127.0.0.1:0"}),
            _x("stop"),
            _x("cont"),
        ],
    ),
    "outgoing_errors": (
        S,
        [
            NEG,
            _x("migrate_cancel"),
            _x("migrate-incoming", {"uri": "tcp:127.0.0.1:0"}),
            _x("migrate", {"uri": "foo:bar"}),
            _x("query-migrate"),
            _x("migrate", {"uri": "tcp:127.0.0.1:1"}),
            _x("query-migrate"),
            _x("migrate_cancel"),
        ],
    ),
    # migrate's blk/inc/resume checks, in QEMU's order (qemu-hmp has them in Machine.migrate).
    "migrate_flags": (
        ["-m", "128"],
        [
            NEG,
            _x("migrate", {"uri": "foo:bar", "resume": True, "blk": True}),
            _x("migrate-set-capabilities", caps(block=True)),
            _x("migrate", {"uri": "tcp:127.0.0.1:1", "inc": True}),
            _x("migrate-set-capabilities", caps(block=False)),
            _x("migrate-set-parameters", {"block-incremental": True}),
            _x("migrate", {"uri": "tcp:127.0.0.1:1", "blk": True}),
            _x("migrate-set-parameters", {"block-incremental": False}),
            _x("migrate-set-capabilities", caps(x_colo=True, block=True)),
            _x("migrate", {"uri": "tcp:127.0.0.1:1", "blk": True, "inc": True}),
            _x("migrate-set-capabilities", caps(x_colo=False, block=False)),
            _x("migrate", {"uri": "foo:bar", "blk": True}),
            _x("query-migrate"),
        ],
    ),
    "commands": (S, [NEG, _x("query-commands")]),
    "bytes": (
        S,
        [
            NEG,
            *(
                _x("query-name", id=i)
                for i in (1, 1.0, 0.1, -0.0, 1e300, 2**63, -(2**63) - 1, True, None, [], {})
            ),
            '{"execute": "query-name", "id": "a/b\\u007f<\\ud83d\\ude00\\t\\"\\\\\\u00e9"}\n',
            _x("query-name", id={"k": [1, "x", None]}),
            _x("migrate-set-parameters", {"x": 1}, id="e"),
        ],
    ),
}


# QEMU's json-streamer limits (64 MiB of tokens, 2 Mi tokens, nesting 1024) and what its
# lexer does around them (the deepest value allowed is left to the unit tests: its reply is
# deeper than Python's json module reads). The token-count sends hold 15 tokens besides the
# fill's pairs.
_ARG_X = '{"execute": "query-status", "arguments": {"x": '
_HOSTNAME = '{"execute": "migrate-set-parameters", "arguments": {"tls-hostname": "'
CASES["limits"] = (
    S,
    [
        NEG,
        "[" * 1025 + "]" * 1025 + "\n",
        '{"execute": "query-status", "id": ' + "[" * 1024 + "]" * 1024 + "}\n",
        big(_ARG_X + "[", "1, ", (1 << 20) - 8, "1]}}\n"),  # 2 Mi - 1 tokens
        big(_ARG_X + "[", "1, ", (1 << 20) - 7, "1]}}\n"),  # 2 Mi + 1: the last one fails
        big(_ARG_X + "[", "1, ", 1 << 20, "1]}}\n"),
        big(_HOSTNAME, "a", 10 << 20, '"}}\n'),
        _x("query-name", id="after 10 MiB"),
        big(_ARG_X + '"', "a", (64 << 20) + 3, '"}}\n'),  # one token over 64 MiB
        big(_ARG_X + "[", '"' + "a" * 1022 + '", ', 65500, "1]}}\n"),  # 64 MiB of tokens
        _x("query-name", id="after 64 MiB"),
    ],
)
# The lexer byte by byte: what is an error in a string, where recovery after one ends.
CASES["lexer"] = (
    S,
    [
        NEG,
        "\u00e9\n",
        '"a\udcffb"\n',
        '"a\udcfe"\n',
        '"a\\\udcff"\n',
        '{"execute": "query-name", "id": "\u00e9\udcc3"}\n',
        '{"execute": "query-name", "id": "\udcc0\udc80"}\n',
        '{"execute": "query-name", "id": "\udced\udca0\udc80"}\n',
        '{"execute": "query-name", "id": "\u00e9\u4e2d\U0001f600"}\n',
        "@\udcff5\n",
        "@\udcfe5\n",
        "@\t5\n",
        "@\udcc35\n",
        "@\x7f5\n",
        "5\udcff\n",
        "[}]\n",
        '{"a": 1]}\n',
        "-\n",  # the stray token takes the line end: recovery lasts to the next one
        "1.e5\n",
        "1e+\n",
        "\n",
        "00\n",
        "[00]\n",
        "[-]\n",
        "-0.5e-3 \n",
        '"\udcc0\udc80\x01"\n',  # a stray string's C0 80 is printed as U+0000
        '"a\udcc0\udc80\udcff"\n',
    ],
)
# MIGRATION events around a migrate that fails at once, that fails to connect, and through
# HMP (whose migrate there goes on detached), with events on and off; then the incoming side,
# which announces setup whether events are on or not.
_HMP_LINE = "human-monitor-command"
CASES["events"] = (
    S,
    [
        NEG,
        _x("migrate", {"uri": "tcp:127.0.0.1:1", "resume": True}),  # before migrate_init
        _x("migrate", {"uri": "foo:bar"}),  # events off
        _x("migrate-set-capabilities", caps(events=True)),
        *(_x("migrate", {"uri": uri}) for uri in ("foo:bar", "tcp:127.0.0.1", "bogus", "")),
        _x("query-migrate"),
        _x("migrate", {"uri": "tcp:127.0.0.1:1"}),
        _x("query-migrate"),
        *(
            _x(_HMP_LINE, {"command-line": line})
            for line in (
                "migrate foo:bar",
                'migrate ""',
                "migrate tcp:127.0.0.1:1",
                "migrate -d tcp:127.0.0.1:1",
                "info migrate",
            )
        ),
        _x("stop"),
        _x("cont"),
    ],
)
CASES["incoming_events"] = (
    ["-m", "128", "-incoming", "defer"],
    [
        NEG,
        _x("migrate-incoming", {"uri": "foo:bar"}),
        _x("migrate-incoming", {"uri": "tcp:127.0.0.1"}),
        _x("migrate-set-capabilities", caps(events=True)),
        _x(_HMP_LINE, {"command-line": "migrate_incoming foo:bar"}),
        _x(_HMP_LINE, {"command-line": "migrate_incoming tcp:127.0.0.1:0"}),
        _x("query-migrate"),
        _x("migrate-incoming", {"uri": "tcp:127.0.0.1:0"}),
        _x("query-status"),
    ],
)
# Every reply shape as QEMU lays it out (its QDict's order), byte for byte.
CASES["keyorder"] = (
    S,
    [
        NEG,
        _x("query-status", id=1),
        _x("query-migrate-capabilities"),
        _x("query-migrate-parameters"),
        _x("query-migrate"),
        _x("query-version"),
        _x("no-such-command", id="x"),
        _x("migrate-set-parameters", {"compress-level": 10}, id=2),
        _x("query-name", id={"b": 1, "a": 2, "status": 3, "singlestep": 4, "id": 5}),
        _x("migrate", {"uri": "tcp:127.0.0.1:1"}),
        _x("query-migrate"),
    ],
)
RAW = {"bytes", "limits", "lexer", "events", "incoming_events", "keyorder"}


def main() -> None:
    names = sys.argv[1:] or [*CASES, "migration", "client"]
    recorders = {"migration": migration, "client": client}
    for name in names:
        if name in recorders:
            records = recorders[name]()
        else:
            records = run(*CASES[name], raw=name in RAW)
        with open(HERE / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        print(name)


if __name__ == "__main__":
    main()
