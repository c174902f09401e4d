"""`multifd-compression x-auto` (an extension): per packet, zstd while the channel's socket
holds a backlog the wire has not taken, LZ4 otherwise; both kinds on one channel."""

from __future__ import annotations

import itertools
import logging
import re
import socket
from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import pytest
from test_machine import dest, make, migrate

from engine import multifd
from engine.guest import PAGE_SIZE, GuestRam
from engine.machine import Machine


def test_unsent_counts_what_the_peer_has_not_taken() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.create_connection(server.getsockname())
        receiver, _ = server.accept()
        with sender, receiver:
            assert multifd.unsent(sender) == 0
            sender.setblocking(False)
            sent = 0
            try:  # the receiver reads nothing: its window closes, the rest stays queued
                while True:
                    sent += sender.send(bytes(1 << 16))
            except BlockingIOError:
                pass
            assert 0 < multifd.unsent(sender) <= sent


def test_both_codecs_decode_into_their_pages() -> None:
    codec = multifd.METHODS["x-auto"]
    assert codec.fast is multifd.LZ4 and codec.level == "multifd-zstd-level"
    src, pages = GuestRam(8 * PAGE_SIZE), np.array([1, 3, 4])
    src.buf[PAGE_SIZE : 5 * PAGE_SIZE] = (b"x-auto packet " * 1200)[: 4 * PAGE_SIZE]
    for c in (codec, codec.fast):
        assert c.packer is not None and c.unpacker is not None
        dst = GuestRam(8 * PAGE_SIZE)
        payload, crcs = c.packer(1, 2)(src, pages)
        assert len(payload) < len(pages) * PAGE_SIZE // 4
        assert (c.unpacker(2)(dst, pages, bytearray(payload)) == crcs).all()
        assert (dst.page_array[pages] == src.page_array[pages]).all()
        assert not dst.page_array[[0, 2, 5, 6, 7]].any()  # nothing outside them


def migrate_x_auto(
    machines, caplog, workload: str, channels: int, seed: int
) -> tuple[Machine, list[tuple[int, int]]]:
    """An x-auto migration; the source and each channel's (fast packets, packets)."""
    caplog.set_level(logging.INFO, logger="engine.multifd")
    dst, uri = dest(machines)
    src = make(machines, workload=workload, seed=seed)
    for m in (src, dst):
        m.set_capabilities({"multifd": True})
        m.set_parameters({"multifd-channels": channels, "multifd-compression": "x-auto"})
    migrate(src, dst, uri)
    counts = [
        (int(found[1]), int(found[2]))
        for r in caplog.records
        if (found := re.search(r"x-auto sent (\d+) of (\d+) packets fast", r.getMessage()))
    ]
    assert len(counts) == channels, counts
    return src, counts


def test_a_channel_interleaves_zstd_and_lz4_packets(machines, monkeypatch, caplog) -> None:
    # By construction: each socket's backlog alternates, so each channel's packets alternate
    # between the codecs; the zstd stream goes on across the LZ4 packets between its own. (One
    # cycle per socket: a cycle shared by the channel threads hands out its values in whatever
    # order the threads happen to ask, and may give one channel every zero.)
    backlogs: defaultdict[int, Iterator[int]] = defaultdict(
        lambda: itertools.cycle([0, multifd.AUTO_BACKLOG])
    )
    monkeypatch.setattr(multifd, "unsent", lambda sock: next(backlogs[sock.fileno()]))
    src, counts = migrate_x_auto(machines, caplog, "random-writer,rate=2000,wss=8M", 2, 5)
    info = src.query_migrate()
    assert info.ram is not None and 0 < info.ram.multifd_bytes < info.ram.normal * PAGE_SIZE
    assert all(0 < fast < total for fast, total in counts), counts


@pytest.mark.parametrize("backlog", [0, multifd.AUTO_BACKLOG])
def test_the_backlog_picks_the_codec(machines, monkeypatch, caplog, backlog: int) -> None:
    monkeypatch.setattr(multifd, "unsent", lambda sock: backlog)
    _, [(fast, total)] = migrate_x_auto(machines, caplog, "idle", 1, 6)
    assert total > 0 and fast == (total if backlog < multifd.AUTO_BACKLOG else 0)
