"""Re-record the QEMU 11.1 QMP oracle: ``python tests/data/qemu-11.1/qmp/record.py [CASE...]``.

Each case starts ``qemu11-system-x86_64 ... -qmp unix:SOCK,server=on,wait=off`` (QEMU 11.1 in
the trixie chroot; sockets under /tmp/qemu11, the path it shares with this machine) and writes
CASE.jsonl in the format tests/data/qmp_recorder.py describes. The cases of the 7.2 recorder
(tests/data/qmp/record.py) run unchanged, so each 11.1 answer sits beside 7.2's; then this
version's own: ``session`` (the greeting, queries, 7.2-only names), ``config11`` (this
version's parameters and capabilities), ``uris`` (migrate's URIs and channels, with the
MIGRATION events), ``incoming11`` (migrate-incoming's uri or channels), ``json11`` (where
this version's JSON reader places its errors, and when it gives them) and ``migration``
(src -> dst, events on, query-migrate polled). ``schema``
writes schema.json and schema-7.2.json: the migration commands and events of each version's
query-qmp-schema, every type inlined.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from qmp import record as v72
from qmp_recorder import NEG, Qemu, Record, caps, pair_migration, run, schema, write, x

HERE = Path(__file__).parent
SHARED = "/tmp/qemu11"  # bind-mounted at the same path inside the chroot
QEMU = ["qemu11-system-x86_64", "-machine", "pc,accel=tcg", "-display", "none", "-nodefaults"]
S = ["-m", "128", "-S"]
OLD_PARAMS = ["compress-level", "compress-threads", "decompress-threads", "compress-wait-thread"]
OLD_PARAMS += ["block-incremental", "x-compress-method"]
SET_PARAMS: list[dict[str, Any]] = [
    {"multifd-qatzip-level": 0},
    {"multifd-qatzip-level": 9},
    {"multifd-zlib-level": 10},
    {"multifd-zstd-level": 21},
    {"multifd-compression": "qatzip"},
    {"x-rdma-chunk-size": 4096},
    {"x-rdma-chunk-size": 1048576},
    {"x-rdma-chunk-size": 1073741824},
    {"x-rdma-chunk-size": 2147483648},
    {"vcpu-dirty-limit": 0},
    {"vcpu-dirty-limit": 2},
    {"x-vcpu-dirty-limit-period": 0},
    {"x-vcpu-dirty-limit-period": 1001},
    {"zero-page-detection": "foo"},
    {"zero-page-detection": "legacy"},
    {"mode": "foo"},
    {"mode": "cpr-reboot"},
    {"direct-io": True},
    {"cpr-exec-command": ["/bin/true", "a b"]},
    {"cpr-exec-command": "/bin/true"},
    {"avail-switchover-bandwidth": -1},
    {"avail-switchover-bandwidth": 1048576},
    {"max-bandwidth": 0},
    {"tls-creds": "x", "tls-hostname": "h"},
    {"tls-creds": None, "tls-hostname": None},
    {"block-bitmap-mapping": []},
    {"max-cpu-throttle": 10},
    {"announce-step": 0},
    {"downtime-limit": 2000001},
]
SET_CAPS: list[Any] = [
    caps(switchover_ack=True),
    caps(return_path=True, switchover_ack=True),
    caps(dirty_limit=True),
    caps(mapped_ram=True, xbzrle=True),
    caps(mapped_ram=True),
    caps(multifd=True, postcopy_ram=True),
    caps(background_snapshot=True),
    caps(x_colo=True),
    caps(zero_copy_send=True),
]


def off(states: dict[str, Any]) -> dict[str, Any]:
    """migrate-set-capabilities' arguments that turn ``states``' capabilities off."""
    return {"capabilities": [{**c, "state": False} for c in states["capabilities"]]}


CHANNEL = {"channel-type": "main"}
INET = {"transport": "socket", "type": "inet", "host": "127.0.0.1", "port": "1"}

MAIN = {
    "channel-type": "main",
    "addr": {"transport": "socket", "type": "inet", "host": "127.0.0.1", "port": "0"},
}
CASES: dict[str, tuple[list[str], list[str]]] = {
    **v72.CASES,
    "session": (
        S,
        [
            NEG,
            x("query-version"),
            x("query-status"),
            x("query-migrate-capabilities"),
            x("query-migrate-parameters"),
            x("query-migrate"),
            *(x("migrate-set-parameters", {name: 1}) for name in OLD_PARAMS),
            *(x("migrate-set-capabilities", caps(**{c: True})) for c in ("compress", "block")),
            x("migrate-set-capabilities", caps(zero_blocks=True)),
            x("query-migrate-parameters"),
        ],
    ),
    "config11": (
        S,
        [
            NEG,
            *(x("migrate-set-parameters", p) for p in SET_PARAMS),
            x("query-migrate-parameters"),
            # Each alone: set, then all its capabilities off again.
            *(x("migrate-set-capabilities", c) for on in SET_CAPS for c in (on, off(on))),
            x("query-migrate-capabilities"),
        ],
    ),
    # migrate-incoming's uri or channels (a cpr channel alone, or two mains given to
    # `migrate`, make QEMU 11.1.3 abort: not recorded).
    "incoming11": (
        [*S, "-incoming", "defer"],
        [
            NEG,
            x("migrate-incoming"),
            x("migrate-incoming", {"uri": "tcp:127.0.0.1:0", "channels": [MAIN]}),
            x("migrate-incoming", {"channels": []}),
            x("migrate-incoming", {"channels": [MAIN, MAIN]}),
            x("migrate-incoming", {"uri": "tcp:127.0.0.1:0", "exit-on-error": "x"}),
            x("migrate-incoming", {"channels": [{"channel-type": "main", "addr": {}}]}),
            x("migrate-incoming", {"channels": [MAIN]}),
            x("query-migrate"),
        ],
    ),
    # 11.1's reader: where errors are placed (LINE:COLUMN, the byte a number, keyword or
    # skipping ended on counted twice), errors before the braces balance, what ends skipping.
    "json11": (
        S,
        [
            NEG,
            '  {"a": @}\n',
            '{"a":@ }\n',
            '{"a": 01 }\n',
            '{"a": 1 2}\n',
            '\n\n{"a" :: 1}\n',
            '{"a":\n 1 2}\n',
            '{"a": [1 @ ] }\n',
            '{"a": truex}\n',
            '{"a": @x y}\n',
            '{"a": "x\x01"}\n',
            '{"a": @\n  }\n',
            "@abc [1 2]\n",
            '{"a": 1}}\n',
            "[[1]]]\n",
            '{"a":1@}\n',
            '{"a": 1, "a": {"b": 1}}\n',
            '{"a": 1, "a": [1,\n 2]}\n',
            '{"a": 1 , }\n',
            '{"a": -}\n',
            '{"a": 1.}\n',
            '{"a": @x, "b": 1}\n',
            '{"a": @x: 1}\n',
            '"\udcc0\udc80\x01"\n',  # C0 80 (QEMU's U+0000) in a stray string
            '"a\udcc0\udc80\udcff"\n',
            '{"a" 1 ',
            "}\n",
            '{"a": [1, ',
            "]}\n",
            '{"a": [1, 2]',
            "}\n",
            "[" * 1025 + "]" * 1025 + "\n",
            '{"execute": "query-status", "id": "after"}\n',
        ],
    ),
    "uris": (
        ["-m", "128"],
        [
            NEG,
            x("migrate-set-capabilities", caps(events=True)),
            *(
                text
                for uri in [
                    "foo:bar",
                    "tcp:127.0.0.1",
                    "tcp:127.0.0.1:1",
                    "unix:/nonexistent/x",
                    "file:/nonexistent/x",
                    "exec:/nonexistent",
                    "fd:x",
                    "rdma:127.0.0.1:1",
                ]
                for text in (x("migrate", {"uri": uri}), x("query-migrate"))
            ),
            x("migrate", {}),
            x("migrate", {"uri": "tcp:127.0.0.1:1", "channels": [{**CHANNEL, "addr": INET}]}),
            x("migrate", {"channels": [{**CHANNEL, "addr": INET}]}),
            x("query-migrate"),
            x("migrate", {"channels": []}),
            x("migrate", {"channels": [{**CHANNEL, "addr": {"transport": "foo"}}]}),
            x("migrate", {"uri": "tcp:127.0.0.1:1", "blk": True}),
            x("migrate", {"uri": "tcp:127.0.0.1:1", "detach": True}),
            x("query-migrate"),
            x("migrate", {"uri": "tcp:127.0.0.1:1", "resume": True}),
            x("migrate-incoming", {"uri": "tcp:127.0.0.1:0"}),
            x("migrate_cancel"),
            x("migrate-pause"),
            x("migrate-continue", {"state": "pre-switchover"}),
            x("migrate-start-postcopy"),
        ],
    ),
}


def schemas() -> None:
    """The migration part of each version's query-qmp-schema, with types inlined."""

    def wanted(name: str) -> bool:
        return "migrat" in name.lower() or name in SCHEMA_EXTRA

    for qemu, parent, out in ((QEMU, SHARED, "schema.json"), (v72.QEMU, None, "schema-7.2.json")):
        with tempfile.TemporaryDirectory(dir=parent) as tmp:
            q = Qemu(qemu, S, tmp)
            try:
                q.send(NEG)
                picked = schema(q, wanted)
            finally:
                q.close()
        (HERE / out).write_text(json.dumps(picked, indent=1) + "\n")


SCHEMA_EXTRA = {"query-status", "query-version", "stop", "cont", "STOP", "RESUME"}


def main() -> None:
    Path(SHARED).mkdir(exist_ok=True)
    for name in sys.argv[1:] or [*CASES, "migration", "schema"]:
        if name == "schema":
            schemas()
        else:
            records: list[Record] = (
                pair_migration(QEMU, caps(events=True), SHARED)
                if name == "migration"
                else run(QEMU, *CASES[name], raw=name == "bytes", parent=SHARED)
            )
            write(HERE / f"{name}.jsonl", records)
        print(name)


if __name__ == "__main__":
    main()
