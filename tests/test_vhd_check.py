"""`check`: valid images pass (real samples, qemu-made, fixture chains); each
kind of damage gives its stable problem code; the CLI exits 1 on problems."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import time

import pytest

import vhdkit
from vhdkit import errors

from conftest import require_tool
from helpers_vhd import run_peer
from helpers_corrupt import (bat_entries, fix_footers, fix_header, header_offset, load, set_bat, set_footer_field,
                             set_header_field)
from vhdref import VHD_EPOCH, write_vhd

# Reaches the native core: runs again in scripts/test's sanitizer pass.
pytestmark = pytest.mark.native

MiB = 1 << 20


def _codes(path, **kw):
    return set(vhdkit.check(path, **kw).codes())


@pytest.fixture
def dyn(tmp_path):
    p = tmp_path / "dyn.vhd"
    write_vhd(p, 2 * MiB, {s: bytes([s % 255 + 1]) * 512 for s in range(0, 4096, 3)}, block_size=256 << 10)
    return p


@pytest.fixture
def chain(tmp_path):
    base, child = tmp_path / "base.vhd", tmp_path / "child.vhd"
    write_vhd(base, 1 * MiB, {0: b"b" * 512}, block_size=64 << 10)
    write_vhd(child, 1 * MiB, {1: b"c" * 512}, kind="differencing", block_size=4096, parent=str(base))
    return child, base


def test_real_samples_pass(sample):
    for stem in ("windows-fixed-10M", "windows-dynamic-512M", "qemu53-dynamic-ext2"):
        rep = vhdkit.check(sample(stem))
        assert rep.ok, rep.to_dict()


@pytest.mark.peer
@pytest.mark.parametrize("opts", ["subformat=dynamic", "subformat=fixed", "subformat=dynamic,force_size=on"])
def test_qemu_images_pass(tmp_path, opts):
    p = tmp_path / "q.vhd"
    run_peer([require_tool("qemu-img"), "create", "-f", "vpc", "-o", opts, p, "5M"])
    assert vhdkit.check(p).ok, vhdkit.check(p).to_dict()


def test_fixture_chain_passes(chain):
    child, _ = chain
    rep = vhdkit.check(child)
    assert rep.ok, rep.to_dict()


def test_footer_checksum(dyn):
    b = load(dyn)
    b[-512 + 40] ^= 1     # original size, checksum not fixed
    dyn.write_bytes(b)
    assert "FOOTER_CHECKSUM" in _codes(dyn)


@pytest.mark.parametrize("off,fmt,value,code", [
    (8, ">I", 0, "FOOTER_FEATURES"),
    (8, ">I", 0x12, "FOOTER_FEATURES"),
    (12, ">I", 0x00020000, "FOOTER_VERSION"),
    (60, ">I", 7, "FOOTER_DISK_TYPE"),
    (84, ">B", 1, "FOOTER_SAVED_STATE"),
    (84, ">B", 9, "FOOTER_SAVED_STATE"),
    (56, ">HBB", (4000, 16, 63), "FOOTER_GEOMETRY"),
    (16, ">Q", 1 << 40, "FOOTER_DATA_OFFSET"),
])
def test_footer_fields(dyn, off, fmt, value, code):
    b = load(dyn)
    if isinstance(value, tuple):
        struct.pack_into(fmt, b, len(b) - 512 + off, *value)
        fix_footers(b)
    else:
        set_footer_field(b, off, fmt, value)
    dyn.write_bytes(b)
    assert code in _codes(dyn)


def test_footer_timestamp_in_future(dyn):
    b = load(dyn)
    set_footer_field(b, 24, ">I", int(time.time()) - VHD_EPOCH + 10 * 86400)
    dyn.write_bytes(b)
    assert "FOOTER_TIMESTAMP" in _codes(dyn)


def test_footer_copy_differs(dyn):
    b = load(dyn)
    b[40] ^= 1       # the copy at 0 only
    dyn.write_bytes(b)
    assert "FOOTER_COPY_MISMATCH" in _codes(dyn)


def test_fixed_disk_data_offset_and_size(tmp_path):
    p = tmp_path / "f.vhd"
    write_vhd(p, 1 * MiB, {0: b"x" * 512}, kind="fixed")
    b = load(p)
    set_footer_field(b, 16, ">Q", 512)
    p.write_bytes(b)
    assert "FOOTER_DATA_OFFSET" in _codes(p)
    b = load(p)
    set_footer_field(b, 48, ">Q", 2 * MiB)
    p.write_bytes(b)
    assert "FILE_TRUNCATED" in _codes(p)


@pytest.mark.parametrize("off,fmt,value,code", [
    (0, "8s", b"cxsparsX", "HEADER_COOKIE"),
    (24, ">I", 0x00020000, "HEADER_VERSION"),
    (8, ">Q", 0, "HEADER_DATA_OFFSET"),
    (16, ">Q", 1537, "HEADER_TABLE_OFFSET"),
    (16, ">Q", 1 << 40, "HEADER_TABLE_OFFSET"),
    (32, ">I", 0, "HEADER_BLOCK_SIZE"),
    (32, ">I", 3 * 65536, "HEADER_BLOCK_SIZE"),
    (28, ">I", 2, "HEADER_MAX_ENTRIES"),
    (28, ">I", 0xFFFFFFFF, "BAT_PAST_EOF"),
])
def test_header_fields(dyn, off, fmt, value, code):
    b = load(dyn)
    set_header_field(b, off, fmt, value)
    dyn.write_bytes(b)
    assert code in _codes(dyn)


def test_header_checksum(dyn):
    b = load(dyn)
    b[header_offset(b) + 30] ^= 0x40
    dyn.write_bytes(b)
    assert "HEADER_CHECKSUM" in _codes(dyn)
    with pytest.raises(errors.ChecksumError):
        vhdkit.open(dyn)


def test_bat_entry_past_eof(dyn):
    b = load(dyn)
    set_bat(b, 0, 0x00FFFFFF)
    dyn.write_bytes(b)
    assert "BAT_PAST_EOF" in _codes(dyn)
    with pytest.raises(errors.OutOfRangeError):
        vhdkit.open(dyn)


def test_bat_entries_overlapping_each_other_and_metadata(dyn):
    b = load(dyn)
    e = bat_entries(b, 8)
    set_bat(b, 1, e[0])        # two blocks share storage
    set_bat(b, 2, 1)           # a block on top of the dynamic header
    dyn.write_bytes(b)
    probs = vhdkit.check(dyn).problems
    overlaps = [p for p in probs if p.code == "BAT_OVERLAP"]
    assert len(overlaps) >= 2
    assert all(p.offset is not None for p in overlaps)


def test_non_differencing_disk_with_parent_fields(dyn):
    b = load(dyn)
    h = header_offset(b)
    b[h + 40:h + 56] = b"\x11" * 16
    b[h + 64:h + 66] = "x".encode("utf-16-be")
    fix_header(b)
    dyn.write_bytes(b)
    assert "PARENT_FIELDS" in _codes(dyn)


def test_differencing_problems(chain, tmp_path):
    child, base = chain
    b = load(child)
    h = header_offset(b)
    # locator 0 (W2ru) pointing past the end; locator 1 (MacX) naming another file
    struct.pack_into(">Q", b, h + 576 + 16, 1 << 40)
    loc1_off = struct.unpack(">Q", b[h + 600 + 16:h + 600 + 24])[0]
    loc1_len = struct.unpack(">I", b[h + 600 + 8:h + 600 + 12])[0]
    txt = b[loc1_off:loc1_off + loc1_len].replace(b"base.vhd", b"othr.vhd")
    b[loc1_off:loc1_off + loc1_len] = txt
    fix_header(b)
    child.write_bytes(b)
    codes = _codes(child)
    assert {"LOCATOR_RANGE", "LOCATOR_NAME_MISMATCH"} <= codes
    assert "PARENT_MISSING" not in codes        # still found by its header name


def test_parent_missing_uuid_and_timestamp(chain):
    child, base = chain
    raw = base.read_bytes()
    base.unlink()
    assert "PARENT_MISSING" in _codes(child)
    assert "PARENT_MISSING" not in _codes(child, parents=False)
    # same file, other timestamp: timestamp problem only
    b = bytearray(raw)
    set_footer_field(b, 24, ">I", struct.unpack(">I", raw[-512 + 24:-512 + 28])[0] - 100)
    base.write_bytes(b)
    codes = _codes(child)
    assert "PARENT_TIMESTAMP" in codes and "PARENT_UUID" not in codes
    # other UUID
    b = bytearray(raw)
    set_footer_field(b, 68, "16s", b"\x42" * 16)
    base.write_bytes(b)
    assert "PARENT_UUID" in _codes(child)


def test_parent_problems_are_reported_with_their_layer(chain):
    child, base = chain
    b = load(base)
    set_footer_field(b, 84, ">B", 1)   # saved state in the parent
    base.write_bytes(b)
    rep = vhdkit.check(child)
    assert [(p.code, p.layer) for p in rep.problems] == [("FOOTER_SAVED_STATE", 1)]


def test_unopenable_file_is_one_problem(tmp_path):
    assert [p.code for p in vhdkit.check(tmp_path / "nope.vhd").problems] == ["NOT_FOUND"]
    (tmp_path / "small").write_bytes(b"x" * 100)
    assert [p.code for p in vhdkit.check(tmp_path / "small").problems] == ["FILE_TOO_SMALL"]
    (tmp_path / "raw").write_bytes(b"\0" * 4096)
    assert [p.code for p in vhdkit.check(tmp_path / "raw").problems] == ["FOOTER_COOKIE"]


def test_cli_check_exit_status_and_json(dyn):
    ok = subprocess.run([sys.executable, "-m", "vhdkit", "check", str(dyn), "--json"], capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True
    b = load(dyn)
    set_header_field(b, 32, ">I", 0)
    dyn.write_bytes(b)
    bad = subprocess.run([sys.executable, "-m", "vhdkit", "check", str(dyn)], capture_output=True, text=True)
    assert bad.returncode == 1 and "HEADER_BLOCK_SIZE" in bad.stdout
    info = subprocess.run([sys.executable, "-m", "vhdkit", "info", str(dyn)], capture_output=True, text=True)
    assert info.returncode == 1
    assert info.stderr.startswith("vhdkit: error: ") and len(info.stderr.strip().splitlines()) == 1


def test_cli_info_and_map_json(chain):
    child, base = chain
    r = subprocess.run([sys.executable, "-m", "vhdkit", "info", str(child), "--json"], capture_output=True,
                       text=True, check=True)
    d = json.loads(r.stdout)
    assert d["disk_type"] == "differencing" and len(d["chain"]) == 2
    assert d["chain"][1]["path"] == str(base.resolve())
    r = subprocess.run([sys.executable, "-m", "vhdkit", "map", str(child), "--json"], capture_output=True,
                       text=True, check=True)
    rows = json.loads(r.stdout)
    assert rows[0] == {"start": 0, "length": 512, "data": True, "zero": False, "depth": 1,
                       "offset": rows[0]["offset"], "file": str(base.resolve())}
    assert rows[1]["start"] == 512 and rows[1]["depth"] == 0
    assert sum(r["length"] for r in rows) == 1 * MiB


# ---- open and check judge BAT entries and locators by one validator --------
# (csrc/vk_format.c: vk_bat_entry_class, vk_locator_validate).  Each case is
# one where the opener and the checker used to disagree.

def _opens(path) -> bool:
    try:
        with vhdkit.open(path) as s:
            s.read(s.virtual_size)
        return True
    except errors.VhdkitError:
        return False


def test_block_running_past_eof_is_refused_by_open_and_check_alike(dyn):
    """Bitmap inside the file, data past its end (a truncated image): the
    opener used to accept it and fail on read; qemu refuses it at open as
    truncated, blktap's check as clobbering the footer."""
    b = load(dyn)
    set_bat(b, 0, (len(b) - 1024) // 512)      # bitmap in the sector before the footer
    dyn.write_bytes(b)
    with pytest.raises(errors.OutOfRangeError, match="runs past the end of the file"):
        vhdkit.open(dyn)
    probs = [p for p in vhdkit.check(dyn).problems if p.code == "BAT_PAST_EOF"]
    assert probs and "runs past the end" in probs[0].message


def test_entry_beyond_the_disk_is_not_read_by_either(dyn):
    """An allocated entry the virtual size does not address: the opener never
    reads it (the file opens), and the checker reports it as beyond the disk,
    not as the fatal BAT_PAST_EOF it used to."""
    b = load(dyn)
    assert bat_entries(b, 8) and struct.unpack(">I", b[header_offset(b) + 28:header_offset(b) + 32])[0] == 8
    set_header_field(b, 28, ">I", 16)          # the BAT's sector has room for 128 entries
    set_bat(b, 12, 0x00FFFFFF)                 # far past the end of the file
    dyn.write_bytes(b)
    assert _opens(dyn)
    codes = _codes(dyn)
    assert "BAT_BEYOND_DISK" in codes and "BAT_PAST_EOF" not in codes


def test_entry_beyond_the_disk_by_the_size_rule(dyn):
    """Which entries count follows the size rule the caller opens with: an
    entry past the CHS size but inside the current size is beyond the disk
    under size_rule='chs' for the checker as for the opener."""
    b = load(dyn)
    struct.pack_into(">HBB", b, len(b) - 512 + 56, 1, 4, 128)   # CHS: 1*4*128 sectors = 256 KiB, one block
    fix_footers(b)
    dyn.write_bytes(b)
    with vhdkit.open(dyn, size_rule="chs") as s:
        assert s.virtual_size == 256 << 10
    assert "BAT_BEYOND_DISK" in _codes(dyn, size_rule="chs")
    assert "BAT_BEYOND_DISK" not in _codes(dyn)


def test_block_over_metadata_reads_but_is_not_written(dyn):
    """A block on top of the dynamic header: reads tolerate it (qemu does),
    the checker names it, and writing is refused since a write into that
    block would overwrite the header."""
    b = load(dyn)
    set_bat(b, 7, 1)                           # block 7's bitmap at 512: the dynamic header
    dyn.write_bytes(b)
    assert _opens(dyn)
    assert "BAT_OVERLAP" in _codes(dyn)
    with pytest.raises(errors.FormatError, match="overlap its footer, header or BAT"):
        with vhdkit.open(dyn, "r+") as s:
            s.write(b"x" * 512)
    assert dyn.read_bytes() == bytes(b)


def test_locator_with_unknown_code_is_skipped_by_open_and_named_by_check(chain):
    """A locator the validator rejects (unknown code, data past the end) is
    one the opener skips for the next; the checker names it."""
    child, base = chain
    b = load(child)
    h = header_offset(b)
    struct.pack_into(">I", b, h + 576, 0x01020304)                 # locator 0: unknown code
    struct.pack_into(">Q", b, h + 600 + 16, len(b) + 4096)         # locator 1: data past the end
    fix_header(b)
    child.write_bytes(b)
    with vhdkit.open(child) as s:          # found through the next locator or the name
        assert s.depth == 2
    codes = _codes(child)
    assert {"LOCATOR_CODE", "LOCATOR_RANGE"} <= codes and "PARENT_MISSING" not in codes


def test_declared_bat_past_eof_opens_and_is_named_once(dyn):
    """A header declaring more entries than the file holds, the ones the disk
    uses inside it: the opener reads those (as before), the checker names the
    table and still checks the entries, without calling every block an
    overlap of a table that is not there."""
    b = load(dyn)
    set_header_field(b, 28, ">I", 0xFFFFFFFF)
    dyn.write_bytes(b)
    assert _opens(dyn)
    codes = [p.code for p in vhdkit.check(dyn).problems]
    assert codes.count("BAT_PAST_EOF") == 1 and "BAT_OVERLAP" not in codes
    with vhdkit.open(dyn, "r+") as s:      # writes touch only the entries the disk uses
        s.write(b"w" * 512)


def test_bad_block_size_and_table_offset_are_both_named(dyn):
    b = load(dyn)
    h = header_offset(b)
    struct.pack_into(">I", b, h + 32, 3)            # block size
    struct.pack_into(">Q", b, h + 16, 1 << 40)      # BAT offset
    fix_header(b)
    dyn.write_bytes(b)
    assert {"HEADER_BLOCK_SIZE", "HEADER_TABLE_OFFSET"} <= _codes(dyn)
    with pytest.raises(errors.FormatError, match="block size"):
        vhdkit.open(dyn)
