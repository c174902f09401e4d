"""Two real endpoints (Machines) in one test process, migrating over real sockets."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest

from engine.errors import MigrationError
from engine.machine import Loader, Machine, MachineOptions
from engine.state import MigrationStatus, RunState

MiB = 1 << 20
GiB = 1 << 30
SIZE = 32 * MiB


class Watch:
    """Collects a machine's events; waits on a condition, never sleeps blindly."""

    def __init__(self, machine: Machine) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._cond = threading.Condition()
        machine.events.subscribe(self._on)

    def _on(self, name: str, data: dict[str, Any]) -> None:
        with self._cond:
            self.events.append((name, data))
            self._cond.notify_all()

    def statuses(self) -> list[str]:
        with self._cond:
            return [d["status"] for n, d in self.events if n == "MIGRATION"]

    def wait_status(self, status: str, timeout: float = 30) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: status in self.statuses(), timeout)
        assert ok, f"no {status!r} in {self.statuses()}"

    def wait_event(self, name: str, count: int = 1, timeout: float = 30) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: sum(n == name for n, _ in self.events) >= count, timeout
            )
        assert ok, f"fewer than {count} {name} events"


def make(machines: list[Machine], **kw: Any) -> Machine:
    kw.setdefault("ram_size", SIZE)
    m = Machine(MachineOptions(**kw))
    m.set_capabilities({"events": True})
    machines.append(m)
    return m


def dest(machines: list[Machine], uri: str = "tcp:127.0.0.1:0", **kw: Any) -> tuple[Machine, str]:
    m = make(machines, incoming=uri, **kw)
    address = m.query_migrate().socket_address
    assert address is not None
    return m, address[0]


def ram_hash(m: Machine) -> str:
    return hashlib.sha256(m.ram.buf).hexdigest()


def migrate(src: Machine, dst: Machine, uri: str) -> None:
    watch = Watch(dst)
    src.migrate(uri)
    info = src.wait_migration(60)
    assert info.status is MigrationStatus.COMPLETED, info
    watch.wait_status("completed")
    assert ram_hash(src) == ram_hash(dst)


def test_idle_migration_over_tcp(machines):
    dst, uri = dest(machines)
    src = make(machines, seed=1)
    src.set_parameters({"max-bandwidth": 0})
    migrate(src, dst, uri)
    info = src.query_migrate()
    assert info.ram is not None and info.downtime is not None and info.setup_time is not None
    assert info.expected_downtime is None and info.ram.remaining == 0
    assert info.ram.duplicate + info.ram.normal == SIZE // 4096
    assert info.ram.transferred > info.ram.normal * 4096
    assert info.ram.dirty_sync_count >= 2
    assert src.query_status().status is RunState.POSTMIGRATE
    assert dst.query_status().status is RunState.RUNNING
    done = dst.query_migrate()
    assert done.status is MigrationStatus.COMPLETED and done.total_time is None  # as QEMU
    assert done.socket_address is None  # QEMU frees the listener once completed


def test_idle_migration_over_unix_socket(machines, tmp_path: Path):
    dst, uri = dest(machines, f"unix:{tmp_path / 'mig.sock'}")
    assert uri == f"unix:{tmp_path / 'mig.sock'}"
    src = make(machines, seed=2)
    migrate(src, dst, uri)


def test_paused_source_hands_its_state_over(machines):
    dst, uri = dest(machines)
    src = make(machines, start_paused=True)
    migrate(src, dst, uri)
    assert dst.query_status().status is RunState.PRELAUNCH
    assert src.query_status().status is RunState.POSTMIGRATE


def test_destination_told_to_stop_stays_paused(machines):
    dst, uri = dest(machines)
    dst.stop()
    src = make(machines)
    migrate(src, dst, uri)
    assert dst.query_status().status is RunState.PAUSED


