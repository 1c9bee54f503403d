"""Crafted hostile VHDs: every footer and dynamic-header field at its
boundary values, BAT loops and overlaps, bitmaps larger than the file,
locators that lie, and parents that are devices, FIFOs, directories, the
image itself, a cycle, or outside the allowed root.

Each case is built with the independent reference writer (fixtures/vhdref.py)
and damaged in exactly one place (tests/helpers_hostile.py recomputes the
checksums, so the damaged field itself is what the reader meets).  The
expectation comes from the VHD specification: a typed VhdkitError from
open/info (or a consistent read where the spec allows the value), a check
report that is not ok (check reports; it never raises), and nothing written
anywhere (the directory tree is unchanged).
"""
from __future__ import annotations

import os
import struct

import pytest

import vhdkit
import vhdref
from helpers_hostile import (bat, patch_footer, patch_header, set_bat, set_locator, tree_state)
from vhdkit.errors import (ChainError, ChecksumError, FormatError, InvalidInputError, NotFoundError,
                           OutOfRangeError, UnsupportedError, VhdkitError)

# Reaches the native core: runs again in scripts/test's sanitizer pass.
pytestmark = pytest.mark.native

BS = 4096                       # small blocks: several in a few KiB
SIZE = 8 * BS
TiB = 1 << 40
MAX_VIRTUAL = 2040 << 30


