"""The image the QEMU comparison loads into both guests: real files, no packed ones, zero runs."""

from __future__ import annotations

import gzip
import random

from hmp.lab.qemu_compare import PAGE, build_image


def test_image_keeps_text_and_binaries_and_leaves_out_compressed_files(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    rng = random.Random(3)
    text = b"".join(b"int field_%d; /* a header line */\n" % i for i in range(400))
    binary = bytes(rng.choice(b"\x00\x48\x89\xe5\xc3\x0f") for _ in range(3 * PAGE))
    (files / "a.h").write_bytes(text)
    (files / "b.so").write_bytes(binary)
    (files / "c.gz").write_bytes(gzip.compress(rng.randbytes(4 * PAGE)))
    (files / "tiny").write_bytes(b"under a page")
    image = build_image(tmp_path / "image.bin", size=1 << 20, sources=[str(files)])
    data = image.read_bytes()
    assert len(data) == 1 << 20
    assert text in data and binary in data
    assert b"\x1f\x8b" not in data  # no gzip member, and so none of its bytes
    assert b"under a page" not in data
    # Each file starts on a page boundary and is followed by a run of zero pages.
    for blob in (text, binary):
        at = data.index(blob)
        assert at % PAGE == 0
        tail = at + len(blob) + (-len(blob) % PAGE)
        assert data[tail : tail + PAGE] == bytes(PAGE)
