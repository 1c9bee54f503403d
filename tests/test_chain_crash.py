"""The in-place merge (coalesce --into-parent) interrupted after N writes,
for every N over a small chain: each time the parent opens and checks
clean, every parent sector is either its old content or the child's, the
child still reads as before, and a rerun completes the merge."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

import vhdkit
from vhdkit import errors
from vhdkit.vhd import chain, read

from helpers_chain import MiB, ChainModel
from vhdref import RefVhd

# Reaches the native core: runs again in scripts/test's sanitizer pass.
pytestmark = pytest.mark.native


def _build(tmp, parent_kind):
    """A chain whose leaf has data in blocks the parent has and lacks, with
    sub-block runs, different block sizes, and a leaf larger than needed."""
    rng = random.Random(3 if parent_kind == "dynamic" else 4)
    m = ChainModel(tmp, 2 * MiB, block_size=512 << 10)
    m.write(0, rng.randbytes(600 << 10))
    if parent_kind == "differencing":
        m.snapshot(block_size=256 << 10)
        m.write(300 << 10, rng.randbytes(100 << 10))
    m.snapshot(block_size=64 << 10)
    for off, n in ((512, 700), (100 << 10, 70 << 10), (1300 << 10, 5000), ((2 * MiB) - 4096, 4096)):
        m.write(off, rng.randbytes(n))
    return m


def _sectors(b: bytes):
    return [b[i:i + 512] for i in range(0, len(b), 512)]


@pytest.mark.parametrize("parent_kind", ["dynamic", "differencing"])
def test_merge_interrupted_after_every_write_count_is_recoverable(tmp_path, abort_after_writes, parent_kind):
    src = tmp_path / "src"
    src.mkdir()
    m = _build(src, parent_kind)
    names = [p.name for p in m.paths]
    want = bytes(m.model)
    with vhdkit.open(m.paths[-2]) as f:
        parent_old = f.read()
    # how many writes does an uninterrupted merge take?
    full = tmp_path / "full"
    shutil.copytree(src, full)
    total = chain.coalesce_into_parent(full / names[-1]).writes
    assert total >= 6
    old_s, new_s = _sectors(parent_old), _sectors(want)
    for n in range(total + 1):
        d = tmp_path / f"n{n}"
        shutil.copytree(src, d)
        child, parent = d / names[-1], d / names[-2]
        abort_after_writes(n)
        if n < total:
            with pytest.raises(errors.OperationInterrupted):
                chain.coalesce_into_parent(child)
            assert os.path.exists(chain.journal_path(parent))
        else:
            chain.coalesce_into_parent(child)
        abort_after_writes(None)
        rep = read.check(parent)
        assert rep.ok, (n, rep.to_dict())
        assert read.check(child).ok, n
        with vhdkit.open(child) as f:
            assert f.read() == want, n
        with vhdkit.open(parent) as f:
            mid = _sectors(f.read())
        assert all(s in (o, w) for s, o, w in zip(mid, old_s, new_s)), n
        assert RefVhd(parent).read() == b"".join(mid)
        r = chain.coalesce_into_parent(child)
        assert r.resumed == (n < total), n
        with vhdkit.open(parent) as f:
            assert f.read() == want, n
        assert read.check(parent).ok and not os.path.exists(chain.journal_path(parent))
        shutil.rmtree(d)


def test_merge_journal_of_another_child_is_refused(tmp_path, abort_after_writes):
    m = _build(tmp_path, "dynamic")
    abort_after_writes(2)
    with pytest.raises(errors.OperationInterrupted):
        chain.coalesce_into_parent(m.leaf)
    abort_after_writes(None)
    other = tmp_path / "other.vhd"
    chain.snapshot(m.paths[0], other)
    with vhdkit.open(other, "r+") as f:
        f.pwrite(b"o" * 512, 0)
    with pytest.raises(errors.ConflictError, match="another merge"):
        chain.coalesce_into_parent(other)
    assert chain.coalesce_into_parent(m.leaf).resumed


@pytest.mark.slow
def test_merge_killed_by_sigkill_then_rerun_completes(tmp_path):
    """A real kill -9 at varying moments of a CLI merge of a larger chain."""
    rng = random.Random(9)
    src = tmp_path / "src"
    src.mkdir()
    m = ChainModel(src, 128 * MiB, block_size=2 * MiB)
    for off in range(0, 128 * MiB, 4 * MiB):
        m.write(off, rng.randbytes(MiB))
    m.snapshot(block_size=512 << 10)
    for off in range(MiB, 126 * MiB, 3 * MiB):
        m.write(off, rng.randbytes(1500 << 10))
    want = bytes(m.model)
    jp = chain.journal_path(src / "l0.vhd")
    killed_mid_merge = 0
    for i, delay in enumerate((0.0, 0.002, 0.01, 0.03)):
        d = tmp_path / f"k{i}"
        shutil.copytree(src, d)
        jp = chain.journal_path(d / "l0.vhd")
        p = subprocess.Popen([sys.executable, "-m", "vhdkit", "coalesce", str(d / "l1.vhd"), "--into-parent"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while p.poll() is None and not os.path.exists(jp):
            time.sleep(0.0005)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        killed_mid_merge += os.path.exists(jp)
        assert read.check(d / "l0.vhd").ok
        with vhdkit.open(d / "l1.vhd") as f:
            assert f.read() == want
        r = subprocess.run([sys.executable, "-m", "vhdkit", "coalesce", str(d / "l1.vhd"), "--into-parent"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        with vhdkit.open(d / "l0.vhd") as f:
            assert f.read() == want
        assert read.check(d / "l0.vhd").ok and not os.path.exists(jp)
        shutil.rmtree(d)
    assert killed_mid_merge >= 1