def _data(seed: int = 1):
    return {s: bytes([(s * 7 + seed) & 0xFF]) * 512 for s in range(0, SIZE // 512, 3)}


def dynamic(tmp_path, name="d.vhd", **kw):
    p = tmp_path / name
    vhdref.write_vhd(p, SIZE, _data(), kind="dynamic", block_size=BS, **kw)
    return p


def fixed(tmp_path, name="f.vhd"):
    p = tmp_path / name
    vhdref.write_vhd(p, SIZE, _data(), kind="fixed")
    return p


def read_all(path, **kw) -> bytes:
    with vhdkit.open(path, **kw) as s:
        s.map()
        return s.read()


def assert_refused(path, exc, *, check_code=None, **kw):
    """open raises ``exc`` (and info too, unless the fault is in a parent:
    info reads only the top layer); check reports a problem (``check_code``
    if given) without raising; nothing in the directory changes."""
    root = path.parent
    before = tree_state(root)
    with pytest.raises(exc):
        read_all(path, **kw)
    if exc is not ChainError:
        with pytest.raises(exc):
            vhdkit.info(path, **{k: v for k, v in kw.items() if k != "parents"})
    rep = vhdkit.check(path, **{k: v for k, v in kw.items() if k in ("parents", "allowed_root")})
    assert not rep.ok, rep
    if check_code:
        assert check_code in rep.codes(), rep
    assert tree_state(root) == before


# ---- footer fields -----------------------------------------------------------

FOOTER_CASES = [
    # (label, kind, fields, expected exception, check code)
    ("version-0", "dynamic", {"version": 0}, UnsupportedError, "FOOTER_VERSION"),
    ("version-2.0", "fixed", {"version": 0x00020000}, UnsupportedError, "FOOTER_VERSION"),
    ("version-max", "dynamic", {"version": 0xFFFFFFFF}, UnsupportedError, "FOOTER_VERSION"),
    ("disk-type-0", "fixed", {"disk_type": 0}, FormatError, None),
    ("disk-type-1", "dynamic", {"disk_type": 1}, FormatError, None),
    ("disk-type-5", "dynamic", {"disk_type": 5}, FormatError, None),
    ("disk-type-max", "fixed", {"disk_type": 0xFFFFFFFF}, FormatError, None),
    ("data-offset-0", "dynamic", {"data_offset": 0}, FormatError, None),
    ("data-offset-eof", "dynamic", {"data_offset": "eof"}, OutOfRangeError, None),
    ("data-offset-eof-1023", "dynamic", {"data_offset": "eof-1023"}, OutOfRangeError, None),
    ("data-offset-max", "dynamic", {"data_offset": 2**64 - 1}, OutOfRangeError, None),
    ("data-offset-unaligned", "dynamic", {"data_offset": 513}, FormatError, None),
    ("current-size-max", "dynamic", {"current_size": 2**64 - 1}, UnsupportedError, None),
    ("current-size-over-2040G", "dynamic", {"current_size": MAX_VIRTUAL + 512}, UnsupportedError, None),
    ("fixed-size-past-file", "fixed", {"current_size": SIZE + 512}, OutOfRangeError, None),
    ("fixed-size-max", "fixed", {"current_size": 2**64 - 1}, OutOfRangeError, None),
    ("chs-size-past-file", "fixed", {"cylinders": 65534, "heads": 16, "sectors": 254}, OutOfRangeError, None),
]


@pytest.mark.parametrize("label,kind,fields,exc,code", FOOTER_CASES, ids=[c[0] for c in FOOTER_CASES])
def test_footer_field_boundaries_refused(tmp_path, label, kind, fields, exc, code):
    p = dynamic(tmp_path) if kind == "dynamic" else fixed(tmp_path)
    size = os.path.getsize(p)
    fields = dict(fields)
    if fields.get("data_offset") == "eof":
        fields["data_offset"] = size
    elif fields.get("data_offset") == "eof-1023":
        fields["data_offset"] = size - 1023
    if label.startswith("chs"):
        patch_footer(p, creator_version=0x00050003)
        with open(p, "r+b") as fh:      # creator "vpc ": the CHS size rules
            for off in (0, size - 512):
                fh.seek(off)
                b = bytearray(fh.read(512))
                b[28:32] = b"vpc "
                struct.pack_into(">I", b, 64, vhdref.checksum(bytes(b), 64))
                fh.seek(off)
                fh.write(b)
    patch_footer(p, **fields)
    assert_refused(p, exc, check_code=code)


def test_footer_bad_checksum_everywhere(tmp_path):
    p = dynamic(tmp_path)
    patch_footer(p, checksum=0x12345678)
    assert_refused(p, ChecksumError, check_code="FOOTER_CHECKSUM")


def test_footer_bad_cookie_is_not_a_vhd(tmp_path):
    p = fixed(tmp_path)
    with open(p, "r+b") as fh:
        fh.seek(-512, os.SEEK_END)
        fh.write(b"conectiX")
    assert vhdkit.probe(p) is None
    assert_refused(p, FormatError)


def test_end_footer_damaged_copy_at_zero_used(tmp_path):
    """Spec: the copy at offset 0 exists for recovery; the data must read
    the same from it (the end footer's checksum is wrong)."""
    p = dynamic(tmp_path)
    want = read_all(p)
    patch_footer(p, both=False, checksum=0)
    assert read_all(p) == want
    assert "FOOTER_CHECKSUM" in vhdkit.check(p).codes()


@pytest.mark.parametrize("fields", [{"features": 0}, {"features": 0xFFFFFFFF}, {"timestamp": 0xFFFFFFFF},
                                    {"saved_state": 1}])
def test_odd_but_readable_footer_fields(tmp_path, fields):
    """Fields that do not affect where data lives: the data reads the same,
    check names the oddity."""
    p = dynamic(tmp_path)
    want = read_all(p)
    patch_footer(p, **fields)
    assert read_all(p) == want
    assert not vhdkit.check(p).ok


@pytest.mark.parametrize("size", [0, 512, 1, 511, 2**64 - 512])
def test_tiny_and_huge_sizes(tmp_path, size):
    p = tmp_path / "t.vhd"
    p.write_bytes(bytes(size) if size < 4096 else b"")
    if size >= 4096:
        with open(p, "wb") as fh:    # a fixed footer claiming a huge disk in a tiny file
            fh.write(vhdref.make_footer(size=size, disk_type=2, data_offset=2**64 - 1, uid=b"u" * 16,
                                        timestamp=0))
        assert_refused(p, OutOfRangeError)
    else:
        assert_refused(p, FormatError)


# ---- dynamic header fields -----------------------------------------------------

HEADER_CASES = [
    ("block-size-0", {"block_size": 0}, FormatError),
    ("block-size-1", {"block_size": 1}, FormatError),
    ("block-size-511", {"block_size": 511}, FormatError),
    ("block-size-513", {"block_size": 513}, FormatError),
    ("block-size-3M", {"block_size": 3 << 20}, FormatError),
    ("block-size-2G", {"block_size": 1 << 31}, FormatError),
    ("block-size-max", {"block_size": 0xFFFFFFFF}, FormatError),
    ("version-0", {"version": 0}, UnsupportedError),
    ("version-2", {"version": 0x00020000}, UnsupportedError),
    ("table-offset-eof", {"table_offset": "eof"}, OutOfRangeError),
    ("table-offset-max", {"table_offset": 2**64 - 1}, OutOfRangeError),
    ("table-offset-wrap", {"table_offset": 2**64 - 8}, OutOfRangeError),
    ("max-entries-max", {"max_table_entries": 0xFFFFFFFF}, OutOfRangeError),
]


@pytest.mark.parametrize("label,fields,exc", HEADER_CASES, ids=[c[0] for c in HEADER_CASES])
def test_header_field_boundaries_refused(tmp_path, label, fields, exc):
    p = dynamic(tmp_path)
    fields = dict(fields)
    if fields.get("table_offset") == "eof":
        fields["table_offset"] = os.path.getsize(p)
    if label.startswith("max-entries"):
        # more entries than the disk needs are fine; the table must still
        # fit the file, so make the disk need them all
        patch_footer(p, current_size=MAX_VIRTUAL)
    patch_header(p, **fields)
    assert_refused(p, exc)


def test_header_bad_checksum_and_cookie(tmp_path):
    p = dynamic(tmp_path)
    patch_header(p, checksum=0)
    assert_refused(p, ChecksumError)
    q = dynamic(tmp_path, "q.vhd")
    patch_header(q, raw=[(0, b"cxsparsX")])
    assert_refused(q, FormatError)


def test_max_table_entries_zero_reads_zeros(tmp_path):
    """Spec: entries past Max Table Entries are not in the table; the disk
    reads as zeros there (no table at all: all zeros) -- and check says the
    table is too small for the disk."""
    p = dynamic(tmp_path)
    patch_header(p, max_table_entries=0)
    assert read_all(p) == bytes(SIZE)
    assert not vhdkit.check(p).ok


def test_huge_sparse_disk_with_tiny_blocks_maps_quickly(tmp_path):
    """2040 GiB of 512-byte blocks and no table: four billion empty blocks
    must not be walked one by one (found by fuzz_open as a timeout)."""
    p = dynamic(tmp_path)
    patch_footer(p, current_size=MAX_VIRTUAL)
    patch_header(p, block_size=512, max_table_entries=0)
    with vhdkit.open(p) as s:
        ext = s.map()
        assert [(e.offset, e.length, e.allocated) for e in ext] == [(0, MAX_VIRTUAL, False)]
        assert s.pread(4096, MAX_VIRTUAL - 4096) == bytes(4096)


# ---- BAT ---------------------------------------------------------------------

def test_bat_loop_two_entries_same_block(tmp_path):
    """Two BAT entries naming the same block: readable (both read the same
    bytes), but check must flag the overlap."""
    p = dynamic(tmp_path)
    b = bat(p, SIZE // BS)
    set_bat(p, 1, b[0])
    with vhdkit.open(p) as s:
        assert s.pread(BS, 0) == s.pread(BS, BS)
    rep = vhdkit.check(p)
    assert not rep.ok and any("OVERLAP" in c or "BAT" in c for c in rep.codes()), rep


@pytest.mark.parametrize("where", ["footer-copy", "header", "bat", "footer-end"])
def test_block_overlapping_metadata_flagged(tmp_path, where):
    p = dynamic(tmp_path)
    size = os.path.getsize(p)
    sector = {"footer-copy": 0, "header": 1, "bat": 3, "footer-end": (size - 512) // 512}[where]
    set_bat(p, 2, sector)
    rep = vhdkit.check(p)
    assert not rep.ok, rep
    # reading is allowed to refuse (range) or to return bytes; never crash
    try:
        read_all(p)
    except VhdkitError:
        pass


@pytest.mark.parametrize("entry", ["eof", "eof-1", 0xFFFFFFFE, 0x7FFFFFFF])
def test_bat_entry_past_file_refused(tmp_path, entry):
    p = dynamic(tmp_path)
    size = os.path.getsize(p)
    value = {"eof": size // 512, "eof-1": size // 512 - 1}.get(entry, entry)
    set_bat(p, 0, value)
    before = tree_state(tmp_path)
    with pytest.raises((OutOfRangeError, FormatError)):
        read_all(p)
    assert not vhdkit.check(p).ok
    assert tree_state(tmp_path) == before


def test_bitmap_larger_than_file(tmp_path):
    """1 GiB blocks have a 256 KiB bitmap: a block in this small file cannot
    hold it."""
    p = dynamic(tmp_path)
    patch_header(p, block_size=1 << 30)
    assert_refused(p, OutOfRangeError)


# ---- locators and parents ---------------------------------------------------------

def chain(tmp_path, locators=None, parent_name=None):
    parent = tmp_path / "parent.vhd"
    vhdref.write_vhd(parent, SIZE, _data(5), kind="dynamic", block_size=BS)
    child = tmp_path / "child.vhd"
    vhdref.write_vhd(child, SIZE, _data(9), kind="differencing", block_size=BS, parent=str(parent),
                     locators=locators if locators is not None else [("W2ru", ".\\parent.vhd")],
                     parent_name=parent_name)
    return child, parent


def _w2ru(text: str) -> bytes:
    return text.encode("utf-16-le")


@pytest.mark.parametrize("label,code,data,kw", [
    ("length-0", b"W2ru", _w2ru("parent.vhd"), {"data_length": 0}),
    ("length-huge", b"W2ru", _w2ru("parent.vhd"), {"data_length": 0xFFFFFFFF}),
    ("offset-past-eof", b"W2ru", _w2ru("parent.vhd"), {"data_offset": 1 << 40}),
    ("offset-wraps", b"W2ru", _w2ru("parent.vhd"), {"data_offset": 2**64 - 4}),
    ("odd-utf16", b"W2ru", _w2ru("parent.vhd") + b"x", {}),
    ("lone-surrogate", b"W2ru", b"\x00\xd8" + _w2ru("x"), {}),
    ("macx-nul", b"MacX", b"file://pa\x00rent.vhd", {}),
    ("macx-bad-utf8", b"MacX", b"file://\xff\xfe.vhd", {}),
    ("macx-percent-nul", b"MacX", b"file://parent%00.vhd", {}),
    ("unknown-code", b"Wi2r", b"parent.vhd", {}),
    ("windows-drive", b"W2ku", _w2ru("C:\\images\\parent.vhd"), {}),
])
def test_lying_locators_give_chain_error(tmp_path, label, code, data, kw):
    """The only locator lies and the parent name names nothing usable: a
    ChainError (parent not found), never a read of something else."""
    child, parent = chain(tmp_path, locators=[], parent_name="nothing-here.vhd")
    set_locator(child, 0, code, data, **kw)
    assert_refused(child, ChainError)
    # explicit parent still works: the broken locator is not needed
    assert read_all(child, parents=[parent])


def _point_locator(child, target: str) -> None:
    set_locator(child, 0, b"MacX", ("file://" + target).encode())


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/null", "fifo", "dir", "self", "symlink-dev"])
def test_parent_is_not_a_regular_file(tmp_path, target):
    child, parent = chain(tmp_path, locators=[], parent_name="none.vhd")
    if target == "fifo":
        path = str(tmp_path / "fifo.vhd")
        os.mkfifo(path)
    elif target == "dir":
        path = str(tmp_path / "adir")
        os.mkdir(path)
    elif target == "self":
        path = str(child)
    elif target == "symlink-dev":
        path = str(tmp_path / "link.vhd")
        os.symlink("/dev/zero", path)
    else:
        path = target
    _point_locator(child, path)
    assert_refused(child, ChainError)
    # explicitly as well
    with pytest.raises((ChainError, InvalidInputError)):
        read_all(child, parents=[path])


def test_top_level_fifo_does_not_block(tmp_path):
    """Opening a FIFO must not wait for a writer (found while writing these
    tests: open(2) without O_NONBLOCK hung forever)."""
    f = tmp_path / "x.vhd"
    os.mkfifo(f)
    assert vhdkit.probe(f) is None
    with pytest.raises(InvalidInputError):
        vhdkit.open(f)
    with pytest.raises(InvalidInputError):
        vhdkit.info(f)
    assert not vhdkit.check(f).ok
    from vhdkit.vhd import write as vw
    with pytest.raises(VhdkitError):
        vw.repair(f)


@pytest.mark.parametrize("target", ["/dev/zero", "directory", "missing"])
def test_top_level_special_files(tmp_path, target):
    path = {"/dev/zero": "/dev/zero", "directory": str(tmp_path), "missing": str(tmp_path / "none.vhd")}[target]
    exc = {"/dev/zero": FormatError, "directory": InvalidInputError, "missing": NotFoundError}[target]
    with pytest.raises(exc):
        vhdkit.open(path)
    assert not vhdkit.check(path).ok


def test_parent_cycle_refused(tmp_path):
    """a -> b -> a: both differencing, each naming the other."""
    base = tmp_path / "base.vhd"
    vhdref.write_vhd(base, SIZE, {}, kind="dynamic", block_size=BS)
    a = tmp_path / "a.vhd"
    b = tmp_path / "b.vhd"
    vhdref.write_vhd(b, SIZE, {}, kind="differencing", block_size=BS, parent=str(base),
                     locators=[("W2ru", ".\\a.vhd")])
    vhdref.write_vhd(a, SIZE, {}, kind="differencing", block_size=BS, parent=str(b),
                     locators=[("W2ru", ".\\b.vhd")])
    # make b name a as its parent (uuid and all)
    with open(a, "rb") as fh:
        fh.seek(-512, os.SEEK_END)
        auid = fh.read(512)[68:84]
    patch_header(b, raw=[(40, auid)])
    assert_refused(a, ChainError)
    assert "CHAIN_CYCLE" in vhdkit.check(a).codes()


def test_chain_deeper_than_limit_refused(tmp_path):
    prev = tmp_path / "l0.vhd"
    vhdref.write_vhd(prev, SIZE, {}, kind="dynamic", block_size=BS)
    for i in range(1, 70):
        cur = tmp_path / f"l{i}.vhd"
        vhdref.write_vhd(cur, SIZE, {}, kind="differencing", block_size=BS, parent=str(prev),
                         locators=[("W2ru", f".\\l{i - 1}.vhd")])
        prev = cur
    assert_refused(prev, ChainError)


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_parent_outside_allowed_root(tmp_path, how):
    outside = tmp_path / "outside"
    root = tmp_path / "root"
    outside.mkdir()
    root.mkdir()
    parent = outside / "parent.vhd"
    vhdref.write_vhd(parent, SIZE, _data(5), kind="dynamic", block_size=BS)
    child = root / "child.vhd"
    if how == "absolute":
        locs = [("MacX", "file://" + str(parent))]
    elif how == "dotdot":
        locs = [("W2ru", "..\\outside\\parent.vhd")]
    else:
        os.symlink(parent, root / "parent.vhd")
        locs = [("W2ru", ".\\parent.vhd")]
    vhdref.write_vhd(child, SIZE, {}, kind="differencing", block_size=BS, parent=str(parent), locators=locs)
    assert read_all(child)            # without a root it resolves
    assert_refused(child, ChainError, allowed_root=root)
    rep = vhdkit.check(child, allowed_root=root)
    assert any("OUTSIDE" in c for c in rep.codes()), rep


def test_parent_with_wrong_uuid_refused(tmp_path):
    child, parent = chain(tmp_path)
    patch_header(child, raw=[(40, b"\x11" * 16)])
    assert_refused(child, ChainError)
