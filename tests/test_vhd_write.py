"""The writer: create, convert, modify, repair, compare, checked against peers
(qemu-img, vhdiinfo) and a spec-literal look at the bytes we wrote."""
from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import uuid as _uuid
from pathlib import Path

import pytest

import vhdkit
from vhdkit import errors
from helpers_corrupt import fix_footers, load, set_bat
from helpers_vhd import SAMPLES_README, file_sha256, qemu_info, qemu_raw, sample_table, vhdiinfo
from helpers_write import (block_pattern_raw, dynamic_layout, footer_fields, footer_ok, footers, vhdkit_cli)
import vhdref

# Reaches the native core: runs again in scripts/test's sanitizer pass.
pytestmark = pytest.mark.native

MiB = 1 << 20


def assert_peers_read(vhd: Path, data: bytes, disk_type: str, tmp_path: Path, original_size=None) -> None:
    """qemu-img and vhdiinfo see the right type, size and bytes; check is clean.

    vhdiinfo reports the footer's *original* size, which the spec says stays
    the size at creation when a disk is resized (pass it as original_size)."""
    qi = qemu_info(vhd)
    assert qi["virtual-size"] == len(data)
    assert qi["format"] == "vpc"
    vi = vhdiinfo(vhd)
    assert vi["type"] == disk_type
    assert vi["size"] == (len(data) if original_size is None else original_size)
    out = qemu_raw(vhd, tmp_path / (vhd.name + ".qemu.raw"))
    assert out.read_bytes() == data
    rep = vhdkit.check(vhd)
    assert rep.ok, rep.to_dict()


# ---- create -------------------------------------------------------------------
@pytest.mark.parametrize("disk_type", ["fixed", "dynamic"])
@pytest.mark.parametrize("size", [5 * MiB, 5 * MiB + 3 * 512, 3 * 1024 * 1024 + 100])
def test_create_is_read_by_peers_with_exact_size(tmp_path, disk_type, size):
    p = tmp_path / "new.vhd"
    r = vhdkit.create(p, size, type=disk_type)
    want = (size + 511) // 512 * 512
    assert r.virtual_size == want and r.size_adjusted == (want != size)
    assert_peers_read(p, bytes(want), disk_type, tmp_path)
    head, end = footers(p)
    assert footer_ok(end)
    if disk_type == "dynamic":
        assert head == end
        bs, bat = dynamic_layout(p)
        assert bs == 2 * MiB and all(e == 0xFFFFFFFF for e in bat)
    else:
        assert os.stat(p).st_size == want + 512
    assert r.uuid == _uuid.UUID(vhdiinfo(p)["uuid"])


