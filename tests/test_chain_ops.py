"""Chains: snapshot, writes through vhdkit.open(path, "r+"), coalesce into a
new image and into the parent, reparent, chain listing, bad input.

Every chain is read back through vhdkit and the spec-literal reference
reader (fixtures/vhdref.py); coalesced outputs through qemu-img and vhdiinfo;
chains with whole-byte bitmaps through libvhdi (pyvhdi)."""
from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys

import pytest

import vhdkit
from vhdkit import errors
from vhdkit.vhd import chain, read, write

from helpers_chain import MiB, ChainModel, chain_paths_leaf_first, digest, random_writes
from helpers_vhd import pyvhdi_read, qemu_info, qemu_raw, vhdiinfo
from vhdref import RefVhd, write_vhd

# Reaches the native core: runs again in scripts/test's sanitizer pass.
pytestmark = pytest.mark.native


def cli(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "vhdkit", *map(str, args)], capture_output=True, text=True)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def _header(path):
    with open(path, "rb") as fh:
        fh.seek(512)
        return fh.read(1024)


def _locators(path):
    h = _header(path)
    out = {}
    with open(path, "rb") as fh:
        blob = fh.read()
    for i in range(8):
        code, space, length, _r, off = struct.unpack(">4sIIIQ", h[576 + 24 * i:600 + 24 * i])
        if code != b"\0\0\0\0":
            raw = blob[off:off + length]
            out[code.decode()] = raw.decode("utf-8" if code == b"MacX" else "utf-16-le")
    return out


# ---- snapshot -----------------------------------------------------------------

def test_snapshot_records_parent_identity_name_and_three_locators(tmp_path):
    base = tmp_path / "base.vhd"
    write.create(base, 4 * MiB)
    r = chain.snapshot(base, tmp_path / "snap.vhd")
    pi, ci = read.info(base), read.info(tmp_path / "snap.vhd")
    assert ci.disk_type == "differencing"
    assert ci.parent_uuid == pi.uuid and ci.parent_timestamp == pi.timestamp
    assert ci.parent_name == "base.vhd" and ci.uuid != pi.uuid and r.uuid == ci.uuid
    locs = _locators(tmp_path / "snap.vhd")
    assert locs["W2ru"] == ".\\base.vhd"
    assert locs["W2ku"] == str(base.resolve())
    assert locs["MacX"] == "file://" + str(base.resolve())
    assert read.check(tmp_path / "snap.vhd").ok
    # an independent reader resolves the parent (W2ru) and agrees
    assert RefVhd(tmp_path / "snap.vhd").read() == bytes(4 * MiB)
    assert vhdiinfo(tmp_path / "snap.vhd")["parent_uuid"] == str(pi.uuid)


def test_chain_survives_moving_its_directory(tmp_path):
    src = tmp_path / "a"
    src.mkdir()
    m = ChainModel(src, 2 * MiB, block_size=512 << 10)
    m.write(1000, b"x" * 5000)
    m.snapshot()
    m.write(3000, b"y" * 100)
    dst = tmp_path / "b" / "moved"
    shutil.move(str(src), str(dst))
    leaf = dst / m.leaf.name
    with vhdkit.open(leaf) as f:
        assert f.read() == bytes(m.model)
    layers = chain.chain_info(leaf)
    assert layers[0].parent_found_by == "W2ru" and layers[1].path == str((dst / "l0.vhd").resolve())


def test_child_larger_than_parent_reads_zeros_past_parent_end(tmp_path):
    base = tmp_path / "base.vhd"
    write_vhd(base, 1 * MiB, {s: b"P" * 512 for s in range(2048)}, block_size=512 << 10)
    child = tmp_path / "child.vhd"
    chain.snapshot(base, child, size=3 * MiB)
    with vhdkit.open(child, "r+") as f:
        assert f.virtual_size == 3 * MiB
        f.pwrite(b"Q" * 700, MiB - 300)     # straddles the parent's end
    want = bytearray(b"P" * MiB + bytes(2 * MiB))
    want[MiB - 300:MiB + 400] = b"Q" * 700
    with vhdkit.open(child) as f:
        assert f.read() == bytes(want)
    assert RefVhd(child).read() == bytes(want)
    assert read.check(child).ok


