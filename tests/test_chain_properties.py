"""Model-based: random sequences of snapshot / write(offset, data) /
coalesce-into-parent applied to vhdkit images and to an in-memory model
agree at every step; layers have different block sizes and the leaf may
grow.  At the end the chain reads the same through the reference reader
(and libvhdi for 4 KiB-aligned writes), and its coalesced output through
qemu-img."""
from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhdkit.vhd import chain, read

from helpers_chain import MiB, ChainModel, chain_paths_leaf_first
from helpers_vhd import pyvhdi_read, qemu_raw
from vhdref import RefVhd
import pytest

# Reaches the native core: runs again in scripts/test's sanitizer pass.
pytestmark = pytest.mark.native

BLOCKS = [4096, 64 << 10, 512 << 10, 2 * MiB]


def _ops(aligned: int, block_sizes):
    write = st.tuples(st.just("write"), st.integers(0, 3 * MiB - 1), st.integers(1, 400 << 10),
                      st.integers(0, 255))
    snap = st.tuples(st.just("snapshot"), st.sampled_from(block_sizes), st.sampled_from([0, 0, 512 << 10]),
                     st.just(0))
    merge = st.tuples(st.just("merge"), st.just(0), st.just(0), st.just(0))
    return st.lists(st.one_of(write, write, snap, merge), min_size=1, max_size=12)


def _run(ops, *, aligned: int, base_block: int, check_libvhdi: bool):
    with tempfile.TemporaryDirectory() as d:
        m = ChainModel(Path(d), 2 * MiB, block_size=base_block)
        for op, a, b, c in ops:
            if op == "write":
                off = (a % m.size) // aligned * aligned
                n = max(aligned, b // aligned * aligned)
                n = min(n, m.size - off)
                m.write(off, bytes([c]) * (n // 2) + bytes(range(256)) * (n // 512) + bytes(n - n // 2 - n // 512 * 256))
            elif op == "snapshot" and len(m.paths) < 5:
                grow = b if not check_libvhdi else 0
                m.snapshot(size=m.size + grow if grow else None, block_size=a)
            elif op == "merge" and len(m.paths) > 1:
                if m.merge_leaf():
                    assert read.check(m.leaf).ok
            assert m.read() == bytes(m.model), ops
        want = bytes(m.model)
        assert RefVhd(m.leaf).read() == want
        assert read.check(m.leaf).ok
        if check_libvhdi:
            assert pyvhdi_read(chain_paths_leaf_first(m), 0, len(want)) == want
        out = Path(d) / "flat.vhd"
        r = chain.coalesce(m.leaf, out)
        assert r.bytes_read <= 1.05 * r.data_needed + 512 * len(m.paths) * (m.size // 4096 + 1)
        assert qemu_raw(out, Path(d) / "flat.raw").read_bytes() == want


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops(1, BLOCKS), base_block=st.sampled_from([512 << 10, 2 * MiB]))
def test_random_chain_operations_match_model(ops, base_block):
    _run(ops, aligned=1, base_block=base_block, check_libvhdi=False)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops(4096, [2 * MiB]))
def test_whole_byte_chains_read_the_same_in_libvhdi(ops):
    # libvhdi mis-reads sub-byte bitmaps and some block sizes (see the core
    # issue): 4 KiB-aligned writes, 2 MiB blocks
    _run(ops, aligned=4096, base_block=2 * MiB, check_libvhdi=True)