def test_create_geometry_follows_spec_algorithm(tmp_path):
    p = tmp_path / "g.vhd"
    size = 127 * MiB
    vhdkit.create(p, size, type="dynamic")
    f = footer_fields(footers(p)[1])
    assert f["geometry"] == vhdref.chs(size // 512)


def test_create_chs_rule_rounds_up_to_representable(tmp_path):
    p = tmp_path / "c.vhd"
    r = vhdkit.create(p, 10 * MiB, type="fixed", size_rule="chs")
    c, h, s = r.geometry
    assert r.virtual_size == c * h * s * 512 >= 10 * MiB
    assert vhdref.chs(r.virtual_size // 512) == (c, h, s)
    assert qemu_info(p)["virtual-size"] == r.virtual_size
    assert r.size_adjusted


def test_create_azure_is_fixed_whole_mib(tmp_path):
    p = tmp_path / "a.vhd"
    r = vhdkit.create(p, 10 * MiB + 1, azure=True)
    assert r.disk_type == "fixed" and r.virtual_size == 11 * MiB and r.size_adjusted
    assert vhdiinfo(p)["size"] == 11 * MiB
    assert os.stat(p).st_size == 11 * MiB + 512


def test_create_refuses_over_2040_gib(tmp_path):
    with pytest.raises(errors.OutOfRangeError, match="2040 GiB"):
        vhdkit.create(tmp_path / "big.vhd", (2040 << 30) + 512)
    r = vhdkit_cli("create", tmp_path / "big.vhd", "2041G")
    assert r.returncode == 1 and b"2040 GiB" in r.stderr
    assert not (tmp_path / "big.vhd").exists()
    assert not [x for x in tmp_path.iterdir() if x.name.endswith(".part")]


def test_create_cli_json_and_no_overwrite(tmp_path):
    p = tmp_path / "x.vhd"
    r = vhdkit_cli("create", p, "3M", "--type", "fixed", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["disk_type"] == "fixed" and d["virtual_size"] == 3 * MiB
    r = vhdkit_cli("create", p, "3M")
    assert r.returncode == 1 and b"exists" in r.stderr


def test_create_refuses_bad_block_size(tmp_path):
    with pytest.raises(errors.InvalidInputError, match="power of two"):
        vhdkit.create(tmp_path / "b.vhd", 4 * MiB, block_size=3 * MiB)


# ---- convert raw -> VHD -----------------------------------------------------------
@pytest.mark.parametrize("disk_type", ["fixed", "dynamic"])
@pytest.mark.parametrize("block_size", [512 * 1024, 2 * MiB])
def test_convert_raw_to_vhd_read_back_by_qemu(tmp_path, disk_type, block_size):
    src = tmp_path / "src.raw"
    size = 7 * MiB + 5 * 512          # not a multiple of a block, not CHS-exact
    rng = random.Random(7)
    data = bytearray(size)
    for off in range(0, size, 64 * 1024):
        if rng.random() < 0.4:
            n = min(4096, size - off)
            data[off:off + n] = rng.randbytes(n)
    data[-700:] = rng.randbytes(700)
    src.write_bytes(bytes(data))
    dst = tmp_path / "out.vhd"
    r = vhdkit.convert(src, dst, type=disk_type, block_size=block_size)
    assert r.virtual_size == size and r.source_format == "raw"
    assert_peers_read(dst, bytes(data), disk_type, tmp_path)


def test_dynamic_output_allocates_no_zero_block(tmp_path):
    block = 2 * MiB
    pattern = [i % 2 == 0 for i in range(8)]           # 50% random, 50% zero
    src = tmp_path / "half.raw"
    data = block_pattern_raw(src, 8 * block, block, pattern, seed=3)
    dst = tmp_path / "half.vhd"
    r = vhdkit.convert(src, dst, type="dynamic")
    bs, bat = dynamic_layout(dst)
    assert bs == block
    allocated = [e != 0xFFFFFFFF for e in bat]
    assert allocated == pattern
    assert r.blocks_allocated == 4
    # every allocated block's data is 4 KiB aligned in the file and not zero
    with open(dst, "rb") as f:
        for i, e in enumerate(bat):
            if e != 0xFFFFFFFF:
                assert (e * 512 + 512) % 4096 == 0
                f.seek(e * 512 + 512)
                assert f.read(block) == data[i * block:(i + 1) * block]
    assert_peers_read(dst, data, "dynamic", tmp_path)


def test_raw_output_of_sparse_input_has_holes(tmp_path):
    src = tmp_path / "sparse.raw"
    size = 16 * MiB
    with open(src, "wb") as f:
        f.truncate(size)
        f.seek(5 * MiB)
        f.write(os.urandom(64 * 1024))
    vhd = tmp_path / "s.vhd"
    vhdkit.convert(src, vhd, type="fixed")
    assert os.stat(vhd).st_blocks * 512 < 1 * MiB        # fixed output stays sparse too
    back = tmp_path / "back.raw"
    r = vhdkit.convert(vhd, back, out_format="raw")
    assert r.format == "raw" and r.source_format == "vhd"
    st = os.stat(back)
    assert st.st_size == size
    assert st.st_blocks * 512 < 1 * MiB
    assert back.read_bytes() == src.read_bytes()


def test_fixed_vhd_input_is_detected_as_vhd(tmp_path):
    src = tmp_path / "a.raw"
    data = os.urandom(3 * MiB)
    src.write_bytes(data)
    fixed = tmp_path / "a.vhd"
    vhdkit.convert(src, fixed, type="fixed")
    r = vhdkit.convert(fixed, tmp_path / "b.raw", out_format="raw")
    assert r.source_format == "vhd"
    assert (tmp_path / "b.raw").read_bytes() == data
    # forcing -f raw treats the footer as data
    r = vhdkit.convert(fixed, tmp_path / "c.raw", out_format="raw", src_format="raw")
    assert (tmp_path / "c.raw").read_bytes() == fixed.read_bytes()


def test_stdin_to_dynamic_and_fixed_to_stdout(tmp_path):
    data = block_pattern_raw(tmp_path / "in.raw", 5 * MiB, 1 * MiB, [True, False, False, True, True], seed=5)
    r = vhdkit_cli("convert", "-", tmp_path / "p.vhd", input=data)
    assert r.returncode == 0, r.stderr
    assert_peers_read(tmp_path / "p.vhd", data, "dynamic", tmp_path)
    r = vhdkit_cli("convert", tmp_path / "p.vhd", "-", "--type", "fixed")
    assert r.returncode == 0, r.stderr
    (tmp_path / "stream.vhd").write_bytes(r.stdout)
    assert len(r.stdout) == len(data) + 512
    assert_peers_read(tmp_path / "stream.vhd", data, "fixed", tmp_path)
    r = vhdkit_cli("convert", tmp_path / "p.vhd", "-", "-O", "raw")
    assert r.returncode == 0 and r.stdout == data


def test_dynamic_to_stdout_is_refused_with_reason(tmp_path):
    vhdkit.create(tmp_path / "d.vhd", MiB)
    r = vhdkit_cli("convert", tmp_path / "d.vhd", "-")
    assert r.returncode == 2 and b"stdout" in r.stderr
    with pytest.raises(errors.UnsupportedError):
        vhdkit.convert(tmp_path / "d.vhd", "-", type="dynamic")


def test_failed_convert_leaves_no_output(tmp_path):
    src = tmp_path / "bad.vhd"
    src.write_bytes(b"x" * 4096)
    with pytest.raises(errors.VhdkitError):
        vhdkit.convert(src, tmp_path / "o.vhd", src_format="vhd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.vhd"]


def test_differencing_leaf_is_flattened(tmp_path):
    size = 4 * MiB
    rng = random.Random(11)
    base_sectors = {s: rng.randbytes(512) for s in rng.sample(range(size // 512), 300)}
    child_sectors = {s: rng.randbytes(512) for s in rng.sample(range(size // 512), 200)}
    base = tmp_path / "base.vhd"
    leaf = tmp_path / "leaf.vhd"
    vhdref.write_vhd(base, size, base_sectors, kind="dynamic", block_size=512 * 1024)
    vhdref.write_vhd(leaf, size, child_sectors, kind="differencing", parent=str(base), block_size=512 * 1024)
    want = bytearray(size)
    for s, d in {**base_sectors, **child_sectors}.items():
        want[s * 512:(s + 1) * 512] = d
    for t in ("fixed", "dynamic"):
        out = tmp_path / f"flat-{t}.vhd"
        vhdkit.convert(leaf, out, type=t)
        assert_peers_read(out, bytes(want), t, tmp_path)


@pytest.mark.parametrize("stem", ["windows-fixed-10M", "windows-dynamic-512M"])
def test_windows_samples_convert_to_fixed_and_back(sample, tmp_path, stem):
    want = sample_table(SAMPLES_README)[stem]["sha256"]
    fixed = tmp_path / "f.vhd"
    vhdkit.convert(sample(stem), fixed, type="fixed")
    dyn = tmp_path / "d.vhd"
    vhdkit.convert(fixed, dyn, type="dynamic")
    raw = tmp_path / "r.raw"
    vhdkit.convert(dyn, raw, out_format="raw")
    assert file_sha256(raw) == want
    assert file_sha256(qemu_raw(fixed, tmp_path / "q.raw")) == want
    assert vhdkit.check(fixed).ok and vhdkit.check(dyn).ok
    assert vhdkit.compare(sample(stem), dyn).identical


# ---- compare ------------------------------------------------------------------------
def test_compare_reports_first_difference_and_exit_codes(tmp_path):
    data = bytearray(os.urandom(2 * MiB))
    a = tmp_path / "a.raw"
    a.write_bytes(bytes(data))
    v = tmp_path / "a.vhd"
    vhdkit.convert(a, v, type="dynamic")
    assert vhdkit.compare(a, v).identical
    r = vhdkit_cli("compare", a, v)
    assert r.returncode == 0
    data[1234567] ^= 0x40
    b = tmp_path / "b.raw"
    b.write_bytes(bytes(data))
    res = vhdkit.compare(v, b)
    assert not res.identical and res.first_difference == 1234567
    r = vhdkit_cli("compare", v, b, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["first_difference"] == 1234567
    r = vhdkit_cli("compare", v, tmp_path / "missing")
    assert r.returncode == 2


def test_compare_size_difference_counts_only_nonzero_tail(tmp_path):
    a = tmp_path / "a.raw"
    a.write_bytes(b"\1" * MiB)
    b = tmp_path / "b.raw"
    b.write_bytes(b"\1" * MiB + bytes(MiB))
    assert vhdkit.compare(a, b).identical
    b.write_bytes(b"\1" * MiB + bytes(1000) + b"\2" + bytes(MiB - 1001))
    r = vhdkit.compare(a, b)
    assert not r.identical and r.first_difference == MiB + 1000


# ---- modify -------------------------------------------------------------------------
def _filled_dynamic(tmp_path, size=3 * MiB, block_size=2 * MiB):
    src = tmp_path / "src.raw"
    data = block_pattern_raw(src, size, MiB, [True, False, True], seed=9)
    v = tmp_path / "m.vhd"
    vhdkit.convert(src, v, type="dynamic", block_size=block_size)
    return v, data


def test_modify_fields_rewrites_both_footers(tmp_path):
    v, data = _filled_dynamic(tmp_path)
    u = _uuid.uuid4()
    r = vhdkit.modify(v, uuid=u, timestamp="2021-05-06T07:08:09+00:00", creator="win")
    head, end = footers(v)
    assert head == end and footer_ok(end)
    f = footer_fields(end)
    assert f["uuid"] == u.bytes and f["creator"] == b"win "
    import datetime as dt
    assert f["timestamp"] == int(dt.datetime(2021, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc).timestamp()) - 946684800
    assert r.uuid == u and _uuid.UUID(vhdiinfo(v)["uuid"]) == u
    assert r.timestamp.isoformat() == "2021-05-06T07:08:09+00:00"
    assert_peers_read(v, data, "dynamic", tmp_path)
    r2 = vhdkit.modify(v, new_uuid=True)
    assert r2.uuid != u and footer_fields(footers(v)[0])["uuid"] == r2.uuid.bytes


def test_modify_grow_dynamic_within_bat(tmp_path):
    v, data = _filled_dynamic(tmp_path)            # 3 MiB in 2 blocks of 2 MiB: room up to 4 MiB
    r = vhdkit.modify(v, size=4 * MiB)
    assert not r.bat_relocated and r.new_size == 4 * MiB
    assert_peers_read(v, data + bytes(MiB), "dynamic", tmp_path, 3 * MiB)


def test_modify_grow_dynamic_relocates_bat(tmp_path):
    v, data = _filled_dynamic(tmp_path)
    r = vhdkit.modify(v, size=9 * MiB)
    assert r.bat_relocated
    bs, bat = dynamic_layout(v)
    assert len(bat) == 5
    assert_peers_read(v, data + bytes(6 * MiB), "dynamic", tmp_path, 3 * MiB)


def test_modify_shrink_dynamic_refused_then_forced(tmp_path):
    v, data = _filled_dynamic(tmp_path)
    with pytest.raises(errors.NoSpaceError, match="force"):
        vhdkit.modify(v, size=MiB)
    assert_peers_read(v, data, "dynamic", tmp_path)
    vhdkit.modify(v, size=2 * MiB + 512 * 4, force=True)
    assert_peers_read(v, data[:2 * MiB + 2048], "dynamic", tmp_path, 3 * MiB)
    # growing again shows zeros, not the discarded data
    vhdkit.modify(v, size=3 * MiB)
    assert_peers_read(v, data[:2 * MiB + 2048] + bytes(MiB - 2048), "dynamic", tmp_path, 3 * MiB)


def test_modify_fixed_grow_and_shrink(tmp_path):
    src = tmp_path / "s.raw"
    data = os.urandom(2 * MiB) + bytes(MiB)
    src.write_bytes(data)
    v = tmp_path / "f.vhd"
    vhdkit.convert(src, v, type="fixed")
    vhdkit.modify(v, size=5 * MiB)
    assert_peers_read(v, data + bytes(2 * MiB), "fixed", tmp_path, 3 * MiB)
    vhdkit.modify(v, size=2 * MiB)                  # only zeros are dropped: allowed
    assert_peers_read(v, data[:2 * MiB], "fixed", tmp_path, 3 * MiB)
    with pytest.raises(errors.NoSpaceError):
        vhdkit.modify(v, size=MiB)
    vhdkit.modify(v, size=MiB, force=True)
    assert_peers_read(v, data[:MiB], "fixed", tmp_path, 3 * MiB)


@pytest.mark.parametrize("change", [
    {"new_uuid": True, "creator": "zzz"},
    {"size": 9 * MiB},            # BAT relocation: 5 writes
    {"size": 4 * MiB},
    {"size": 2 * MiB, "force": True},
])
def test_interrupted_modify_is_recovered_without_data_loss(tmp_path, abort_after_writes, change):
    v0, data = _filled_dynamic(tmp_path)
    steps = vhdkit.modify(shutil.copy(v0, tmp_path / "probe.vhd"), **change).writes
    assert steps >= 2
    for n in range(steps):
        v = Path(shutil.copy(v0, tmp_path / f"cut{n}.vhd"))
        abort_after_writes(n)
        with pytest.raises(errors.OperationInterrupted):
            vhdkit.modify(v, **change)
        abort_after_writes(None)
        vhdkit.repair(v)
        rep = vhdkit.check(v)
        assert rep.ok, (n, rep.to_dict())
        size = qemu_info(v)["virtual-size"]
        got = qemu_raw(v, tmp_path / f"cut{n}.raw").read_bytes()
        keep = min(size, len(data), change.get("size", len(data)))
        assert got[:keep] == data[:keep], n
        assert not any(got[len(data):]), n
        head, end = footers(v)
        assert head == end


# ---- growing over stale BAT entries --------------------------------------------------
def _stale_dynamic(tmp_path, size=3 * MiB, name="stale.vhd"):
    """A dynamic disk of `size` (at most 4 MiB) whose 4-entry BAT (2 MiB
    blocks) is larger than the disk: blocks 2 and 3 are allocated beyond the
    disk (BAT_BEYOND_DISK) and, at 3 MiB, block 1 straddles the size with
    non-zero bytes past it, all garbage the disk never showed.  Returns
    (path, the disk's content)."""
    rng = random.Random(22)
    garbage = {s: rng.randbytes(512) for s in range(0, 8 * MiB // 512, 97)}
    v = tmp_path / name
    vhdref.write_vhd(v, 8 * MiB, garbage, creator=b"qem2")
    b = load(v)
    struct.pack_into(">Q", b, len(b) - 512 + 48, size)     # current size: the table now outgrows the disk
    struct.pack_into(">HBB", b, len(b) - 512 + 56, *vhdref.chs(size // 512))
    fix_footers(b)
    v.write_bytes(b)
    data = bytearray(size)
    for s, d in garbage.items():
        if s * 512 < size:
            data[s * 512:s * 512 + 512] = d
    assert qemu_raw(v, tmp_path / (name + ".before.raw")).read_bytes() == data
    assert "BAT_BEYOND_DISK" in vhdkit.check(v).codes()
    return v, bytes(data)


def _qemu_reads(v: Path, expected: bytes, tmp_path: Path) -> None:
    """qemu-img, the outside judge, reads exactly `expected`; check is clean."""
    raw = tmp_path / (v.name + ".expected.raw")
    raw.write_bytes(expected)
    assert qemu_info(v)["virtual-size"] == len(expected)
    r = subprocess.run(["qemu-img", "compare", "-f", "vpc", "-F", "raw", str(v), str(raw)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = vhdkit.check(v)
    assert rep.ok, rep.to_dict()


@pytest.mark.parametrize("old_size,new_size", [
    (3 * MiB, 4 * MiB), (3 * MiB, 8 * MiB), (3 * MiB, 12 * MiB),   # old tail; within the BAT, all of it, relocated
    (4 * MiB, 8 * MiB), (4 * MiB, 12 * MiB),                       # stale entries only
])
def test_grow_over_stale_bat_entries_reads_zeros(tmp_path, old_size, new_size):
    v, data = _stale_dynamic(tmp_path, old_size)
    r = vhdkit_cli("modify", v, "--size", new_size, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bat_relocated"] == (new_size > 8 * MiB)
    _qemu_reads(v, data + bytes(new_size - len(data)), tmp_path)
    # a forced shrink then a grow again: the discarded part reads zeros too
    cut = MiB + 4096
    r = vhdkit_cli("modify", v, "--size", cut, "--force", "--json")
    assert r.returncode == 0, r.stderr
    _qemu_reads(v, data[:cut], tmp_path)
    r = vhdkit_cli("modify", v, "--size", new_size, "--json")
    assert r.returncode == 0, r.stderr
    _qemu_reads(v, data[:cut] + bytes(new_size - cut), tmp_path)


def test_shrink_is_not_refused_for_stale_entries_only(tmp_path):
    """Entries past the disk were never its data: shrinking over an empty
    block with only stale blocks past it needs no --force, and clears them."""
    v, data = _stale_dynamic(tmp_path, 4 * MiB)
    b = load(v)
    set_bat(b, 1, vhdref.UNUSED)                       # block 1 empty: the disk past 2 MiB is zeros
    v.write_bytes(b)
    r = vhdkit_cli("modify", v, "--size", 2 * MiB, "--json")
    assert r.returncode == 0, r.stderr
    _qemu_reads(v, data[:2 * MiB], tmp_path)


def test_grow_refuses_to_clear_a_tail_lying_on_metadata(tmp_path):
    """A straddling block placed over the dynamic header cannot have its
    tail zeroed without damaging the image: one actionable line, no change."""
    v, _ = _stale_dynamic(tmp_path)
    b = load(v)
    set_bat(b, 1, 1)                                   # block 1's bitmap at 512: the dynamic header
    v.write_bytes(b)
    r = vhdkit_cli("modify", v, "--size", 8 * MiB)
    assert r.returncode != 0
    msg = r.stderr.decode().strip()
    assert "\n" not in msg and "overlaps the image's metadata" in msg and "vhdkit check" in msg, msg
    assert v.read_bytes() == bytes(b)

def test_interrupted_grow_over_stale_entries_shows_old_or_new_disk(tmp_path, abort_after_writes):
    v0, data = _stale_dynamic(tmp_path)
    steps = vhdkit.modify(shutil.copy(v0, tmp_path / "probe.vhd"), size=8 * MiB).writes
    assert steps >= 4          # tail zeroed, two entries cleared, footer, copy
    for n in range(steps):
        v = Path(shutil.copy(v0, tmp_path / f"cut{n}.vhd"))
        abort_after_writes(n)
        with pytest.raises(errors.OperationInterrupted):
            vhdkit.modify(v, size=8 * MiB)
        abort_after_writes(None)
        vhdkit.repair(v)
        got = qemu_raw(v, tmp_path / f"cut{n}.raw").read_bytes()
        assert len(got) in (3 * MiB, 8 * MiB), n
        assert got[:3 * MiB] == data and not any(got[3 * MiB:]), n
        # the old disk may keep some of its stale entries; nothing else is wrong
        assert set(vhdkit.check(v).codes()) <= {"BAT_BEYOND_DISK"}, n


# ---- repair -------------------------------------------------------------------------
def test_repair_restores_end_footer_from_copy(tmp_path):
    v, data = _filled_dynamic(tmp_path)
    size = os.stat(v).st_size
    with open(v, "r+b") as f:
        f.seek(size - 512 + 70)
        f.write(b"garbage")
    assert not vhdkit.check(v).ok
    r = vhdkit.repair(v, dry_run=True)
    assert r.action == "end-footer-restored" and not footer_ok(footers(v)[1])
    r = vhdkit.repair(v)
    assert r.action == "end-footer-restored"
    head, end = footers(v)
    assert head == end and footer_ok(end)
    assert_peers_read(v, data, "dynamic", tmp_path)
    assert vhdkit.repair(v).action == "none"


def test_repair_restores_copy_at_zero(tmp_path):
    v, data = _filled_dynamic(tmp_path)
    with open(v, "r+b") as f:
        f.write(b"\0" * 512)
    assert vhdkit.repair(v).action == "backup-footer-restored"
    head, end = footers(v)
    assert head == end
    assert_peers_read(v, data, "dynamic", tmp_path)


def test_repair_appends_footer_to_truncated_file(tmp_path):
    v, data = _filled_dynamic(tmp_path)
    os.truncate(v, os.stat(v).st_size - 512 - 4096)      # footer and the last 4 KiB cut off
    r = vhdkit.repair(v)
    assert r.action == "end-footer-appended"
    assert vhdkit.check(v).ok
    got = qemu_raw(v, tmp_path / "t.raw").read_bytes()
    assert len(got) == len(data) and got[:2 * MiB] == data[:2 * MiB]


def test_repair_refuses_when_both_copies_bad_or_fixed_damaged(tmp_path):
    v, _ = _filled_dynamic(tmp_path)
    with open(v, "r+b") as f:
        f.write(b"\0" * 512)
        f.seek(-512, os.SEEK_END)
        f.write(b"\0" * 512)
    with pytest.raises(errors.FormatError, match="neither"):
        vhdkit.repair(v)
    r = vhdkit_cli("repair", v)
    assert r.returncode == 1
    fx = tmp_path / "f.vhd"
    vhdkit.create(fx, MiB, type="fixed")
    with open(fx, "r+b") as f:
        f.seek(-10, os.SEEK_END)
        f.write(b"x")
    with pytest.raises(errors.FormatError):
        vhdkit.repair(fx)


def test_repair_refuses_copies_with_different_layouts(tmp_path):
    v, _ = _filled_dynamic(tmp_path)
    head, end = footers(v)
    bad = bytearray(head)
    struct.pack_into(">I", bad, 60, 4)                     # claims differencing
    struct.pack_into(">I", bad, 64, 0)
    struct.pack_into(">I", bad, 64, (~(sum(bad[:64]) + sum(bad[68:]))) & 0xFFFFFFFF)
    with open(v, "r+b") as f:
        f.write(bytes(bad))
    with pytest.raises(errors.FormatError, match="different layouts"):
        vhdkit.repair(v)


def test_modify_refuses_damaged_image(tmp_path):
    v, _ = _filled_dynamic(tmp_path)
    with open(v, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x55")
    with pytest.raises(errors.VhdkitError, match="repair"):
        vhdkit.modify(v, new_uuid=True)


def test_result_objects_serialise(tmp_path):
    r = vhdkit.create(tmp_path / "j.vhd", MiB)
    d = r.to_dict()
    json.dumps(d)
    assert d["uuid"] == str(r.uuid)
    json.dumps(vhdkit.modify(tmp_path / "j.vhd", new_uuid=True).to_dict())
    assert vhdkit.repair(tmp_path / "j.vhd").to_dict()["action"] == "none"
