"""Re-record the QEMU 7.2 QMP oracle: ``python tests/data/qmp/record.py [CASE...]``.

Each case starts ``qemu-system-x86_64 ... -qmp unix:SOCK,server=on,wait=off`` and writes
CASE.jsonl in the format tests/data/qmp_recorder.py describes. The ``migration`` case drives
two QEMUs (``{"endpoint": "src"|"dst"}`` lines switch between them) through a compressed
migration with events on.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from qmp_recorder import NEG, Record, caps, pair_migration, run, write, x

HERE = Path(__file__).parent
QEMU = ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-display", "none", "-nodefaults"]


def migration() -> list[Record]:
    """src -> dst over TCP, compress and events on both sides; poll query-migrate until done."""
    return pair_migration(QEMU, caps(compress=True, events=True))


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
            x("query-status", id=1),
            x("qmp_capabilities", {"enable": ["foo"]}),
            x("qmp_capabilities", id="neg"),
            x("qmp_capabilities"),
            x("query-status", id={"a": [1, "b"]}),
            x("query-status", id=None),
            x("query-version"),
            x("no-such-command", id=7),
            x("query-status", {"x": 1}),
            x("migrate"),
            x("migrate", {"uri": 5}),
            x("migrate-incoming", {"uri": True}),
            x("human-monitor-command", {"command-line": "info status", "cpu-index": "0"}),
            x("human-monitor-command", {"command-line": "info status", "cpu-index": 5}),
            x("migrate", {"uri": "tcp:127.0.0.1:1", "blk": 1}),
            x("stop", {"a": 1}),
            x("query-commands", {}),
            x("migrate-set-parameters"),
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
            x("qmp_capabilities", {"enable": ["oob"]}),
            '{"exec-oob": "query-status", "id": 1}\n',
            '{"exec-oob": "no-such-command"}\n',
            '{"execute": "query-status", "exec-oob": "query-status"}\n',
            x("query-status", id=2),
        ],
    ),
    "config": (
        S,
        [
            NEG,
            x("query-migrate"),
            x("query-migrate-capabilities"),
            x("query-migrate-parameters"),
            *(x("migrate-set-parameters", p) for p in SET_PARAMS),
            *(x("migrate-set-capabilities", c) for c in SET_CAPS),
            x("query-migrate-capabilities"),
            x("query-migrate-parameters"),
        ],
    ),
    "runstate": (
        S,
        [
            NEG,
            x("query-status"),
            x("stop"),
            x("cont"),
            x("query-status"),
            x("cont"),
            x("stop"),
            x("stop"),
            x("query-status"),
            x("quit"),
        ],
    ),
    "hmp": (
        S,
        [
            NEG,
            *(
                x("human-monitor-command", {"command-line": line})
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
            x("human-monitor-command", {}),
            x("query-status"),
            x("human-monitor-command", {"command-line": "quit"}),
        ],
    ),
    "incoming": (
        ["-m", "128", "-incoming", "defer"],
        [
            NEG,
            x("query-status"),
            x("query-migrate"),
            x("migrate", {"uri": "tcp:127.0.0.1:1"}),
            x("migrate-incoming", {"uri": "foo:bar"}),
            x("migrate-incoming", {"uri": "tcp:127.0.0.1:0"}),
            x("query-migrate"),
            x("migrate-incoming", {"uri": "tcp:127.0.0.1:0"}),
            x("stop"),
            x("cont"),
        ],
    ),
    "outgoing_errors": (
        S,
        [
            NEG,
            x("migrate_cancel"),
            x("migrate-incoming", {"uri": "tcp:127.0.0.1:0"}),
            x("migrate", {"uri": "foo:bar"}),
            x("query-migrate"),
            x("migrate", {"uri": "tcp:127.0.0.1:1"}),
            x("query-migrate"),
            x("migrate_cancel"),
        ],
    ),
    # migrate's blk/inc/resume checks, in QEMU's order (qemu-hmp has them in Machine.migrate).
    "migrate_flags": (
        ["-m", "128"],
        [
            NEG,
            x("migrate", {"uri": "foo:bar", "resume": True, "blk": True}),
            x("migrate-set-capabilities", caps(block=True)),
            x("migrate", {"uri": "tcp:127.0.0.1:1", "inc": True}),
            x("migrate-set-capabilities", caps(block=False)),
            x("migrate-set-parameters", {"block-incremental": True}),
            x("migrate", {"uri": "tcp:127.0.0.1:1", "blk": True}),
            x("migrate-set-parameters", {"block-incremental": False}),
            x("migrate-set-capabilities", caps(x_colo=True, block=True)),
            x("migrate", {"uri": "tcp:127.0.0.1:1", "blk": True, "inc": True}),
            x("migrate-set-capabilities", caps(x_colo=False, block=False)),
            x("migrate", {"uri": "foo:bar", "blk": True}),
            x("query-migrate"),
        ],
    ),
    "commands": (S, [NEG, x("query-commands")]),
    "bytes": (
        S,
        [
            NEG,
            *(
                x("query-name", id=i)
                for i in (1, 1.0, 0.1, -0.0, 1e300, 2**63, -(2**63) - 1, True, None, [], {})
            ),
            '{"execute": "query-name", "id": "a/b\\u007f<\\ud83d\\ude00\\t\\"\\\\\\u00e9"}\n',
            x("query-name", id={"k": [1, "x", None]}),
            x("migrate-set-parameters", {"x": 1}, id="e"),
        ],
    ),
}


def main() -> None:
    names = sys.argv[1:] or [*CASES, "migration"]
    for name in names:
        records = (
            migration() if name == "migration" else run(QEMU, *CASES[name], raw=name == "bytes")
        )
        write(HERE / f"{name}.jsonl", records)
        print(name)


if __name__ == "__main__":
    main()
