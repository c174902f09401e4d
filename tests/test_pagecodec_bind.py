"""engine/_pagecodec.c binds only a zlib-ng whose stream layout it knows (2.x)."""

from __future__ import annotations

import ctypes.util
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine import _pagecodec, compression  # engine.guest binds python-zlib-ng's zlib-ng
from engine.guest import PAGE_SHIFT, PAGE_SIZE, GuestRam
from engine.multifd import METHODS


def fake_zlibng(tmp_path: Path, version: str) -> Path:
    """A shared object that says it is zlib-ng ``version`` and has nothing else."""
    source = tmp_path / "fake.c"
    source.write_text(f'const char *zlibng_version(void) {{ return "{version}"; }}\n')
    lib = tmp_path / "libfake.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", lib, source], check=True)
    return lib


def test_another_major_version_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImportError, match=r"zlib-ng 3\.0\.0 found, the page codec needs 2\.x"):
        _pagecodec.bind(str(fake_zlibng(tmp_path, "3.0.0")))


def test_a_library_that_is_not_zlib_ng_is_refused() -> None:
    libc = ctypes.util.find_library("c")
    assert libc is not None
    with pytest.raises(ImportError, match="is not zlib-ng"):
        _pagecodec.bind(libc)


def test_a_refused_bind_keeps_the_codec_working(tmp_path: Path) -> None:
    with pytest.raises(ImportError):
        _pagecodec.bind(str(fake_zlibng(tmp_path, "1.2.13")))
    assert compression.CODECS["zlib"]  # bound at import, as the engine runs
    ram = bytearray(PAGE_SIZE)
    blob, sizes, crcs = _pagecodec.Deflater(1).compress(ram, [0])
    assert len(sizes) == len(crcs) == 1 and 0 < sizes[0] == len(blob)


def test_page_geometry_comes_from_the_codec() -> None:
    assert PAGE_SIZE == _pagecodec.PAGE_SIZE == 1 << PAGE_SHIFT


def fake_zstd(tmp_path: Path) -> Path:
    """A shared object that says it is zstd 1.5.7 and has nothing else."""
    source = tmp_path / "zstd.c"
    source.write_text("unsigned ZSTD_versionNumber(void) { return 10507; }\n")
    lib = tmp_path / "libzstdfake.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", lib, source], check=True)
    return lib


def test_the_zstd_streams_bind_only_a_whole_zstd(tmp_path: Path) -> None:
    libc = ctypes.util.find_library("c")
    assert libc is not None
    with pytest.raises(ImportError, match=r"is not zstd 1\.4 or later"):
        _pagecodec.bind_zstd(libc)
    with pytest.raises(ImportError, match="zstd lacks ZSTD_createCCtx"):
        _pagecodec.bind_zstd(str(fake_zstd(tmp_path)))
    # Refused whole: the zstd bound at import (engine.multifd) still serves.
    packer = METHODS["zstd"].packer
    assert packer is not None
    payload, _ = packer(1, 2)(GuestRam(PAGE_SIZE), np.array([0]))
    assert 0 < len(payload) < PAGE_SIZE
