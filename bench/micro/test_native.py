"""pytest-benchmark micro-benchmarks of the native hot paths (``pytest bench/micro``).

They call the C core through ``vhdkit.native.lib`` (the cffi boundary), so they
time C work plus one cffi call, without process start-up.  The C core does not
export its internal footer decoder, checksum or bitmap helpers, so where a hot
path has no public entry point of its own the closest public one is timed and
the test's docstring says which.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import bench  # noqa: F401  (puts fixtures/ on the path)
import vhdref

pytest.importorskip("pytest_benchmark")

EXT_CAP = 1 << 17


def _open(native, path):
    img = native.ffi.new("vk_image **")
    err = native.new_err()
    native.check(native.lib.vk_image_open(os.fsencode(str(path)), native.ffi.NULL, img, err), err)
    return native.ffi.gc(img[0], native.lib.vk_image_close)


def _map_all(native, img) -> int:
    lib, ffi = native.lib, native.ffi
    out = ffi.new("vk_extent[]", EXT_CAP)
    n = ffi.new("size_t *")
    err = native.new_err()
    size = lib.vk_image_size(img)
    pos, total = 0, 0
    while pos < size:
        native.check(lib.vk_image_map(img, pos, out, EXT_CAP, n, err), err)
        if n[0] == 0:
            break
        last = out[n[0] - 1]
        pos = last.offset + last.length
        total += n[0]
    return total


def test_footer_parse_and_checksum(benchmark, native, tmp_path):
    """Footer decode + checksum verification.  No public entry point decodes a
    footer alone, so this times ``vk_probe`` (open, pread of the 512-byte footer,
    cookie + checksum check, close): the closest public path."""
    path = tmp_path / "fixed.vhd"
    with open(path, "wb") as f:
        f.truncate(8 << 20)
        f.seek(8 << 20)
        f.write(vhdref.footer(8 << 20, vhdref.FIXED, __import__("uuid").uuid4(), None))
    lib = native.lib
    t = native.ffi.new("uint32_t *")
    err = native.new_err()
    p = os.fsencode(str(path))

    def probe():
        native.check(lib.vk_probe(p, t, err), err)
        return t[0]
    assert benchmark(probe) == vhdref.FIXED


def test_bat_load_1m_entries(benchmark, native, big_bat):
    """Opening a dynamic VHD with a 1M-entry BAT: footer, header, 4 MiB BAT read
    and every entry range-checked (``vk_image_open``)."""
    lib, ffi = native.lib, native.ffi
    p = os.fsencode(str(big_bat))
    err = native.new_err()

    def open_close():
        img = ffi.new("vk_image **")
        native.check(lib.vk_image_open(p, ffi.NULL, img, err), err)
        size = lib.vk_image_size(img[0])
        lib.vk_image_close(img[0])
        return size
    assert benchmark(open_close) == 512 << 30


def test_bat_walk_1m_entries(benchmark, native, big_bat):
    """Walk all 1M BAT entries into extents (``vk_image_map`` over the whole disk)."""
    img = _open(native, big_bat)
    n = benchmark(_map_all, native, img)
    assert n >= 2 * (1 << 20) // 100   # allocated runs and the holes between them


def test_bitmap_scan_differencing_chain(benchmark, native, diff_chain):
    """Sector-bitmap scan: mapping a depth-3 chain whose children set half of each
    allocated block in 64 KiB runs, so every child block's bitmap is scanned
    (``vk_image_map`` on the leaf; no bitmap-only entry point is public)."""
    img = _open(native, diff_chain["leaf"])
    n = benchmark(_map_all, native, img)
    assert n > 0


@pytest.mark.parametrize("kind", ["zero", "last-byte-set"])
def test_zero_block_detection_2mib(benchmark, native, kind):
    """``vk_is_zero`` on a 2 MiB block: all zeros (full scan) or non-zero only in
    the last byte (full scan too, then the answer flips)."""
    buf = bytearray(2 << 20)
    if kind != "zero":
        buf[-1] = 1
    cbuf = native.ffi.from_buffer(buf)
    r = benchmark(native.lib.vk_is_zero, cbuf, len(buf))
    assert r == (1 if kind == "zero" else 0)


def test_zero_block_detection_numpy_baseline(benchmark):
    """Reference point for the test above: numpy's ``not a.any()`` on 2 MiB."""
    a = np.zeros(2 << 20, dtype=np.uint8)
    assert benchmark(lambda: not a.any()) is True
