"""QEMU 11.1's avail-switchover-bandwidth in the expected-downtime decision: a guest that
dirties faster than a capped precopy sends never converges, until the switchover is known to
have more bandwidth than precopy measured."""

from __future__ import annotations

from engine.machine import Machine
from engine.params11 import TABLE_11_1
from engine.state import MigrationStatus
from tests.test_machine import MiB, Watch, dest, make, migrate


def test_avail_switchover_bandwidth_lets_a_dirtying_guest_converge(
    machines: list[Machine],
) -> None:
    dst, uri = dest(machines, ram_size=64 * MiB, config_table=TABLE_11_1)
    src = make(
        machines,
        ram_size=64 * MiB,
        workload="random-writer,rate=25000,wss=32M",
        config_table=TABLE_11_1,
    )
    src.set_parameters({"max-bandwidth": 32 * MiB})
    watch, watch_dst = Watch(src), Watch(dst)
    src.migrate(uri)
    watch.wait_event("MIGRATION_PASS", count=5, timeout=60)
    info = src.query_migrate()
    assert info.status is MigrationStatus.ACTIVE  # 32 MiB/s cannot catch 100 MB/s of writes
    assert info.expected_downtime is not None and info.expected_downtime > 300
    # The switchover may use 100 GiB/s: 32 MiB of dirty RAM fits 300 ms of that.
    src.set_parameters({"avail-switchover-bandwidth": 100 * 1024 * MiB})
    done = src.wait_migration(60)
    assert done.status is MigrationStatus.COMPLETED, done
    watch_dst.wait_status("completed")  # its digest matched: RAM arrived whole


def test_without_it_the_decision_is_the_measured_bandwidth(machines: list[Machine]) -> None:
    dst, uri = dest(machines, ram_size=32 * MiB, config_table=TABLE_11_1)
    src = make(machines, ram_size=32 * MiB, seed=4, config_table=TABLE_11_1)
    assert src.config.param("avail-switchover-bandwidth") == 0
    migrate(src, dst, uri)  # an idle guest converges on what precopy measured
