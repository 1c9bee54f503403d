"""Reading VHDs: real samples, qemu-made images, and differencing chains,
checked against peers (qemu-img, vhdiinfo, libvhdi-python) and against the
spec-literal reference reader in fixtures/vhdref.py."""
from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import subprocess
import uuid

import pytest

import vhdkit
from vhdkit import errors
from vhdkit.vhd import read

from conftest import require_tool
from helpers_vhd import (SAMPLES_README, file_sha256, pyvhdi_read, qemu_info, qemu_raw, random_raw,
                         random_sectors, run_peer, sample_table, stream_sha256, vhdiinfo)
from vhdref import RefVhd, write_vhd

# Reaches the native core: runs again in scripts/test's sanitizer pass.
pytestmark = pytest.mark.native

SAMPLES = sample_table(SAMPLES_README) if SAMPLES_README.exists() else {}
MiB = 1 << 20


# ---- real samples -------------------------------------------------------------

@pytest.mark.peer
@pytest.mark.parametrize("stem", sorted(SAMPLES) or ["<no samples>"])
def test_sample_virtual_disk_sha256_matches_readme(samples_dir, sample, stem):
    if not SAMPLES:
        pytest.fail("could not parse the samples README table")
    want = SAMPLES[stem]
    with vhdkit.open(sample(stem)) as s:
        assert s.virtual_size == want["size"]
        assert s.info.disk_type == want["type"]
        assert stream_sha256(s) == want["sha256"]


def test_samples_table_lists_three_images(samples_dir):
    assert len(sample_table(samples_dir / "README.md")) >= 3


@pytest.mark.peer
@pytest.mark.parametrize("stem", sorted(SAMPLES))
def test_sample_info_agrees_with_vhdiinfo_and_qemu(sample, stem):
    path = sample(stem)
    inf = vhdkit.info(path)
    v = vhdiinfo(path)
    q = qemu_info(path)
    assert inf.disk_type == v["type"]
    assert str(inf.uuid) == v["uuid"]
    assert inf.virtual_size == q["virtual-size"]
    assert inf.current_size == v["size"]   # libvhdi reports the footer's current size
    assert ("cluster-size" in q) == (inf.disk_type != "fixed")
    if "cluster-size" in q:
        assert inf.block_size == q["cluster-size"]


@pytest.mark.peer
def test_sample_map_agrees_with_qemu_img_map(sample):
    path = sample("windows-dynamic-512M")
    r = run_peer([require_tool("qemu-img"), "map", "--output=json", "-f", "vpc", path], text=True)
    import json

    theirs = [(e["start"], e["length"], e.get("offset")) for e in json.loads(r.stdout) if e["data"]]
    ours = [(e.offset, e.length, e.file_offset) for e in vhdkit.map(path) if e.allocated]
    assert ours == theirs


# ---- images made by qemu-img ---------------------------------------------------

# sizes on a CHS boundary (qemu keeps them) and off one (qemu rounds to CHS)
QEMU_CASES = [
    ("dynamic", 4 * MiB, False),
    ("dynamic", 5 * MiB + 512 * 7, False),
    ("dynamic", 5 * MiB + 512 * 7, True),
    ("fixed", 3 * MiB, False),
    ("fixed", 3 * MiB + 512 * 5, True),
    ("fixed", 3 * MiB + 512 * 5, False),
    ("dynamic", 121 * 4 * 17 * 512, False),
]


@pytest.mark.peer
@pytest.mark.parametrize("subformat,size,force", QEMU_CASES)
def test_qemu_converted_image_reads_like_qemu(tmp_path, subformat, size, force):
    qemu = require_tool("qemu-img")
    rng = random.Random(size ^ hash(subformat) ^ force)
    raw = tmp_path / "src.raw"
    random_raw(raw, size, rng, density=0.4)
    vhd = tmp_path / "disk.vhd"
    opts = f"subformat={subformat}" + (",force_size=on" if force else "")
    run_peer([qemu, "convert", "-f", "raw", "-O", "vpc", "-o", opts, raw, vhd])
    back = qemu_raw(vhd, tmp_path / "back.raw")
    inf = vhdkit.info(vhd)
    assert inf.virtual_size == back.stat().st_size == qemu_info(vhd)["virtual-size"]
    with vhdkit.open(vhd) as s:
        assert stream_sha256(s) == file_sha256(back)
    if force:
        assert inf.size_rule == "current" and inf.creator_app == "qem2"


