"""Duplicate pages under multifd (engine/dedupe.py): which pages may stand for another, a real
migration that sends them as COPY records, and what a hostile COPY record gets."""

from __future__ import annotations

import struct
import threading
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from test_machine import dest, make, migrate
from test_stream import SIZE, expect_failure, inject, plain, src  # noqa: F401 (fixtures)

from engine import wire
from engine.dedupe import Dedupe
from engine.guest import PAGE_SIZE, GuestRam

A, B = (np.random.default_rng(seed).bytes(PAGE_SIZE) for seed in (1, 2))


class Source:
    """A Dedupe over a small guest whose pages 0 and 7 both hold A, driven step by step."""

    def __init__(self) -> None:
        self.ram = GuestRam(16 * PAGE_SIZE)
        self.ram.page(0)[:] = A
        self.ram.page(7)[:] = A
        self.bitmap = np.zeros(self.ram.pages, bool)
        self.dedupe = Dedupe(self.ram, self.bitmap)

    def scan(self, *pages: int) -> tuple[dict[int, int], npt.NDArray[np.uint32]]:
        """Pages about to go to the channels: ({duplicate: the page it copies}, the CRCs of
        those sent)."""
        _, crcs, dups, sources, dup_crcs = self.dedupe.split(np.array(pages, dtype=np.intp))
        assert (dup_crcs == self.ram.crc_pages(dups)).all()  # their own, for the digest
        return dict(zip(dups.tolist(), sources.tolist(), strict=True)), crcs

    def sent(self, page: int, crcs: npt.NDArray[np.uint32], flip: int = 0) -> None:
        """Page ``page``'s channel sent it (with a CRC off by ``flip``: it changed meanwhile)."""
        self.dedupe.confirm(np.array([page]), crcs, crcs ^ flip, self.dedupe.generation)

    def eos(self) -> None:
        self.dedupe.generation += 1


def test_a_page_sent_confirmed_and_past_an_eos_is_copied():
    guest = Source()
    _, crcs = guest.scan(0)
    guest.sent(0, crcs)
    guest.eos()
    assert guest.scan(7)[0] == {7: 0}


def scenario_unconfirmed(guest: Source) -> None:
    guest.scan(0)  # its channel has not sent it yet
    guest.eos()


def scenario_same_generation(guest: Source) -> None:
    _, crcs = guest.scan(0)
    guest.sent(0, crcs)  # sent, but no EOS since: a COPY could overtake its packet


def scenario_changed_before_its_send(guest: Source) -> None:
    _, crcs = guest.scan(0)
    guest.sent(0, crcs, flip=1)
    guest.eos()


def scenario_due_again(guest: Source) -> None:
    _, crcs = guest.scan(0)
    guest.sent(0, crcs)
    guest.eos()
    guest.bitmap[0] = True  # dirty again: its next copy may land while the COPY is applied


def scenario_sent_again(guest: Source) -> None:
    _, crcs = guest.scan(0)
    guest.sent(0, crcs)
    guest.eos()
    guest.scan(0)  # on its way again before the next EOS


def scenario_confirmed_late(guest: Source) -> None:
    _, crcs = guest.scan(0)
    guest.eos()
    guest.scan(0)  # scanned again before its first send was confirmed
    guest.dedupe.confirm(np.array([0]), crcs, crcs, 0)
    guest.eos()


def scenario_zero_since(guest: Source) -> None:
    _, crcs = guest.scan(0)
    guest.sent(0, crcs)
    guest.dedupe.forget(np.array([0]))  # it went on the main stream as a zero page
    guest.eos()


@pytest.mark.parametrize(
    "scenario",
    [
        scenario_unconfirmed,
        scenario_same_generation,
        scenario_changed_before_its_send,
        scenario_due_again,
        scenario_sent_again,
        scenario_confirmed_late,
        scenario_zero_since,
    ],
)
def test_a_page_that_may_not_hold_what_was_scanned_is_no_source(scenario):
    guest = Source()
    scenario(guest)
    assert 0 not in guest.scan(7)[0].values()


