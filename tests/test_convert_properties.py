"""Property tests: raw -> dynamic -> fixed -> raw is byte-identical for random
sparse contents, block sizes 512 KiB..2 MiB and sizes on and off CHS
boundaries; qemu-img reads the intermediate VHDs to the same bytes."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

import vhdkit
from helpers_vhd import qemu_raw
from helpers_write import dynamic_layout
import vhdref
import pytest

# Reaches the native core: runs again in scripts/test's sanitizer pass.
pytestmark = pytest.mark.native

KiB = 1024


def _chs_exact_sizes():
    """Sector counts the spec's CHS algorithm represents exactly."""
    out = []
    for sectors in range(2048, 14000, 97):
        c, h, s = vhdref.chs(sectors)
        out.append(c * h * s)
    return sorted(set(out))


CHS_EXACT = _chs_exact_sizes()

sizes = st.one_of(
    st.sampled_from(CHS_EXACT).map(lambda n: n * 512),            # on a CHS boundary
    st.integers(min_value=1, max_value=6 * 1024 * 1024),          # anywhere, even odd byte counts
)

extents = st.lists(st.tuples(st.floats(0, 1), st.integers(1, 300 * KiB), st.integers(0, 255)), max_size=8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=sizes, block_size=st.sampled_from([512 * KiB, 1024 * KiB, 2048 * KiB]), extents=extents,
       sparse_file=st.booleans())
def test_raw_dynamic_fixed_raw_round_trip(size, block_size, extents, sparse_file):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        data = bytearray(size)
        for pos, length, fill in extents:
            a = int(pos * (size - 1))
            n = min(length, size - a)
            data[a:a + n] = os.urandom(n) if fill == 0 else bytes([fill]) * n
        src = d / "src.raw"
        with open(src, "wb") as f:
            if sparse_file:                      # zeros as holes
                f.truncate(size)
                for pos, length, fill in extents:
                    a = int(pos * (size - 1))
                    f.seek(a)
                    f.write(data[a:a + min(length, size - a)])
            else:
                f.write(data)
        padded = bytes(data) + bytes(-size % 512)        # VHDs hold whole sectors

        dyn = d / "a.vhd"
        r = vhdkit.convert(src, dyn, type="dynamic", block_size=block_size)
        assert r.virtual_size == len(padded)
        bs, bat = dynamic_layout(dyn)
        assert bs == block_size
        for i, e in enumerate(bat):
            block = padded[i * bs:(i + 1) * bs]
            assert (e != 0xFFFFFFFF) == any(block), i
        assert qemu_raw(dyn, d / "q1.raw").read_bytes() == padded

        fixed = d / "b.vhd"
        vhdkit.convert(dyn, fixed, type="fixed")
        assert os.stat(fixed).st_size == len(padded) + 512
        assert qemu_raw(fixed, d / "q2.raw").read_bytes() == padded

        back = d / "c.raw"
        vhdkit.convert(fixed, back, out_format="raw")
        assert back.read_bytes() == padded
        assert vhdkit.compare(src, back).identical
