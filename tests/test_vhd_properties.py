"""Property-based round trips: random disk contents (sparse and dense, random
block sizes, sector-granular bitmaps, chains) written by the independent
fixture writer must read back through vhdkit exactly."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vhdkit

from vhdref import RefVhd, write_vhd

# Reaches the native core: runs again in scripts/test's sanitizer pass.
pytestmark = pytest.mark.native

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

block_sizes = st.sampled_from([512, 4096, 8192, 64 << 10, 512 << 10, 2 << 20])


@st.composite
def disks(draw, max_sectors=4096):
    """(size, {sector: data}) with sparse or dense, runs or single sectors."""
    n = draw(st.integers(min_value=1, max_value=max_sectors))
    density = draw(st.sampled_from([0.0, 0.02, 0.3, 1.0]))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    import random

    rng = random.Random(seed)
    sectors = {}
    s = 0
    while s < n:
        run = rng.randint(1, 64)
        if rng.random() < density:
            for k in range(s, min(n, s + run)):
                sectors[k] = rng.randbytes(512) if rng.random() < 0.9 else bytes(512)
        s += run
    return n * 512, sectors


def _expected(size, sectors, base=None):
    out = bytearray(base[:size] if base is not None else bytes(size))
    if len(out) < size:
        out += bytes(size - len(out))
    for s, d in sectors.items():
        out[s * 512:(s + 1) * 512] = d
    return bytes(out)


@SETTINGS
@given(disk=disks(), bs=block_sizes, kind=st.sampled_from(["dynamic", "fixed"]))
def test_written_image_reads_back(disk, bs, kind):
    size, sectors = disk
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.vhd"
        write_vhd(p, size, sectors, kind=kind, block_size=bs)
        want = _expected(size, sectors)
        with vhdkit.open(p) as s:
            assert s.virtual_size == size
            assert s.read() == want
        extents = vhdkit.map(p)
        assert sum(e.length for e in extents) == size
        # every byte outside allocated extents is zero
        for e in extents:
            if not e.allocated:
                assert want[e.offset:e.offset + e.length].count(0) == e.length


@SETTINGS
@given(layers=st.lists(st.tuples(disks(max_sectors=2048), block_sizes), min_size=2, max_size=4),
       reads=st.lists(st.tuples(st.integers(0, 2048 * 512), st.integers(1, 200_000)), max_size=5))
def test_chain_reads_back_and_matches_reference(layers, reads):
    with tempfile.TemporaryDirectory() as d:
        prev = None
        want = None
        for i, ((size, sectors), bs) in enumerate(layers):
            p = Path(d) / f"l{i}.vhd"
            write_vhd(p, size, sectors, kind="dynamic" if prev is None else "differencing", block_size=bs,
                      parent=str(prev) if prev else None)
            want = _expected(size, sectors, want)
            prev = p
        with vhdkit.open(prev) as s:
            assert s.depth == len(layers)
            got = s.read()
            assert got == want == RefVhd(prev).read()
            for off, n in reads:
                s.seek(off)
                assert s.read(n) == want[off:off + n]