@pytest.mark.parametrize(
    ("method", "level", "threads"),
    [
        ("zlib", 0, 1),
        ("zlib", 1, 1),
        ("zlib", 1, 4),
        ("zlib", 9, 3),
        ("zstd", 1, 2),
        ("zstd", 9, 1),
    ],
)
def test_compressed_migration(machines, method, level, threads):
    dst, uri = dest(machines)
    dst.set_capabilities({"compress": True})
    dst.set_parameters({"decompress-threads": max(1, threads // 2), "x-compress-method": method})
    src = make(machines, workload="idle", seed=5)
    src.set_capabilities({"compress": True})
    src.set_parameters(
        {"compress-level": level, "compress-threads": threads, "x-compress-method": method}
    )
    migrate(src, dst, uri)
    info = src.query_migrate()
    assert info.compression is not None and info.ram is not None
    assert info.compression.pages == info.ram.total // 4096 - info.ram.duplicate
    assert info.ram.normal == 0
    if level:
        assert info.compression.compressed_size < info.compression.pages * 4096 * 0.7
    else:  # stored: bigger than the pages themselves
        assert info.compression.compressed_size > info.compression.pages * 4096


def test_compressed_dirtying_guest_resends_pages_in_order(machines):
    """Pages re-dirtied between passes are compressed again while older copies may still be
    in flight (QEMU 7.2 keeps them in flight across EOS); with several decompress threads the
    newer copy must still win everywhere."""
    dst, uri = dest(machines, ram_size=64 * MiB)
    dst.set_capabilities({"compress": True})
    dst.set_parameters({"decompress-threads": 3})
    src = make(machines, ram_size=64 * MiB, workload="idle,rate=3000,wss=8M", seed=6)
    src.set_capabilities({"compress": True})
    src.set_parameters({"compress-threads": 4, "max-bandwidth": 8 * MiB})
    migrate(src, dst, uri)  # RAM equal, digest verified
    info = src.query_migrate()
    assert info.ram is not None and info.compression is not None
    assert info.ram.dirty_sync_count >= 3
    # Every non-zero page once, plus the re-sent ones (the writer keeps to non-zero pages).
    assert info.compression.pages > (info.ram.total // 4096 - info.ram.duplicate) * 1.2


def test_cancel_then_migrate_again(machines):
    dst, uri = dest(machines)
    src = make(machines, seed=3)
    src.set_parameters({"max-bandwidth": 1 * MiB})
    watch, dst_watch = Watch(src), Watch(dst)
    src.migrate(uri)
    watch.wait_status("active")
    src.migrate_cancel()
    info = src.wait_migration(10)
    assert info.status is MigrationStatus.CANCELLED
    assert info.total_time is None and info.ram is None
    assert watch.statuses()[-2:] == ["cancelling", "cancelled"]
    assert src.query_status().status is RunState.RUNNING
    # The destination saw a broken stream; it listens again on the same address.
    dst_watch.wait_status("failed")
    src.set_parameters({"max-bandwidth": 0})
    migrate(src, dst, uri)
    assert dst_watch.statuses()[-2:] == ["active", "completed"]


def test_refused_port(machines):
    probe, uri = dest(machines)
    probe.close()  # nothing listens there any more
    src = make(machines)
    src.migrate(uri)
    info = src.wait_migration(10)
    assert info.status is MigrationStatus.FAILED
    port = uri.rsplit(":", 1)[1]
    assert info.error_desc == f"Failed to connect to '127.0.0.1:{port}': Connection refused"
    assert src.query_status().status is RunState.RUNNING
    dst, uri2 = dest(machines)
    migrate(src, dst, uri2)


def test_bad_uris(machines):
    src = make(machines)
    with pytest.raises(MigrationError, match=r"^error parsing address '127\.0\.0\.1'$"):
        src.migrate("tcp:127.0.0.1")
    assert src.query_migrate().error_desc == "error parsing address '127.0.0.1'"
    with pytest.raises(
        MigrationError, match=r"^Parameter 'uri' expects a valid migration protocol$"
    ):
        src.migrate("foo:bar")
    assert src.query_status().status is RunState.RUNNING


def test_state_rules(machines):
    dst, uri = dest(machines)
    with pytest.raises(MigrationError, match="Guest is waiting for an incoming migration"):
        dst.migrate("tcp:127.0.0.1:1")
    with pytest.raises(MigrationError, match="The incoming migration has already been started"):
        dst.migrate_incoming("tcp:127.0.0.1:0")
    src = make(machines)
    with pytest.raises(MigrationError, match="'-incoming' was not specified on the command line"):
        src.migrate_incoming("tcp:127.0.0.1:0")
    src.set_parameters({"max-bandwidth": 1 * MiB})
    watch = Watch(src)
    src.migrate(uri)
    watch.wait_status("active")
    with pytest.raises(MigrationError, match="There's a migration process in progress"):
        src.migrate(uri)
    with pytest.raises(MigrationError, match="There's a migration process in progress"):
        src.set_capabilities({"compress": True})
    src.set_parameters({"max-bandwidth": 0})  # applies to the running stream
    assert src.wait_migration(30).status is MigrationStatus.COMPLETED
    with pytest.raises(MigrationError, match="Can't migrate the vm that was paused"):
        src.migrate(uri)


def test_unsupported_capability_is_refused_at_migrate(machines):
    src = make(machines)
    src.set_capabilities({"x-colo": True})
    with pytest.raises(MigrationError, match="capability 'x-colo' is not supported by qemu-hmp"):
        src.migrate("tcp:127.0.0.1:1")
    assert src.query_status().status is RunState.RUNNING


def test_migrate_flag_checks_in_qemu_order(machines):
    """resume first, then disk (-b/-i) checks, the URI, and only then qemu-hmp's refusals."""
    src = make(machines)
    with pytest.raises(MigrationError, match=r"^Cannot resume if there is no paused migration$"):
        src.migrate("foo:bar", blk=True, resume=True)
    src.set_capabilities({"x-colo": True, "block": True})
    with pytest.raises(MigrationError, match=r"^No disk migration is required in COLO mode$"):
        src.migrate("tcp:127.0.0.1:1", inc=True)
    src.set_capabilities({"x-colo": False})
    with pytest.raises(MigrationError, match=r"^Command options are incompatible with current"):
        src.migrate("foo:bar", blk=True)
    src.set_capabilities({"block": False})
    with pytest.raises(MigrationError, match="expects a valid migration protocol"):
        src.migrate("foo:bar", blk=True)  # QEMU would run it; its URI error still comes first
    with pytest.raises(MigrationError, match=r"^Block migration \(-b, -i\) is not supported"):
        src.migrate("tcp:127.0.0.1:1", blk=True)
    src.set_capabilities({"x-colo": True})
    with pytest.raises(MigrationError, match="expects a valid migration protocol"):
        src.migrate("foo:bar")
    with pytest.raises(MigrationError, match="capability 'x-colo' is not supported by qemu-hmp"):
        src.migrate("tcp:127.0.0.1:1")
    assert src.query_status().status is RunState.RUNNING


def test_ram_size_mismatch_fails_both_sides(machines):
    dst, uri = dest(machines, ram_size=SIZE * 2)
    src = make(machines)
    src.migrate(uri)
    info = src.wait_migration(30)
    assert info.status is MigrationStatus.FAILED
    assert info.error_desc is not None and "Length mismatch" in info.error_desc
    assert src.query_status().status is RunState.RUNNING
    failed = dst.query_migrate()
    assert failed.status is MigrationStatus.FAILED and failed.socket_address == (uri,)
    assert dst.query_status().status is RunState.INMIGRATE


@pytest.mark.parametrize(
    ("capability", "error"),
    [
        ("compress", "Received an unexpected compressed page"),
        ("multifd", "multifd mismatch: the capability is off on the destination"),
    ],
)
def test_capability_must_be_on_at_the_destination_too(machines, capability, error):
    _dst, uri = dest(machines)
    src = make(machines)
    src.set_capabilities({capability: True})
    src.migrate(uri)
    info = src.wait_migration(30)
    assert info.status is MigrationStatus.FAILED
    assert info.error_desc == error
    assert src.query_status().status is RunState.RUNNING


def test_destination_quits_mid_stream(machines):
    dst, uri = dest(machines)
    src = make(machines)
    src.set_parameters({"max-bandwidth": 1 * MiB})
    watch = Watch(src)
    src.migrate(uri)
    watch.wait_event("MIGRATION_PASS")
    watch.wait_status("active")
    dst.close()
    info = src.wait_migration(30)
    assert info.status is MigrationStatus.FAILED
    assert info.error_desc is not None and info.error_desc.startswith("Unable to write to socket")
    assert src.query_status().status is RunState.RUNNING


def test_events_follow_qemu(machines):
    dst, uri = dest(machines)
    src = make(machines)
    src_watch, dst_watch = Watch(src), Watch(dst)
    migrate(src, dst, uri)
    assert src_watch.statuses() == ["setup", "active", "completed"]
    assert dst_watch.statuses() == ["active", "completed"]
    passes = [d["pass"] for n, d in src_watch.events if n == "MIGRATION_PASS"]
    assert passes == list(range(1, len(passes) + 1)) and len(passes) >= 2
    names = [n for n, _ in src_watch.events]
    assert names.index("STOP") < names.index("MIGRATION", names.index("STOP"))
    assert "RESUME" in [n for n, _ in dst_watch.events]


def dirtying_pair(machines, rate: int) -> tuple[Machine, Machine, str, Watch]:
    dst, uri = dest(machines, ram_size=64 * MiB)
    src = make(machines, ram_size=64 * MiB, workload=f"random-writer,rate={rate},wss=32M")
    src.set_parameters({"max-bandwidth": 32 * MiB})
    return src, dst, uri, Watch(src)


def test_dirtying_guest_below_bandwidth_converges(machines):
    src, dst, uri, _ = dirtying_pair(machines, rate=500)
    migrate(src, dst, uri)
    assert src.query_migrate().cpu_throttle_percentage is None


def test_dirtying_guest_above_bandwidth_does_not_converge(machines):
    src, _dst, uri, watch = dirtying_pair(machines, rate=25000)
    src.migrate(uri)
    watch.wait_event("MIGRATION_PASS", count=5, timeout=60)
    info = src.query_migrate()
    assert info.status is MigrationStatus.ACTIVE
    assert info.ram is not None and info.ram.dirty_pages_rate > 5000
    assert info.cpu_throttle_percentage is None
    src.migrate_cancel()
    assert src.wait_migration(10).status is MigrationStatus.CANCELLED


def test_auto_converge_throttles_until_it_converges(machines):
    src, dst, uri, _watch = dirtying_pair(machines, rate=25000)
    src.set_capabilities({"auto-converge": True})
    src.set_parameters({"cpu-throttle-initial": 60, "cpu-throttle-increment": 20})
    migrate(src, dst, uri)
    assert max(sample.cpu_throttle for sample in src.migration_timeseries()) >= 60
    # QEMU stops the throttle at the end and `info migrate` omits its line from then on.
    assert src.query_migrate().cpu_throttle_percentage is None
    assert src.vm.gate.throttle_pct == 0


def test_loader_and_pmemsave_round_trip(machines, tmp_path: Path):
    image = tmp_path / "image.bin"
    image.write_bytes(bytes(range(256)) * 4096 + b"tail")  # 1 MiB + 4 bytes, unaligned end
    dst, uri = dest(machines)
    src = make(machines, workload="zero", loaders=(Loader(str(image), 0x100000),))
    migrate(src, dst, uri)
    out = tmp_path / "dump.bin"
    dst.pmemsave(0x100000, image.stat().st_size, str(out))
    assert out.read_bytes() == image.read_bytes()
    dst.pmemsave(SIZE - 4096, 8192, str(out))  # past the end of RAM: zeros, like QEMU
    assert out.read_bytes() == bytes(8192)
    with pytest.raises(MigrationError, match=r"^Could not open '/nonexistent/x': No such file"):
        dst.pmemsave(0, 4096, "/nonexistent/x")


def test_loader_errors(tmp_path: Path):
    with pytest.raises(MigrationError, match="could not load"):
        Machine(MachineOptions(ram_size=SIZE, loaders=(Loader(str(tmp_path / "no"), 0),)))
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(4096))
    with pytest.raises(MigrationError, match="does not fit in guest RAM"):
        Machine(MachineOptions(ram_size=SIZE, loaders=(Loader(str(big), SIZE - 100),)))


@pytest.mark.parametrize(
    ("channels", "compression"), [(2, "none"), (4, "zlib"), (3, "zstd"), (1, "none")]
)
def test_multifd_migration(machines, channels, compression):
    dst, uri = dest(machines)
    src = make(machines, workload="random-writer,rate=2000,wss=8M", seed=9)
    for m in (src, dst):
        m.set_capabilities({"multifd": True})
        m.set_parameters({"multifd-channels": channels, "multifd-compression": compression})
    src.set_parameters({"max-bandwidth": 64 * MiB})
    migrate(src, dst, uri)
    info = src.query_migrate()
    assert info.ram is not None and info.compression is None
    assert info.ram.multifd_bytes > 0 and info.ram.normal > 0
    assert info.ram.transferred >= info.ram.multifd_bytes
    if compression != "none":
        assert info.ram.multifd_bytes < info.ram.normal * 4096


# The fast link's guest is big enough that most of it goes after the first decision (0.1 s
# of compression, ~13000 pages on 2 cores, is sent before it). Each decision has a margin of
# 10x or more over any machine's speed, even with the test's processes sharing a core with ten
# others (4 MiB/s is some 40x below what one core compresses, 4 GiB/s far above it); the
# level the policy picks depends on how idle the workers are, i.e. on the machine's speed,
# so tests/test_policy.py checks levels from injected measurements instead.
@pytest.mark.parametrize(
    ("link", "expect_compress", "size"), [(4 * MiB, True, 32 * MiB), (4096 * MiB, False, GiB)]
)
def test_adaptive_compression_follows_the_link(machines, link, expect_compress, size):
    """A slow link makes compression pay; a fast one makes it cost."""
    dst, uri = dest(machines, ram_size=size)
    dst.set_capabilities({"compress": True})
    src = make(machines, ram_size=size, seed=4)
    src.set_capabilities({"compress": True, "x-compress-auto": True})
    src.set_parameters({"max-bandwidth": 0, "x-link-bandwidth": link, "compress-threads": 2})
    migrate(src, dst, uri)
    policy = src.query_compress_policy()
    assert policy.enabled and policy.link_source == "x-link-bandwidth"
    assert policy.compress is expect_compress
    info = src.query_migrate()
    assert info.compression is not None and info.ram is not None
    assert info.compression.pages + info.ram.normal + info.ram.duplicate == size // 4096
    assert (info.ram.normal > info.compression.pages) is not expect_compress


def test_adaptive_compression_needs_compress(machines):
    src = make(machines)
    with pytest.raises(MigrationError, match="requires 'compress'"):
        src.set_capabilities({"x-compress-auto": True})


def test_multifd_on_the_source_only_fails_the_same_way_at_both_ends(machines):
    dst, uri = dest(machines)
    dst_watch = Watch(dst)
    src = make(machines)
    src.set_capabilities({"multifd": True})
    src.set_parameters({"multifd-channels": 4})
    src.migrate(uri)
    assert src.wait_migration(30).status is MigrationStatus.FAILED
    dst_watch.wait_status("failed")
    # The channels the source opened before it read the refusal do not count as migrations.
    src.set_capabilities({"multifd": False})
    migrate(src, dst, uri)
    assert dst_watch.statuses() == ["active", "failed", "active", "completed"]


def test_compress_wait_thread_off_sends_busy_pages_raw(machines):
    """QEMU's compress-wait-thread off: with every worker busy, pages go uncompressed, "busy"."""
    dst, uri = dest(machines, ram_size=128 * MiB)
    dst.set_capabilities({"compress": True})
    src = make(machines, ram_size=128 * MiB, seed=6)
    src.set_capabilities({"compress": True})
    src.set_parameters({"compress-threads": 1, "compress-level": 9, "compress-wait-thread": False})
    src.set_parameters({"max-bandwidth": 0})
    migrate(src, dst, uri)
    info = src.query_migrate()
    assert info.compression is not None and info.ram is not None
    assert info.compression.busy > 0 and info.ram.normal == info.compression.busy
    assert info.compression.pages > 0  # the worker still compressed what it could take
    assert info.compression.pages + info.ram.normal + info.ram.duplicate == 128 * MiB // 4096
