"""Postcopy between two in-process Machines: the switch, demand paging, the order of requested
and background pages (by construction: the background scan is held), and the statistics."""

from __future__ import annotations

import socket
import struct
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from proxy import RecordProxy
from test_machine import SIZE, Watch, dest, make, ram_hash

from engine import postcopy, wire
from engine.errors import MigrationError
from engine.guest import PAGE_SIZE
from engine.machine import Machine, MachineOptions
from engine.source import OutgoingMigration
from engine.state import MigrationStatus, RunState

MiB = 1 << 20
DIRTY = "random-writer,rate=20000,wss=16M"  # 80 MB/s of writes: never converges at 4 MiB/s


def pair(
    machines: list[Machine], *, dst_workload: str = "zero", preempt: bool = False, **dst_kw: Any
) -> tuple[Machine, Machine, str]:
    dst, uri = dest(machines, workload=dst_workload, **dst_kw)
    src = make(machines, workload=DIRTY)
    for m in (src, dst):
        m.set_capabilities({"postcopy-ram": True, "postcopy-blocktime": True})
        m.set_capabilities({"postcopy-preempt": preempt})
    src.set_parameters({"max-bandwidth": 4 * MiB})
    return src, dst, uri


def outgoing(m: Machine) -> OutgoingMigration:
    mig = m._outgoing
    assert isinstance(mig, OutgoingMigration)
    return mig


def start_postcopy(src: Machine, uri: str) -> Watch:
    """Migrate, and switch once precopy is under way (its first sync: a pass is not needed)."""
    watch = Watch(src)
    src.migrate(uri)
    watch.wait_event("MIGRATION_PASS")  # precopy is under way and does not converge
    src.migrate_start_postcopy()
    return watch


def held_postcopy(
    machines: list[Machine], preempt: bool = False
) -> tuple[Machine, Machine, Watch, OutgoingMigration, postcopy.PresentMap]:
    """Postcopy active into a paused destination, the source's background scan held: only
    requested pages move. The destination's Watch and page map come back with the pair."""
    src, dst, uri = pair(machines, start_paused=True, preempt=preempt)
    dst_watch = Watch(dst)
    watch = Watch(src)
    src.migrate(uri)
    watch.wait_event("MIGRATION_PASS")
    mig = outgoing(src)
    mig.background.clear()
    src.migrate_start_postcopy()
    dst_watch.wait_status("postcopy-active")
    loader = dst._incoming._loader if dst._incoming else None
    assert loader is not None and loader.present is not None
    return src, dst, dst_watch, mig, loader.present


def test_start_postcopy_checks_in_qemu_order(machines):
    src = make(machines)
    with pytest.raises(MigrationError, match=r"^Enable postcopy with migrate_set_capability"):
        src.migrate_start_postcopy()
    src.set_capabilities({"postcopy-ram": True})
    with pytest.raises(MigrationError, match=r"^Postcopy must be started after migration has"):
        src.migrate_start_postcopy()


def test_the_destination_needs_postcopy_ram_too(machines):
    _dst, uri = dest(machines)
    src = make(machines)
    src.set_capabilities({"postcopy-ram": True})
    src.migrate(uri)
    info = src.wait_migration(30)
    assert info.status is MigrationStatus.FAILED
    assert info.error_desc == "RAM postcopy is disabled but have 16 byte advise"
    assert src.query_status().status is RunState.RUNNING


def test_paused_destination_ends_with_the_source_s_ram(machines):
    """-S: the destination's guest does not write after the switch, so RAM must be equal."""
    interval = sys.getswitchinterval()
    src, dst, uri = pair(machines, start_paused=True)
    dst_watch = Watch(dst)
    watch = start_postcopy(src, uri)
    watch.wait_status("postcopy-active")
    assert src.query_status().status is RunState.FINISH_MIGRATE
    info = src.wait_migration(60)
    assert info.status is MigrationStatus.COMPLETED, info
    dst_watch.wait_status("completed")
    assert ram_hash(src) == ram_hash(dst)
    assert dst.query_status().status is RunState.PAUSED
    assert src.query_status().status is RunState.POSTMIGRATE
    assert info.ram is not None and info.ram.postcopy_bytes > 0 and info.ram.downtime_bytes == 0
    assert info.downtime is not None
    # QEMU's events: postcopy-active before STOP, a sync at the switch, then completed.
    names = [(n, d.get("status")) for n, d in watch.events if n != "MIGRATION_PASS"]
    assert names[-3:] == [
        ("MIGRATION", "postcopy-active"),
        ("STOP", None),
        ("MIGRATION", "completed"),
    ]
    assert dst_watch.statuses() == ["active", "postcopy-active", "completed"]
    # Postcopy shortened the GIL switch interval while it ran, and gave it back.
    assert sys.getswitchinterval() == interval