@pytest.mark.peer
@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_qemu_created_empty_image_reads_zeros(tmp_path, subformat):
    vhd = tmp_path / "e.vhd"
    run_peer([require_tool("qemu-img"), "create", "-f", "vpc", "-o", f"subformat={subformat}", vhd, "3M"])
    back = qemu_raw(vhd, tmp_path / "e.raw")
    with vhdkit.open(vhd) as s:
        data = s.read()
    assert data == back.read_bytes() and data.count(0) == len(data)


def test_size_rule_override_chooses_current_or_chs(sample):
    path = sample("qemu53-dynamic-ext2")
    inf = vhdkit.info(path)
    assert inf.size_rule == "chs" and inf.virtual_size == inf.chs_size
    assert vhdkit.info(path, size_rule="current").virtual_size == inf.current_size
    with pytest.raises(errors.InvalidInputError):
        vhdkit.info(path, size_rule="bogus")


# ---- differencing chains vs the reference reader -----------------------------

def _chain(tmp_path, depth, block_sizes, sizes=None, whole_bytes=False, seed=0, density=0.15):
    rng = random.Random(seed)
    sizes = sizes or [4 * MiB] * (depth + 1)
    paths = []
    base = tmp_path / "l0.vhd"
    write_vhd(base, sizes[0], random_sectors(sizes[0] // 512, rng, 0.3, whole_bytes), kind="dynamic",
              block_size=block_sizes[0])
    paths.append(base)
    for i in range(1, depth + 1):
        p = tmp_path / f"l{i}.vhd"
        write_vhd(p, sizes[i], random_sectors(sizes[i] // 512, rng, density, whole_bytes), kind="differencing",
                  block_size=block_sizes[i % len(block_sizes)], parent=str(paths[-1]))
        paths.append(p)
    return list(reversed(paths))   # leaf first


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_differencing_chain_reads_like_reference_reader(tmp_path, depth):
    bss = [2 * MiB, 4096, 64 << 10, 512 << 10, 8192, 1 * MiB]
    chain = _chain(tmp_path, depth, bss, seed=depth)
    ref = RefVhd(chain[0]).read()
    with vhdkit.open(chain[0]) as s:
        assert s.depth == depth + 1
        assert [c.block_size for c in s.chain] == [bss[(depth - i) % len(bss)] if i < depth else bss[0]
                                                  for i in range(depth + 1)]
        assert s.read() == ref
        # unaligned reads at odd offsets agree too
        rng = random.Random(7)
        for _ in range(40):
            off = rng.randrange(0, len(ref))
            n = rng.randrange(1, 300_000)
            s.seek(off)
            assert s.read(n) == ref[off:off + n]


def test_child_larger_than_parent_reads_zeros_past_parent_end(tmp_path):
    chain = _chain(tmp_path, 2, [64 << 10, 4096], sizes=[2 * MiB, 3 * MiB, 5 * MiB], seed=3)
    ref = RefVhd(chain[0]).read()
    with vhdkit.open(chain[0]) as s:
        assert s.virtual_size == 5 * MiB
        assert s.read() == ref


def test_child_unallocated_block_reads_parent(tmp_path):
    base, child = tmp_path / "b.vhd", tmp_path / "c.vhd"
    write_vhd(base, 2 * MiB, {s: bytes([s % 251 + 1]) * 512 for s in range(4096)}, block_size=1 * MiB)
    write_vhd(child, 2 * MiB, {10: b"\xAA" * 512}, kind="differencing", block_size=1 * MiB, parent=str(base))
    with vhdkit.open(child) as s:
        data = s.read()
    assert data[10 * 512:11 * 512] == b"\xAA" * 512
    assert data[9 * 512:10 * 512] == bytes([10]) * 512            # bit 0: from the parent
    assert data[3000 * 512:3001 * 512] == bytes([3000 % 251 + 1]) * 512   # unallocated block: parent


@pytest.mark.peer
@pytest.mark.parametrize("depth", [1, 2, 5])
def test_pyvhdi_agrees_on_whole_byte_bitmaps(tmp_path, depth):
    # differencing layers use Windows' 2 MiB blocks (libvhdi mis-reads some
    # other block sizes, see the test below); the base has 4 KiB blocks
    chain = _chain(tmp_path, depth, [4096] + [2 * MiB] * depth, whole_bytes=True, seed=10 + depth)
    with vhdkit.open(chain[0]) as s:
        ours = s.read()
    theirs = pyvhdi_read([str(p) for p in chain], 0, len(ours))
    assert ours == theirs == RefVhd(chain[0]).read()


@pytest.mark.peer
def test_libvhdi_misreads_sub_byte_bitmaps_spec_wins(tmp_path):
    """Bits for sectors 1, 3 and 10 set: the spec (and vhdkit, and the
    reference reader) take the unset sectors 2, 4-7, 11-15 from the parent;
    libvhdi returns the child's (zero) data for them.  If libvhdi gets fixed,
    this test fails and the documentation in samples/README.md is stale."""
    base, child = tmp_path / "b.vhd", tmp_path / "c.vhd"
    write_vhd(base, 1 * MiB, {s: b"P" * 512 for s in range(64)}, block_size=512 << 10)
    write_vhd(child, 1 * MiB, {s: b"C" * 512 for s in (1, 3, 10)}, kind="differencing", block_size=512 << 10,
              parent=str(base))
    with vhdkit.open(child) as s:
        ours = s.read(16 * 512)
    expect = b"".join((b"C" if i in (1, 3, 10) else b"P") * 512 for i in range(16))
    assert ours == expect == RefVhd(child).read(0, 16 * 512)
    theirs = pyvhdi_read([str(child), str(base)], 0, 16 * 512)
    sect = [theirs[i * 512:(i + 1) * 512] for i in range(16)]
    assert sect[2] != b"P" * 512 and sect[11] != b"P" * 512     # the documented defect
    assert sect[0] == b"P" * 512 and sect[1] == b"C" * 512


@pytest.mark.peer
def test_libvhdi_misreads_64k_blocks_where_qemu_agrees_with_us(tmp_path):
    """A dynamic disk with 64 KiB blocks: qemu-img and the reference reader
    agree with vhdkit; libvhdi returns different data (a peer defect).  If
    this starts failing because libvhdi agrees, the peer was fixed."""
    p = tmp_path / "d.vhd"
    rng = random.Random(5)
    write_vhd(p, 4 * MiB, random_sectors(8192, rng, 0.3), block_size=64 << 10, creator=b"win ")
    back = qemu_raw(p, tmp_path / "d.raw").read_bytes()
    with vhdkit.open(p) as s:
        ours = s.read()
    assert ours == back == RefVhd(p).read()
    assert pyvhdi_read([str(p)], 0, len(ours)) != ours


# ---- chain resolution ------------------------------------------------------------

def test_parent_found_by_relative_locator_after_moving_the_chain(tmp_path):
    (tmp_path / "a").mkdir()
    chain = _chain(tmp_path / "a", 1, [64 << 10])
    ref = RefVhd(chain[0]).read()
    moved = tmp_path / "b"
    shutil.move(str(tmp_path / "a"), moved)
    with vhdkit.open(moved / "l1.vhd") as s:
        assert s.read() == ref
        assert s.chain[1].path == str((moved / "l0.vhd").resolve())


def test_parent_found_by_absolute_macx_locator(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "c").mkdir()
    base = tmp_path / "p" / "base.vhd"
    write_vhd(base, 1 * MiB, {0: b"B" * 512}, block_size=4096)
    child = tmp_path / "c" / "child.vhd"
    write_vhd(child, 1 * MiB, {}, kind="differencing", block_size=4096, parent=str(base),
              locators=[("W2ru", "..\\nowhere\\base.vhd"), ("MacX", "file://" + str(base))])
    with vhdkit.open(child) as s:
        assert s.read(512) == b"B" * 512


def test_parent_found_by_header_name_next_to_child(tmp_path):
    base = tmp_path / "base.vhd"
    write_vhd(base, 1 * MiB, {0: b"N" * 512}, block_size=4096)
    child = tmp_path / "child.vhd"
    write_vhd(child, 1 * MiB, {}, kind="differencing", block_size=4096, parent=str(base),
              locators=[("W2ku", "C:\\vms\\base.vhd")], parent_name="C:\\vms\\base.vhd")
    with vhdkit.open(child) as s:
        assert s.read(512) == b"N" * 512


def test_explicit_parents_take_precedence(tmp_path):
    a, b, child = tmp_path / "a.vhd", tmp_path / "b.vhd", tmp_path / "child.vhd"
    uid = write_vhd(a, 1 * MiB, {0: b"A" * 512}, block_size=4096)
    write_vhd(b, 1 * MiB, {0: b"B" * 512}, block_size=4096, uid=uid)   # same UUID, other content
    write_vhd(child, 1 * MiB, {}, kind="differencing", block_size=4096, parent=str(a))
    with vhdkit.open(child) as s:
        assert s.read(512) == b"A" * 512
    with vhdkit.open(child, parents=[b]) as s:
        assert s.read(512) == b"B" * 512


def test_parent_uuid_mismatch_is_a_chain_error(tmp_path):
    a, child = tmp_path / "a.vhd", tmp_path / "child.vhd"
    write_vhd(a, 1 * MiB, {}, block_size=4096)
    write_vhd(child, 1 * MiB, {}, kind="differencing", block_size=4096, parent=str(a))
    write_vhd(a, 1 * MiB, {}, block_size=4096)    # rewritten: new UUID
    with pytest.raises(errors.ChainError, match="UUID"):
        vhdkit.open(child)


def test_missing_parent_is_a_chain_error(tmp_path):
    a, child = tmp_path / "a.vhd", tmp_path / "child.vhd"
    write_vhd(a, 1 * MiB, {}, block_size=4096)
    write_vhd(child, 1 * MiB, {}, kind="differencing", block_size=4096, parent=str(a))
    a.unlink()
    with pytest.raises(errors.ChainError, match="not found"):
        vhdkit.open(child)
    # info of the top layer alone still works
    assert vhdkit.info(child).parent_name == "a.vhd"


def test_parent_outside_allowed_root_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    a, child = tmp_path / "a.vhd", tmp_path / "root" / "child.vhd"
    write_vhd(a, 1 * MiB, {}, block_size=4096)
    write_vhd(child, 1 * MiB, {}, kind="differencing", block_size=4096, parent=str(a),
              locators=[("MacX", "file://" + str(a))])
    with vhdkit.open(child):
        pass
    with pytest.raises(errors.ChainError, match="outside"):
        vhdkit.open(child, allowed_root=tmp_path / "root")
    with pytest.raises(errors.ChainError, match="outside"):
        vhdkit.open(child, parents=[a], allowed_root=tmp_path / "root")


def test_parent_must_be_a_regular_file(tmp_path):
    a, child = tmp_path / "a.vhd", tmp_path / "child.vhd"
    write_vhd(a, 1 * MiB, {}, block_size=4096)
    write_vhd(child, 1 * MiB, {}, kind="differencing", block_size=4096, parent=str(a))
    a.unlink()
    a.mkdir()
    with pytest.raises(errors.ChainError):
        vhdkit.open(child)


def test_parent_cycle_is_refused(tmp_path):
    # x's parent is y and y's parent is x: build y first with a placeholder
    x, y = tmp_path / "x.vhd", tmp_path / "y.vhd"
    ux, uy = uuid.uuid4().bytes, uuid.uuid4().bytes
    write_vhd(x, 1 * MiB, {}, block_size=4096, uid=ux)
    write_vhd(y, 1 * MiB, {}, kind="differencing", block_size=4096, parent=str(x), uid=uy)
    write_vhd(x, 1 * MiB, {}, kind="differencing", block_size=4096, parent=str(y), uid=ux)
    # y was written against the dynamic x with the same UUID, so y -> x -> y ...
    with pytest.raises(errors.ChainError, match="cycle"):
        vhdkit.open(y)


def test_chain_deeper_than_64_is_refused(tmp_path):
    prev = tmp_path / "d0.vhd"
    write_vhd(prev, 64 << 10, {}, block_size=4096)
    for i in range(1, 65):
        p = tmp_path / f"d{i}.vhd"
        write_vhd(p, 64 << 10, {}, kind="differencing", block_size=4096, parent=str(prev))
        prev = p
    with vhdkit.open(tmp_path / "d63.vhd") as s:
        assert s.depth == 64
    with pytest.raises(errors.ChainError, match="deeper"):
        vhdkit.open(prev)


# ---- the stream ---------------------------------------------------------------

def test_stream_is_a_raw_io_object_usable_by_copyfileobj(tmp_path, sample):
    path = sample("qemu53-dynamic-ext2")
    with vhdkit.open(path) as s:
        assert isinstance(s, io.RawIOBase) and s.readable() and s.seekable() and not s.writable()
        out = io.BytesIO()
        shutil.copyfileobj(s, out)
        assert hashlib.sha256(out.getvalue()).hexdigest() == SAMPLES["qemu53-dynamic-ext2"]["sha256"]
        assert s.tell() == s.virtual_size
        assert s.read(10) == b""
        s.seek(-1024, io.SEEK_END)
        assert len(s.read()) == 1024
        s.seek(1 << 40)
        assert s.read(5) == b"" and s.readinto(bytearray(5)) == 0
        with pytest.raises(ValueError):
            s.seek(-1)
        assert s.pread(4, 1024) == out.getvalue()[1024:1028]
    assert s.closed
    with pytest.raises(ValueError):
        s.read(1)


def test_buffered_reader_wraps_the_stream(sample):
    path = sample("windows-fixed-10M")
    with io.BufferedReader(vhdkit.open(path), 1 << 20) as b:
        b.seek(4096 + 3)
        first = b.read(100)
    with vhdkit.open(path) as s:
        s.seek(4099)
        assert s.read(100) == first


def test_open_refuses_write_modes(sample):
    with pytest.raises(errors.InvalidInputError):
        vhdkit.open(sample("windows-fixed-10M"), "w")


def test_probe_tells_vhds_from_other_files(tmp_path, sample):
    assert vhdkit.probe(sample("windows-fixed-10M")) == "fixed"
    assert vhdkit.probe(sample("windows-dynamic-512M")) == "dynamic"
    other = tmp_path / "x.raw"
    other.write_bytes(b"\0" * 4096)
    assert vhdkit.probe(other) is None
    (tmp_path / "tiny").write_bytes(b"abc")
    assert vhdkit.probe(tmp_path / "tiny") is None
    with pytest.raises(errors.NotFoundError):
        vhdkit.probe(tmp_path / "missing.vhd")


def test_info_fields_of_a_differencing_disk(tmp_path):
    chain = _chain(tmp_path, 1, [64 << 10, 4096])
    inf = vhdkit.info(chain[0])
    parent = vhdkit.info(chain[1])
    assert inf.disk_type == "differencing" and inf.parent_uuid == parent.uuid
    assert inf.parent_name == "l0.vhd"
    assert [(loc.code, loc.path) for loc in inf.locators] == [("W2ru", ".\\l0.vhd"),
                                                              ("MacX", "file://" + str(chain[1]))]
    assert inf.locators[1].data_space == 1          # sectors, as the spec says
    assert inf.locators[0].data_space == 512        # bytes, as Microsoft writes
    d = inf.to_dict()
    assert d["parent_uuid"] == str(parent.uuid) and d["disk_type"] == "differencing"
    assert isinstance(d["timestamp"], str)


def test_footer_of_511_bytes_is_accepted(tmp_path):
    p = tmp_path / "old.vhd"
    data = bytes(range(256)) * 2 * 2048
    write_vhd(p, 1 * MiB, {s: data[s * 512:(s + 1) * 512] for s in range(2048)}, kind="fixed")
    raw = p.read_bytes()
    assert raw[-1] == 0   # the last reserved byte: drop it, as very old images did
    p.write_bytes(raw[:-1])
    inf = vhdkit.info(p)
    assert inf.footer_size == 511
    with vhdkit.open(p) as s:
        assert s.read() == data


def test_dynamic_disk_falls_back_on_footer_copy_at_offset_0(tmp_path):
    p = tmp_path / "d.vhd"
    write_vhd(p, 1 * MiB, {5: b"x" * 512}, block_size=4096)
    with open(p, "r+b") as fh:
        fh.seek(-512, os.SEEK_END)
        fh.write(b"\0" * 512)
    inf = vhdkit.info(p)
    assert inf.footer_source == "copy at offset 0"
    with vhdkit.open(p) as s:
        assert s.pread(512, 5 * 512) == b"x" * 512
    assert "FOOTER_COOKIE" in vhdkit.check(p).codes()


def test_symlink_inside_root_to_a_parent_outside_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    outside = tmp_path / "base.vhd"
    write_vhd(outside, 1 * MiB, {}, block_size=4096)
    link = tmp_path / "root" / "base.vhd"
    link.symlink_to(outside)
    child = tmp_path / "root" / "child.vhd"
    write_vhd(child, 1 * MiB, {}, kind="differencing", block_size=4096, parent=str(link),
              locators=[("W2ru", ".\\base.vhd")])
    with vhdkit.open(child) as s:
        assert s.depth == 2
    with pytest.raises(errors.ChainError, match="outside"):
        vhdkit.open(child, allowed_root=tmp_path / "root")
    assert "PARENT_OUTSIDE_ROOT" in vhdkit.check(child, allowed_root=tmp_path / "root").codes()

