"""Replay QEMU 7.2's xbzrle migration (tests/data/qemu-7.2/xbzrle, recorded by its
record_xbzrle.py) on two of our machines, each command's output against QEMU's.

Every output is compared byte for byte except `info migrate` on the source, whose figures are
measurements: there the xbzrle block must have QEMU's lines in QEMU's order, numbers masked
but the cache size exact (it is a parameter), after the RAM lines as QEMU's. QMP's
``query-migrate`` must carry QEMU's ``xbzrle-cache`` members (QEMU's JSON objects are hash
tables: their order is not QEMU's to keep, so the names and types are compared).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hmp_replay import Side, steps

from engine.machine import MachineOptions
from hmp.qmp import qapi

DATA = Path(__file__).parent / "data" / "qemu-7.2" / "xbzrle"
MiB = 1 << 20
NUMBER = re.compile(r"\d+(\.\d+)?")
BLOCK_START, BLOCK_END = "cache size: ", "xbzrle overflow: "


def xbzrle_block(info: str) -> str:
    """The xbzrle block, numbers masked but the cache size's; it must follow the RAM lines."""
    lines = info.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(BLOCK_START))
    end = next(i for i, line in enumerate(lines) if line.startswith(BLOCK_END))
    assert lines.index(next(x for x in lines if x.startswith("pages-per-second: "))) < start
    return "\n".join([lines[start], *(NUMBER.sub("N", x) for x in lines[start + 1 : end + 1])])


@pytest.fixture
def sides():
    dst = Side(MachineOptions(ram_size=32 * MiB, incoming="tcp:127.0.0.1:0"))
    # QEMU's random image at 16 MiB and 16M/s: a first pass of seconds here too.
    src = Side(MachineOptions(ram_size=32 * MiB, workload="random", seed=52))
    yield src, dst
    src.machine.close()
    dst.machine.close()


def test_xbzrle_migration_matches_qemu(sides) -> None:
    src, dst = sides
    address = dst.machine.query_migrate().socket_address
    assert address is not None
    port = address[0].rsplit(":", 1)[1]
    dst_steps = steps((DATA / "destination.txt").read_text())
    assert dst.run(dst_steps[0][0]) == dst_steps[0][1]  # migrate_set_capability xbzrle on
    dst.machine.set_capabilities({"events": True})  # to wait on; QEMU's session never shows it
    compared = 0
    for command, expected in steps((DATA / "source.txt").read_text()):
        if command.startswith("migrate -d"):
            src.machine.set_capabilities({"events": True})  # after the capabilities were shown
            assert src.run(command.replace("{port}", port)) == expected
            src.watch.wait_status("active")
            continue
        if command == "info migrate":
            if "completed" in expected:
                src.machine.wait_migration(60)
            ours = src.run(command)
            assert xbzrle_block(ours) == xbzrle_block(expected), ours
            status = "completed" if "completed" in expected else "active"
            assert f"\nMigration status: {status}\n" in ours
            compared += 1
            continue
        assert src.run(command) == expected, command
    assert compared == 3
    dst.watch.wait_status("completed")
    assert dst.run("info migrate") == dst_steps[-1][1]


def test_query_migrate_has_qemus_xbzrle_cache(sides) -> None:
    src, dst = sides
    qemu = json.loads((DATA / "query_migrate.json").read_text())
    for side in (src, dst):
        side.machine.set_capabilities({"xbzrle": True, "events": True})
    address = dst.machine.query_migrate().socket_address
    assert address is not None
    src.machine.set_parameters({"max-bandwidth": 0})
    src.machine.migrate(address[0])
    src.machine.wait_migration(60)
    ours = qapi.migration_info(src.machine.query_migrate())
    assert ours["status"] == qemu["status"] == "completed"
    assert ours["xbzrle-cache"].keys() == qemu["xbzrle-cache"].keys()
    assert ours["xbzrle-cache"]["cache-size"] == qemu["xbzrle-cache"]["cache-size"]
    for name, value in qemu["xbzrle-cache"].items():
        assert isinstance(ours["xbzrle-cache"][name], float if "rate" in name else int), name
        assert isinstance(value, int | float)