@pytest.mark.parametrize("preempt", [False, True], ids=["main-stream", "preempt"])
def test_running_destination_faults_and_the_digest_matches(machines, preempt):
    """The destination's vCPU writes its working set from the switch on: pages it touches
    before they arrive are requested; completion proves the digest (pages as sent) matched."""
    src, dst, uri = pair(machines, dst_workload=DIRTY, preempt=preempt)
    dst_watch = Watch(dst)
    mig = None
    watch = Watch(src)
    src.migrate(uri)
    watch.wait_event("MIGRATION_PASS")
    mig = outgoing(src)
    mig.background.clear()  # only requested pages move until the vCPU has faulted
    src.migrate_start_postcopy()
    dst_watch.wait_status("postcopy-active")
    assert dst.query_status().status is RunState.RUNNING
    writer = dst.workload.writer
    assert writer is not None
    assert writer.wait_written(writer.pages_written + 1000, 30)  # it wrote, so it faulted
    mig.background.set()
    info = src.wait_migration(60)
    assert info.status is MigrationStatus.COMPLETED, info
    dst_watch.wait_status("completed")
    assert info.ram is not None and info.ram.postcopy_requests > 0
    done = dst.query_migrate()
    bt = dst._incoming.blocktime() if dst._incoming else None
    assert bt is not None and bt.faults > 0
    assert done.postcopy_blocktime == bt.total_ms and done.postcopy_vcpu_blocktime == (bt.total_ms,)
    assert done.socket_address is None


@pytest.mark.parametrize("preempt", [False, True], ids=["main-stream", "preempt"])
def test_requested_page_overtakes_the_held_background_scan(machines, preempt):
    """By construction: the background scan is held, a vCPU faults on a missing page, and that
    page (only it) arrives, with the source's contents."""
    src, dst, dst_watch, mig, present = held_postcopy(machines, preempt)
    missing = present.missing
    page = int(np.flatnonzero(~present.present_bits())[-1])
    stop = threading.Event()
    assert dst.ram.fault(np.array([page]), stop)  # a vCPU's fault: returns once it is here
    assert present.missing == missing - 1  # nothing else moved: the background is held
    assert bytes(dst.ram.page(page)) == bytes(src.ram.page(page))
    info = src.query_migrate()
    assert info.ram is not None and info.ram.postcopy_requests == 1
    mig.background.set()
    assert src.wait_migration(60).status is MigrationStatus.COMPLETED
    dst_watch.wait_status("completed")
    assert ram_hash(src) == ram_hash(dst)


def test_a_page_that_arrives_twice_is_placed_once(machines):
    """A copy arriving after the page is present (requested earlier, then written by the
    guest) must not overwrite it."""
    src, dst, _, mig, present = held_postcopy(machines)
    page = int(np.flatnonzero(~present.present_bits())[0])
    assert dst.ram.fault(np.array([page]), threading.Event())
    dst.ram.page_array[page, :8] = 0xAB  # the guest writes it
    stale = np.zeros(PAGE_SIZE, dtype=np.uint8)
    assert present.place(np.array([page]), memoryview(stale.tobytes())) == 0
    assert (dst.ram.page_array[page, :8] == 0xAB).all()
    mig.background.set()
    assert src.wait_migration(60).status is MigrationStatus.COMPLETED