def test_multifd_sends_duplicates_as_copies(machines):
    dst, uri = dest(machines, ram_size=16 << 20, workload="zero")
    source = make(machines, ram_size=16 << 20, workload="zero")
    originals = np.random.default_rng(3).integers(0, 256, (512, PAGE_SIZE), dtype=np.uint8)
    source.ram.page_array[:512] = originals
    source.ram.page_array[3072:3584] = originals

    def rewrite(name: str, data: dict[str, Any]) -> None:
        # At the first sync (setup, before any page is sent) the copies are written again, so
        # the second pass sends them once more: after EOSes, when every original is placed.
        if name == "MIGRATION_PASS" and data["pass"] == 1:
            source.ram.write(3072 * PAGE_SIZE, originals.tobytes())

    source.events.subscribe(rewrite)
    for m in (source, dst):
        m.set_capabilities({"multifd": True})
        m.set_parameters({"multifd-channels": 2, "multifd-compression": "zstd"})
    migrate(source, dst, uri)  # completes with the digest matched and RAM equal
    info = source.query_migrate()
    assert info.ram is not None and info.ram.normal == 1024 + 512
    # The first pass sends at most the 1024 pages; the second pass only copies.
    assert info.ram.transferred < (1024 + 64) * PAGE_SIZE


def test_a_guest_rewriting_duplicates_while_migrating_ends_with_equal_ram(machines):
    # The copies flip between their originals' contents and others' while pages go: every
    # COPY must read what its source page holds as scanned, or the digest (or RAM) differs.
    dst, uri = dest(machines, ram_size=16 << 20, workload="zero")
    source = make(machines, ram_size=16 << 20, workload="zero")
    rng = np.random.default_rng(4)
    originals = rng.integers(0, 256, (512, PAGE_SIZE), dtype=np.uint8)
    others = rng.integers(0, 256, (512, PAGE_SIZE), dtype=np.uint8)
    source.ram.page_array[:512] = originals
    source.ram.page_array[3072:3584] = originals
    for m in (source, dst):
        m.set_capabilities({"multifd": True})
        m.set_parameters({"multifd-channels": 2, "multifd-compression": "zstd"})
    done, flipping = threading.Event(), threading.Event()

    def vcpu() -> None:  # a guest writer: only inside the gate's slices, as the workloads
        gate, turn = source.vm.gate, 0
        while not done.is_set():
            if not gate.enter():
                done.wait(0.001)  # stopped: stop-and-copy runs, nothing may change
                continue
            try:
                k = turn % 512
                data = (originals if (turn // 512) % 2 else others)[k]
                source.ram.write((3072 + k) * PAGE_SIZE, data.tobytes())
                turn += 1
                if turn == 1024:
                    flipping.set()
            finally:
                gate.leave()

    writer = threading.Thread(target=vcpu)
    writer.start()
    try:
        assert flipping.wait(10)  # the guest runs and flips its copies from now on
        migrate(source, dst, uri)  # completed, the digest matched and RAM is equal
    finally:
        done.set()
        writer.join(10)


def copy_record(n: int, pages: list[int], sources: list[int], extra: bytes = b"") -> bytes:
    body = struct.pack(">I", n) + struct.pack(f">{len(pages)}I", *pages)
    body += struct.pack(f">{len(sources)}I", *sources) + extra
    return wire.record(wire.Rec.COPY, body)


@pytest.mark.parametrize(
    ("record", "text"),
    [
        (copy_record(0, [], []), "page copy record of 0 pages"),
        (copy_record(1025, [0] * 1025, [1] * 1025), "page copy record of 1025 pages"),
        (copy_record(1, [0], [1], b"\0\0\0\0"), "page copy record of 1 pages in 16 bytes"),
        (copy_record(1, [0], [SIZE // PAGE_SIZE]), "outside guest RAM"),
        (wire.record(wire.Rec.COPY, b"\0\0"), "truncated page copy record"),
    ],
    ids=["none", "too-many", "length", "outside", "truncated"],
)
def test_a_malformed_copy_record_fails_the_stream(plain, record, text):  # noqa: F811
    expect_failure(inject(plain, record), text)


def test_a_copy_the_source_never_sent_is_caught_by_the_digest(plain, src):  # noqa: F811
    nonzero = np.flatnonzero(~src.zero_mask(np.arange(src.pages)))
    a, b = (int(page) for page in nonzero[:2])
    assert bytes(src.page(a)) != bytes(src.page(b))
    expect_failure(inject(plain, copy_record(1, [a], [b])), "RAM digest mismatch")
