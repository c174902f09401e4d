"""Duplicate pages under multifd (engine/dedupe.py): which pages may stand for another, a real
migration that sends them as COPY records, and what a hostile COPY record gets."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from test_machine import dest, make, migrate
from test_stream import SIZE, expect_failure, inject, plain, src  # noqa: F401 (fixtures)

from engine import wire
from engine.dedupe import Dedupe
from engine.guest import PAGE_SIZE, GuestRam

A, B = (np.random.default_rng(seed).bytes(PAGE_SIZE) for seed in (1, 2))


def ram_with(pages: dict[int, bytes]) -> GuestRam:
    ram = GuestRam(16 * PAGE_SIZE)
    for index, data in pages.items():
        ram.page(index)[:] = data
    return ram


def send(dedupe: Dedupe, *pages: int) -> dict[int, int]:
    """Pages handed to the channels: {duplicate: the page it copies}."""
    _, dups, sources, _ = dedupe.split(np.array(pages, dtype=np.intp))
    return dict(zip(dups.tolist(), sources.tolist(), strict=True))


def test_a_duplicate_copies_a_page_sent_before_the_last_barrier_only():
    ram = ram_with({0: A, 5: A, 6: A})
    dedupe = Dedupe(ram)
    assert send(dedupe, 0, 5) == {}  # the same generation: page 0 may still be in a channel
    dedupe.generation += 1
    send_pages, dups, sources, crcs = dedupe.split(np.array([6], dtype=np.intp))
    # Page 5 went as a page too, after 0: the table holds the latest page sent with A.
    assert dups.tolist() == [6] and sources.tolist() == [5] and len(send_pages) == 0
    assert (crcs == ram.crc_pages(np.array([6]))).all()  # the page's own CRC, for the digest


def test_a_page_sent_again_with_other_contents_is_no_source_any_more():
    ram = ram_with({0: A, 7: A})
    dedupe = Dedupe(ram)
    send(dedupe, 0)
    ram.page(0)[:] = B
    dedupe.generation += 1
    assert send(dedupe, 0) == {}  # B, new: sent
    dedupe.generation += 1
    assert send(dedupe, 7) == {}  # A is no longer what the destination holds in page 0


def test_a_page_sent_as_a_zero_page_is_no_source_any_more():
    ram = ram_with({0: A, 7: A})
    dedupe = Dedupe(ram)
    send(dedupe, 0)
    dedupe.forget(np.array([0]))  # it went on the main stream as a zero page
    dedupe.generation += 1
    assert send(dedupe, 7) == {}


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
        m.set_parameters({"multifd-channels": 2, "multifd-compression": "none"})
    migrate(source, dst, uri)  # completes with the digest matched and RAM equal
    info = source.query_migrate()
    assert info.ram is not None and info.ram.normal == 1024 + 512
    # The first pass sends at most the 1024 pages; the second pass only copies.
    assert info.ram.transferred < (1024 + 64) * PAGE_SIZE


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