def test_cancel_in_postcopy_does_what_qemu_does(machines):
    """QEMU 7.2 cancels a postcopy migration: the source says cancelled and stays paused (the
    guest runs on the destination), which pauses with what it has."""
    src, dst, uri = pair(machines, start_paused=True)
    dst_watch = Watch(dst)
    watch = Watch(src)
    src.migrate(uri)
    watch.wait_event("MIGRATION_PASS")
    outgoing(src).background.clear()  # postcopy stays active until the cancel
    src.migrate_start_postcopy()
    dst_watch.wait_status("postcopy-active")
    src.migrate_cancel()
    assert src.wait_migration(30).status is MigrationStatus.CANCELLED
    assert watch.statuses()[-2:] == ["cancelling", "cancelled"]
    assert src.query_status().status is RunState.POSTMIGRATE
    dst_watch.wait_status("postcopy-paused")
    assert dst.query_status().status is RunState.PAUSED  # -S: paused, and it stays so


def recover(src: Machine, dst: Machine) -> None:
    """migrate_recover on the destination (an ephemeral port), then migrate -r to it."""
    dst.migrate_recover("tcp:127.0.0.1:0")
    address = dst.query_migrate().socket_address
    assert address is not None
    src.migrate(address[0], resume=True)


@pytest.mark.parametrize(
    "how",
    ["cut", "migrate_pause-source", "migrate_pause-source-preempt", "migrate_pause-destination"],
)
def test_a_broken_stream_pauses_both_sides_and_recovery_completes(machines, how):
    """The network fails (or migrate_pause breaks it) in the middle of postcopy: both sides
    pause, nothing fails; after recovery the pages the destination lacks are sent again
    and the digest and RAM match."""
    src, dst, direct = pair(machines, start_paused=True, preempt=how.endswith("preempt"))
    uri = direct
    if how == "cut":
        proxy = RecordProxy(direct)  # relays the main stream only (no preempt channel)
        proxy.start()
        uri = proxy.uri
    dst_watch, watch = Watch(dst), Watch(src)
    src.migrate(uri)
    watch.wait_event("MIGRATION_PASS")
    mig = outgoing(src)
    mig.background.clear()  # postcopy stays active, with pages still to send
    src.migrate_start_postcopy()
    dst_watch.wait_status("postcopy-active")
    if how.startswith("cut"):
        proxy.cut()
    else:
        (src if "source" in how else dst).migrate_pause()
    watch.wait_status("postcopy-paused")
    dst_watch.wait_status("postcopy-paused")
    with pytest.raises(MigrationError, match=r"^migrate-pause is currently only supported"):
        src.migrate_pause()
    assert src.query_status().status is RunState.FINISH_MIGRATE
    with pytest.raises(MigrationError, match=r"^Migration is not finalized yet$"):
        src.cont()
    mig.background.set()
    recover(src, dst)
    assert src.wait_migration(60).status is MigrationStatus.COMPLETED
    dst_watch.wait_status("completed")
    assert watch.statuses()[-4:] == [
        "postcopy-paused",
        "postcopy-recover",
        "postcopy-active",
        "completed",
    ]
    # migrate_recover announces setup on the destination, as QEMU 7.2 does (qmp_recover.jsonl)
    assert dst_watch.statuses()[-5:] == ["postcopy-paused", "setup", *watch.statuses()[-3:]]
    assert ram_hash(src) == ram_hash(dst)


def test_recovery_state_errors_are_qemu_s(machines):
    src, dst, uri = pair(machines, start_paused=True)
    for m in (src, dst):
        with pytest.raises(MigrationError, match=r"^Migrate recover can only be run when"):
            m.migrate_recover("tcp:127.0.0.1:0")
        with pytest.raises(
            MigrationError, match=r"^Cannot resume if there is no paused migration$"
        ):
            m.migrate("tcp:127.0.0.1:1", resume=True)
    src.set_capabilities({"release-ram": True})
    with pytest.raises(MigrationError, match=r"^Cannot resume if there is no paused migration$"):
        src.migrate(uri, resume=True)


def test_migrate_cancel_in_postcopy_paused_stays_cancelling(machines):
    """QEMU 7.2: a cancel of a paused postcopy leaves it in cancelling; no resume after."""
    src, dst, uri = pair(machines, start_paused=True)
    dst_watch, watch = Watch(dst), Watch(src)
    src.migrate(uri)
    watch.wait_event("MIGRATION_PASS")
    outgoing(src).background.clear()
    src.migrate_start_postcopy()
    dst_watch.wait_status("postcopy-active")
    src.migrate_pause()
    watch.wait_status("postcopy-paused")
    src.migrate_cancel()
    assert src.query_migrate().status is MigrationStatus.CANCELLING
    with pytest.raises(MigrationError, match=r"^Cannot resume if there is no paused migration$"):
        src.migrate(uri, resume=True)
    assert src.query_status().status is RunState.FINISH_MIGRATE