# ---- writing (r+) -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["dynamic", "fixed", "differencing"])
def test_unaligned_cross_block_writes_match_model_and_reference(tmp_path, kind):
    rng = random.Random(hash(kind) & 0xFFFF)
    size = 3 * MiB
    base = tmp_path / "base.vhd"
    model = bytearray(size)
    if kind == "differencing":
        data = bytes(rng.randbytes(size))
        write_vhd(base, size, {s: data[s * 512:(s + 1) * 512] for s in range(0, size // 512, 3)},
                  block_size=512 << 10)
        model[:] = RefVhd(base).read()
        target = tmp_path / "child.vhd"
        chain.snapshot(base, target, block_size=64 << 10)
    else:
        target = base
        write.create(base, size, type=kind, block_size=None if kind == "fixed" else 512 << 10)
    with vhdkit.open(target, "r+") as f:
        for off, data in random_writes(rng, size, 25, max_len=200 << 10) + [(1, b"a"), (size - 3, b"xyz"),
                                                                            ((512 << 10) - 5, b"0123456789")]:
            f.seek(off)
            assert f.write(data) == len(data)
            model[off:off + len(data)] = data
    with vhdkit.open(target) as f:
        assert f.read() == bytes(model)
    assert RefVhd(target).read() == bytes(model)
    assert read.check(target).ok, read.check(target).to_dict()
    if kind != "differencing":
        assert qemu_raw(target, tmp_path / "q.raw").read_bytes() == bytes(model)


def test_write_past_end_and_on_read_only_stream_fail(tmp_path):
    p = tmp_path / "d.vhd"
    write.create(p, MiB)
    with vhdkit.open(p, "r+") as f:
        with pytest.raises(errors.OutOfRangeError):
            f.pwrite(b"x" * 10, MiB - 5)
    with vhdkit.open(p) as f:
        assert not f.writable()
        with pytest.raises(Exception):
            f.write(b"x")
    assert read.info(p).bat_entries_used == 0


def test_whole_byte_chain_reads_the_same_in_libvhdi(tmp_path):
    """4 KiB-aligned writes (whole bitmap bytes), 2 MiB blocks: libvhdi,
    the reference reader and vhdkit agree on a depth-3 chain."""
    rng = random.Random(7)
    m = ChainModel(tmp_path, 6 * MiB)
    for depth in range(3):
        for off, data in random_writes(rng, m.size, 8, aligned=4096):
            m.write(off, data)
        if depth < 2:
            m.snapshot()
    ours = m.read()
    assert ours == bytes(m.model)
    assert RefVhd(m.leaf).read() == ours
    assert pyvhdi_read(chain_paths_leaf_first(m), 0, len(ours)) == ours


# ---- coalesce -o ----------------------------------------------------------------

def _three_layers(tmp_path, rng, block_sizes=(512 << 10, 64 << 10, 2 * MiB)):
    m = ChainModel(tmp_path, 5 * MiB, block_size=block_sizes[0])
    for i, bs in enumerate(block_sizes):
        if i:
            m.snapshot(block_size=bs)
        for off, data in random_writes(rng, m.size, 6):
            m.write(off, data)
    # the leaf writes zeros over data: that (output) block reads as zeros
    m.write(0, bytes(2 * MiB))
    return m


@pytest.mark.parametrize("otype", ["dynamic", "fixed", "raw"])
def test_coalesce_output_equals_chain_for_qemu_and_is_standalone(tmp_path, otype):
    m = _three_layers(tmp_path, random.Random(11))
    out = tmp_path / ("out.raw" if otype == "raw" else "out.vhd")
    r = chain.coalesce(m.leaf, out, type="dynamic" if otype == "raw" else otype,
                       out_format="raw" if otype == "raw" else "vhd")
    assert r.layers == 3
    assert r.bytes_read <= 1.05 * r.data_needed
    if otype == "raw":
        assert out.read_bytes() == bytes(m.model)
        return
    assert qemu_raw(out, tmp_path / "q.raw").read_bytes() == bytes(m.model)
    assert read.check(out).ok
    info = vhdiinfo(out)
    assert info["type"] == otype and "parent_uuid" not in info and info["size"] == m.size
    oi = read.info(out)
    assert oi.parent_uuid is None and all(oi.uuid != read.info(p).uuid for p in m.paths)
    if otype == "dynamic":
        # the first 2 MiB were overwritten with zeros: that block is not allocated
        assert [e for e in read.map(out) if e.allocated][0].offset >= 2 * MiB
        assert qemu_info(out)["virtual-size"] == m.size


def test_coalesce_cli_json_and_bytes_read_counted(tmp_path):
    m = _three_layers(tmp_path, random.Random(12), block_sizes=(2 * MiB, 2 * MiB, 2 * MiB))
    out = tmp_path / "o.vhd"
    d = json.loads(cli("coalesce", m.leaf, "-o", out, "--json").stdout)
    assert d["layers"] == 3 and d["disk_type"] == "dynamic"
    assert d["data_needed"] <= d["bytes_read"] <= 1.05 * d["data_needed"]
    with vhdkit.open(out) as f:
        assert f.read() == bytes(m.model)


def test_coalesce_refuses_to_overwrite_a_layer(tmp_path):
    m = ChainModel(tmp_path, MiB, block_size=512 << 10)
    m.snapshot()
    before = digest(m.paths[0])
    with pytest.raises(errors.InvalidInputError):
        chain.coalesce(m.leaf, m.paths[0])
    assert digest(m.paths[0]) == before


# ---- coalesce --into-parent -------------------------------------------------------

def test_merge_into_parent_gives_parent_the_child_view(tmp_path):
    m = _three_layers(tmp_path, random.Random(13))
    child = m.leaf
    child_before = digest(child)
    want = bytes(m.model)
    r = chain.coalesce_into_parent(child)
    assert r.bytes_merged > 0 and not r.resumed
    assert digest(child) == child_before                 # the child is untouched
    with vhdkit.open(m.paths[1]) as f:
        assert f.read() == want
    with vhdkit.open(child) as f:                        # and still reads the same
        assert f.read() == want
    assert RefVhd(m.paths[1]).read() == want
    assert read.check(m.paths[1]).ok and read.check(child).ok
    assert not os.path.exists(chain.journal_path(m.paths[1]))


def test_merge_cli_then_coalesce_whole_chain(tmp_path):
    m = _three_layers(tmp_path, random.Random(14))
    d = json.loads(cli("coalesce", m.leaf, "--into-parent", "--json").stdout)
    assert d["parent"] == str(m.paths[1].resolve())
    os.unlink(m.leaf)
    m.paths.pop()
    cli("coalesce", m.leaf, "--into-parent")
    with vhdkit.open(m.paths[0]) as f:
        assert f.read() == bytes(m.model)
    assert qemu_raw(m.paths[0], tmp_path / "q.raw").read_bytes() == bytes(m.model)
    assert read.check(m.paths[0]).ok


def test_merge_refuses_parent_smaller_than_child_data(tmp_path):
    base = tmp_path / "base.vhd"
    write.create(base, MiB, block_size=512 << 10)
    child = tmp_path / "child.vhd"
    chain.snapshot(base, child, size=2 * MiB)
    with vhdkit.open(child, "r+") as f:
        f.pwrite(b"z" * 4096, MiB + 4096)
    before = (digest(base), digest(child))
    with pytest.raises(errors.OutOfRangeError, match="smaller than the data"):
        chain.coalesce_into_parent(child)
    assert (digest(base), digest(child)) == before
    assert not os.path.exists(chain.journal_path(base))


def test_merge_of_a_base_disk_is_refused(tmp_path):
    base = tmp_path / "base.vhd"
    write.create(base, MiB)
    r = cli("coalesce", base, "--into-parent", check=False)
    assert r.returncode == 1 and "not a differencing disk" in r.stderr


# ---- reparent --------------------------------------------------------------------

def test_reparent_relinks_renamed_packaged_chain(tmp_path):
    m = ChainModel(tmp_path, 2 * MiB, block_size=512 << 10)
    m.write(0, b"base" * 1000)
    m.snapshot()
    m.write(9000, b"leaf" * 100)
    # package-style names: 0.vhd leaf, 1.vhd base, in another directory
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    shutil.copy(m.paths[1], pkg / "0.vhd")
    shutil.copy(m.paths[0], pkg / "1.vhd")
    os.unlink(m.paths[0])   # the old parent name no longer exists
    with pytest.raises(errors.ChainError):
        vhdkit.open(pkg / "0.vhd")
    r = json.loads(cli("reparent", pkg / "0.vhd", pkg / "1.vhd", "--json").stdout)
    assert r["parent"] == str((pkg / "1.vhd").resolve())
    with vhdkit.open(pkg / "0.vhd") as f:
        assert f.read() == bytes(m.model)
    assert RefVhd(pkg / "0.vhd").read() == bytes(m.model)
    assert read.check(pkg / "0.vhd").ok
    assert _locators(pkg / "0.vhd")["W2ru"] == ".\\1.vhd"
    assert chain.chain_info(pkg / "0.vhd")[0].parent_found_by == "W2ru"


def test_reparent_refuses_uuid_mismatch_unless_unsafe(tmp_path):
    a, b, c = tmp_path / "a.vhd", tmp_path / "b.vhd", tmp_path / "c.vhd"
    write.create(a, MiB)
    write.create(b, MiB)
    chain.snapshot(a, c)
    before = digest(c)
    r = cli("reparent", c, b, check=False)
    assert r.returncode == 1 and "expects its parent" in r.stderr
    assert digest(c) == before
    chain.reparent(c, b, unsafe=True)
    assert read.info(c).parent_uuid == read.info(b).uuid
    assert read.check(c).ok


def test_reparent_refuses_a_cycle(tmp_path):
    m = ChainModel(tmp_path, MiB, block_size=512 << 10)
    m.snapshot()
    m.snapshot()
    before = [digest(p) for p in m.paths]
    with pytest.raises(errors.ChainError, match="cycle"):
        chain.reparent(m.paths[1], m.paths[2], unsafe=True)
    with pytest.raises(errors.ChainError):
        chain.reparent(m.paths[1], m.paths[1], unsafe=True)
    assert [digest(p) for p in m.paths] == before


def test_missing_or_mismatched_parent_errors_modify_nothing(tmp_path):
    a, b, c = tmp_path / "a.vhd", tmp_path / "b.vhd", tmp_path / "c.vhd"
    write.create(a, MiB)
    chain.snapshot(a, c)
    with vhdkit.open(c, "r+") as f:
        f.pwrite(b"c" * 512, 0)
    with pytest.raises(errors.NotFoundError):
        chain.snapshot(tmp_path / "nope.vhd", tmp_path / "x.vhd")
    assert not (tmp_path / "x.vhd").exists()
    write.create(b, MiB)
    os.replace(b, a)                      # same name, different UUID
    before = (digest(a), digest(c))
    for op in (lambda: chain.coalesce_into_parent(c), lambda: chain.coalesce(c, tmp_path / "o.vhd"),
               lambda: chain.snapshot(c, tmp_path / "y.vhd")):
        with pytest.raises(errors.ChainError):
            op()
    os.unlink(a)
    with pytest.raises(errors.ChainError):
        chain.coalesce_into_parent(c)
    assert digest(c) == before[1]
    assert not (tmp_path / "o.vhd").exists() and not (tmp_path / "y.vhd").exists()


# ---- chain listing ------------------------------------------------------------------

def test_chain_json_lists_layers_leaf_first(tmp_path):
    m = ChainModel(tmp_path, 2 * MiB, block_size=512 << 10)
    m.write(0, b"1" * 4096)
    m.snapshot()
    m.write(MiB, b"2" * 4096)
    d = json.loads(cli("chain", m.leaf, "--json").stdout)
    assert [x["path"] for x in d] == [str(m.paths[1].resolve()), str(m.paths[0].resolve())]
    assert d[0]["parent_uuid"] == d[1]["uuid"] and d[0]["parent_found_by"] == "W2ru"
    assert d[1]["parent_found_by"] is None and d[0]["allocated_bytes"] == 512 << 10
    human = cli("chain", m.leaf).stdout
    assert "parent found by W2ru" in human


def test_snapshot_of_fixed_parent_then_coalesce_to_fixed(tmp_path):
    base = tmp_path / "fixed.vhd"
    data = random.Random(21).randbytes(MiB)
    write_vhd(base, MiB, {s: data[s * 512:(s + 1) * 512] for s in range(2048)}, kind="fixed")
    child = tmp_path / "c.vhd"
    r = chain.snapshot(base, child)
    assert r.block_size == 2 * MiB
    want = bytearray(data)
    with vhdkit.open(child, "r+") as f:
        f.pwrite(b"w" * 3, 12345)
    want[12345:12348] = b"www"
    out = tmp_path / "flat.vhd"
    chain.coalesce(child, out, type="fixed")
    assert qemu_raw(out, tmp_path / "q.raw").read_bytes() == bytes(want)
    assert vhdiinfo(out)["type"] == "fixed" and read.check(out).ok
    chain.coalesce_into_parent(child)          # into a fixed parent: plain writes
    assert RefVhd(base).read() == bytes(want) and read.check(base).ok
