"""Where a cancel cuts the stream: between two records, saying nothing, unless a write was in
progress (blocked: tests/test_stalls.py has QEMU's `Unable to write to socket` for that).

transcripts/cancel.hmpt failed 3 runs in 16 under load: the cancel shut the socket down while
the migration thread prepared a batch, whose send then failed and was reported on stderr
(`Unable to write to socket: Connection reset by peer`). Here the cancel is forced into that
window: it comes from inside the batch's preparation, on the migration thread itself.
"""

from __future__ import annotations

import threading
from typing import Any

from reports import Reports

from engine.guest import PageIndex
from engine.machine import Machine, MachineOptions
from engine.state import MigrationStatus, RunState

MiB = 1 << 20
TIMEOUT = 10.0


def test_a_cancel_while_a_batch_is_prepared_ends_the_stream_between_records(
    machines: list[Machine],
) -> None:
    dst_reports, src_reports = Reports(), Reports()
    dst = Machine(MachineOptions(ram_size=64 * MiB, incoming="tcp:127.0.0.1:0"), notify=dst_reports)
    machines.append(dst)
    src = Machine(MachineOptions(ram_size=64 * MiB), notify=src_reports)
    machines.append(src)
    address = dst.query_migrate().socket_address
    assert address is not None
    src.set_parameters({"max-bandwidth": 1 * MiB})

    scan = src.ram.scan  # a plain batch's preparation: its zero pages and CRCs, in one pass
    cancelled = threading.Event()

    def cancel_then_scan(indices: PageIndex) -> tuple[Any, Any]:
        if not cancelled.is_set():  # between the batch's check for a cancel and its send
            cancelled.set()
            src.migrate_cancel()
        return scan(indices)

    src.ram.scan = cancel_then_scan  # type: ignore[method-assign]
    src.migrate(address[0])
    assert src.wait_migration(TIMEOUT).status is MigrationStatus.CANCELLED
    assert cancelled.is_set()
    assert src.query_status().status is RunState.RUNNING
    # The destination saw the stream end at a record's boundary, not inside one.
    assert dst_reports.wait(1) == [
        "load of migration failed: migration stream ended before completion"
    ]
    assert src_reports.lines == []  # no write was in progress: nothing to report