class InjectingRelay(threading.Thread):
    """Relays one migration connection and lets the test add records of its own to the
    destination → source direction, between whole records (a hostile destination)."""

    def __init__(self, target: str) -> None:
        super().__init__(name="injecting-relay", daemon=True)
        host, port = target.removeprefix("tcp:").rsplit(":", 1)
        self._target = (host, int(port))
        self._server = socket.create_server(("127.0.0.1", 0))
        self.uri = f"tcp:127.0.0.1:{self._server.getsockname()[1]}"
        self._lock = threading.Lock()
        self._client: socket.socket | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        with self._server:
            client, _ = self._server.accept()
        upstream = socket.create_connection(self._target)
        self._client = client
        self.ready.set()
        threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()
        try:
            while data := client.recv(1 << 16):
                upstream.sendall(data)
        except OSError:
            pass
        upstream.close()

    def _down(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while (head := wire.read_exact(upstream, wire.RECORD.size)) is not None:
                _, length = wire.RECORD.unpack(head)
                body = wire.read_exact(upstream, length) or b""
                with self._lock:
                    client.sendall(bytes(head) + bytes(body))
        except (OSError, wire.StreamError):
            pass

    def inject(self, data: bytes) -> None:
        assert self._client is not None
        with self._lock:
            self._client.sendall(data)


def test_hostile_page_requests_are_refused_without_harm(machines):
    """A destination that asks for pages outside RAM, sends malformed requests, floods, or
    sends records that do not belong on the return path: each is refused (reported once),
    the migration goes on and completes with the source's RAM."""
    dst, direct = dest(machines, workload="zero", start_paused=True)
    reports: list[str] = []
    src = Machine(MachineOptions(ram_size=SIZE, workload=DIRTY), notify=reports.append)
    machines.append(src)
    for m in (src, dst):
        m.set_capabilities({"postcopy-ram": True, "events": True})
    src.set_parameters({"max-bandwidth": 4 * MiB})
    relay = InjectingRelay(direct)
    relay.start()
    dst_watch, watch = Watch(dst), Watch(src)
    src.migrate(relay.uri)
    watch.wait_event("MIGRATION_PASS")
    mig = outgoing(src)
    mig.background.clear()
    src.migrate_start_postcopy()
    dst_watch.wait_status("postcopy-active")
    pages = src.ram.pages
    bad = [
        postcopy.encode_request(np.array([pages + 5])),  # outside guest RAM
        wire.record(wire.Rec.REQUEST, struct.pack(">I", 0)),  # no page
        wire.record(wire.Rec.REQUEST, struct.pack(">II", 3, 1)),  # fewer pages than it says
        wire.record(wire.Rec.REQUEST, b"\x00"),  # truncated
        wire.json_record(wire.Rec.READY, {}),  # not a return-path record in postcopy
        wire.record(0x7F, b"x" * 100),  # unknown
    ]
    for data in bad:
        relay.inject(data)
    every_page = np.arange(pages)
    for _ in range(20):  # a flood: every page, twenty times over
        for start in range(0, pages, wire.MAX_BATCH):
            relay.inject(postcopy.encode_request(every_page[start : start + wire.MAX_BATCH]))
    mig.background.set()
    info = src.wait_migration(60)
    assert info.status is MigrationStatus.COMPLETED, info
    dst_watch.wait_status("completed")
    assert ram_hash(src) == ram_hash(dst)
    rp = mig._return_path
    assert rp is not None and rp.refused == len(bad)
    assert reports == [
        "warning: postcopy: refused a page request from the destination: "
        f"page {pages + 5} is outside guest RAM ({pages} pages)"
    ]
    assert info.ram is not None and info.ram.postcopy_requests >= 20 * pages


def test_bitmaps_of_the_wrong_size_are_refused():
    bits = np.zeros(100, dtype=bool)
    bits[[0, 99]] = True
    rec = postcopy.encode_bitmap(wire.Rec.DISCARD, bits)
    assert (postcopy.decode_bitmap(rec[wire.RECORD.size :], 100) == bits).all()
    with pytest.raises(wire.StreamError, match=r"^discard bitmap of 13 bytes for 200 pages$"):
        postcopy.decode_bitmap(rec[wire.RECORD.size :], 200)


def test_a_preempt_source_falls_back_to_the_main_stream_where_the_destination_lacks_it(machines):
    """QEMU 7.2's destination ignores the extra channel ("Extra incoming migration connection;
    ignoring") and the migration completes: requested pages go on the main stream."""
    notes: list[str] = []
    opts = MachineOptions(ram_size=SIZE, incoming="tcp:127.0.0.1:0", workload=DIRTY)
    dst = Machine(opts, notify=notes.append)
    machines.append(dst)
    dst.set_capabilities({"postcopy-ram": True})
    address = dst.query_migrate().socket_address
    assert address
    uri = address[0]
    src = make(machines, workload=DIRTY)
    src.set_capabilities({"postcopy-ram": True, "postcopy-preempt": True})
    src.set_parameters({"max-bandwidth": 4 * MiB})
    start_postcopy(src, uri)
    info = src.wait_migration(60)
    assert info.status is MigrationStatus.COMPLETED, info  # the digest matched
    assert outgoing(src)._preempt is None
    assert notes == [
        "socket_accept_incoming_migration: Extra incoming migration connection; ignoring"
    ]


def test_a_destination_waiting_for_a_preempt_channel_refuses_a_source_without(machines):
    """QEMU 7.2's would wait for ever for the channel; ours says why at once."""
    dst, uri = dest(machines)
    dst.set_capabilities({"postcopy-ram": True, "postcopy-preempt": True})
    src = make(machines)
    src.set_capabilities({"postcopy-ram": True})
    src.migrate(uri)
    info = src.wait_migration(30)
    assert info.error_desc == "postcopy-preempt mismatch: the capability is off on the source"


def resident(ram_address: int) -> int:
    """Resident bytes of the mapping at ``ram_address`` (this process's /proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0] and not line.startswith(("VmFlags",)):
            start, end = (int(x, 16) for x in line.split(" ", 1)[0].split("-"))
            inside = start <= ram_address < end
        elif inside and line.startswith("Rss:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("guest RAM mapping not found")


def test_release_ram_frees_the_source_s_pages_as_postcopy_sends_them(machines):
    src, _dst, uri = pair(machines, start_paused=True)
    src.set_capabilities({"release-ram": True})
    src.ram.array.fill(1)  # all of it resident, so what postcopy frees shows
    address = src.ram.array.ctypes.data
    watch = Watch(src)
    src.migrate(uri)
    watch.wait_event("MIGRATION_PASS")
    before = resident(address)
    src.migrate_start_postcopy()
    info = src.wait_migration(60)
    assert info.status is MigrationStatus.COMPLETED, info  # the destination's ACK came
    assert info.ram is not None
    # What postcopy sent left the source: its RAM shrank by about that much.
    assert before - resident(address) >= info.ram.postcopy_bytes // 2


def test_a_never_started_source_s_guest_runs_on_the_destination(machines):
    """QEMU 7.2's switch starts the destination's guest unless -S, whatever the source's
    state: a source that never ran (-S, prelaunch) does not leave it paused (prelaunch)."""
    dst, uri = dest(machines)
    src = make(machines, start_paused=True)
    for m in (src, dst):
        m.set_capabilities({"postcopy-ram": True})
    src.set_parameters({"max-bandwidth": 16 << 10})  # zeros at 5 bytes a page: seconds a pass
    dst_watch = Watch(dst)
    src.migrate(uri)
    src.migrate_start_postcopy()  # before precopy's first pass can end
    assert src.wait_migration(60).status is MigrationStatus.COMPLETED
    dst_watch.wait_status("completed")
    assert dst_watch.statuses() == ["active", "postcopy-active", "completed"]
    assert dst.query_status().status is RunState.RUNNING
    assert src.query_status().status is RunState.POSTMIGRATE
