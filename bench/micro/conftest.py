"""Inputs for the native micro-benchmarks, written with the harness's own
independent VHD writer (fixtures/vhdref.py), once per session."""
from __future__ import annotations

import os

import pytest

import bench  # noqa: F401  (puts fixtures/ on the path)
import vhdref
from bench.gen import ChainSpec, Inputs, MiB


@pytest.fixture(scope="session")
def native():
    from vhdkit import native
    return native


@pytest.fixture(scope="session")
def big_bat(tmp_path_factory):
    """A dynamic VHD with a 1,048,576-entry BAT (512 GiB, 512 KiB blocks), 1% of
    blocks allocated (bitmaps written, data areas left as file holes)."""
    bs = 512 * 1024
    n = 1 << 20
    alloc = list(range(0, n, 100))
    path = tmp_path_factory.mktemp("micro") / "bat1m.vhd"
    lay = vhdref.Layout(n * bs, bs, alloc)
    with open(path, "wb") as f:
        offs = lay.write_metadata(f, str(path))
        bitmap = b"\xff" * lay.bitmap_bytes
        for i in alloc:
            os.pwrite(f.fileno(), bitmap, offs[i])
    return path


@pytest.fixture(scope="session")
def diff_chain(tmp_path_factory):
    """Depth-3 chain, 128 MiB, half the blocks of each layer allocated; children set
    their bitmaps in 64 KiB runs (half of each block), so reads and maps must scan bitmaps."""
    inp = Inputs(tmp_path_factory.mktemp("micro-chain"), log=lambda *_: None)
    return inp.chain(ChainSpec(128 * MiB, allocs=(0.5, 0.5, 0.5), seed=21))
