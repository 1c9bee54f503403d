"""Hostile VHDX files: truncated, bad CRCs, overlapping regions, BAT entries
outside the file or overlapping, absurd metadata, log entries pointing
anywhere.  Every one gives a typed VhdkitError on open (or opens, where the
spec allows, with `check` naming the problem) and never a crash -- also when
run against the ASan+UBSan build (see scripts/test)."""
from __future__ import annotations

import random
import struct
import uuid

import pytest

import vhdkit
from vhdkit import errors
import vhdxref
from vhdxref import KIB, MIB

META = 2 * MIB
BAT = 3 * MIB
RT1, RT2 = 192 * KIB, 256 * KIB


@pytest.fixture
def base(tmp_path):
    p = tmp_path / "base.vhdx"
    secs = {s: bytes([s & 0xFF, 1]) * 256 for s in range(0, 16384, 301)}
    vhdxref.write_vhdx(p, 8 * MIB, secs)
    return p


def patch(path, off, data, fix=True):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)
    if fix:
        vhdxref.refresh_checksums(path)


def exercise(path):
    """Open, read everything, map, info, check: a typed error or a result, never a crash."""
    try:
        with vhdkit.open(path) as s:
            while s.read(4 * MIB):
                pass
            s.map()
            s.info
    except errors.VhdkitError:
        pass
    return vhdkit.check(path)


def opens_with(path, exc, code=None):
    with pytest.raises(exc):
        vhdkit.open(path)
    rep = vhdkit.check(path)
    assert not rep.ok
    if code:
        assert code in rep.codes(), rep.problems


@pytest.mark.parametrize("size", [0, 7, 100, 64 * KIB, MIB - 1, MIB, 2 * MIB + 5, 3 * MIB + 4096, 4 * MIB + 100])
def test_truncated(base, size):
    with open(base, "r+b") as f:
        f.truncate(size)
    with pytest.raises(errors.VhdkitError):
        vhdkit.open(base)
    assert not exercise(base).ok


def test_one_bad_header_is_tolerated_both_are_not(base):
    patch(base, 128 * KIB + 100, b"\xff", fix=False)      # header 2 (the current one) torn
    with vhdkit.open(base) as s:
        assert s.info.vhdx["headers"][0]["current"] and not s.info.vhdx["headers"][1]["valid"]
    assert "VHDX_HEADER_CHECKSUM" in vhdkit.check(base).codes()
    patch(base, 64 * KIB + 100, b"\xff", fix=False)
    opens_with(base, errors.ChecksumError, "VHDX_HEADER_CHECKSUM")


def test_one_bad_region_table_is_tolerated_both_are_not(base):
    patch(base, RT1 + 1000, b"\x01", fix=False)
    with vhdkit.open(base) as s:
        assert s.info.vhdx["region_table"]["copy"] == 2
    assert "VHDX_REGION_CHECKSUM" in vhdkit.check(base).codes()
    patch(base, RT2 + 1000, b"\x01", fix=False)
    opens_with(base, errors.ChecksumError, "VHDX_REGION_CHECKSUM")


@pytest.mark.parametrize("what, entry_off, value, exc, code", [
    ("regions overlap", 48 + 16, struct.pack("<Q", BAT), errors.FormatError, "VHDX_REGION_OVERLAP"),
    ("region over the log", 16 + 16, struct.pack("<Q", MIB), errors.FormatError, "VHDX_REGION_OVERLAP"),
    ("region past the end", 16 + 16, struct.pack("<Q", 1 << 40), errors.OutOfRangeError, "VHDX_REGION_RANGE"),
    ("region in the headers", 16 + 16, struct.pack("<Q", 0), errors.FormatError, "VHDX_REGION_PLACEMENT"),
    ("region length overflows", 16 + 16, struct.pack("<Q", 2 ** 64 - MIB), errors.OutOfRangeError, "VHDX_REGION_RANGE"),
    ("entry count absurd", 8, struct.pack("<I", 60000), errors.FormatError, "VHDX_REGION_COUNT"),
    ("unknown required region", 80, uuid.uuid4().bytes_le + struct.pack("<QII", 5 * MIB, MIB, 1),
     errors.UnsupportedError, None),
])
def test_region_table_hostile(base, what, entry_off, value, exc, code):
    if what == "unknown required region":
        patch(base, RT1 + 8, struct.pack("<I", 3), fix=False)
        patch(base, RT2 + 8, struct.pack("<I", 3), fix=False)
    patch(base, RT1 + entry_off, value, fix=False)
    patch(base, RT2 + entry_off, value)
    opens_with(base, exc, code)


def test_bat_entry_outside_the_file(base):
    patch(base, BAT, struct.pack("<Q", 6 | (100000 << 20)), fix=False)
    opens_with(base, errors.OutOfRangeError, "VHDX_BAT_RANGE")


def test_bat_entry_with_a_huge_offset_does_not_overflow(base):
    patch(base, BAT, struct.pack("<Q", 6 | (((1 << 44) - 1) << 20)), fix=False)
    opens_with(base, errors.OutOfRangeError, "VHDX_BAT_RANGE")


@pytest.mark.parametrize("state", [4, 5, 7])
def test_bat_state_invalid_for_a_dynamic_disk(base, state):
    e = struct.unpack_from("<Q", base.read_bytes(), BAT)[0]
    patch(base, BAT, struct.pack("<Q", (e & ~7) | state), fix=False)
    opens_with(base, errors.FormatError, "VHDX_BAT_STATE")


def test_bat_entries_overlapping_each_other_and_the_metadata(base):
    data = base.read_bytes()
    e0, e1 = struct.unpack_from("<QQ", data, BAT)
    patch(base, BAT + 8, struct.pack("<Q", e0), fix=False)             # block 1 at block 0's offset
    codes = vhdkit.check(base).codes()
    assert "VHDX_BAT_OVERLAP" in codes
    patch(base, BAT + 8, struct.pack("<Q", 6 | (2 << 20)), fix=False)  # block 1 inside the metadata region
    rep = vhdkit.check(base)
    assert any(p.code == "VHDX_BAT_OVERLAP" and "metadata" in p.message for p in rep.problems)


@pytest.mark.parametrize("what, off, value, exc", [
    ("block size 3 MiB", META + 64 * KIB, struct.pack("<I", 3 * MIB), errors.FormatError),
    ("block size 512 MiB", META + 64 * KIB, struct.pack("<I", 512 * MIB), errors.FormatError),
    ("block size 0", META + 64 * KIB, struct.pack("<I", 0), errors.FormatError),
    ("virtual size 2^62", META + 68 * KIB, struct.pack("<Q", 1 << 62), errors.FormatError),
    ("virtual size not a sector multiple", META + 68 * KIB, struct.pack("<Q", 8 * MIB + 3), errors.FormatError),
    ("virtual size beyond the BAT", META + 68 * KIB, struct.pack("<Q", 64 << 40), errors.FormatError),
    ("logical sector 1000", META + 76 * KIB, struct.pack("<I", 1000), errors.FormatError),
    ("item past the region", META + 32 + 16, struct.pack("<I", MIB - 4), errors.FormatError),
    ("item inside the table", META + 32 + 16, struct.pack("<I", 100), errors.FormatError),
    ("item length 4 GiB", META + 32 + 20, struct.pack("<I", 0xFFFFFFFF), errors.FormatError),
    ("entry count 65535", META + 10, struct.pack("<H", 65535), errors.FormatError),
    ("no signature", META, b"xetadata", errors.FormatError),
    ("HasParent without a locator", META + 64 * KIB + 4, struct.pack("<I", 2), errors.FormatError),
    ("unknown required item", META + 32 + 32 * 4, uuid.uuid4().bytes_le, errors.UnsupportedError),
])
def test_absurd_metadata(base, what, off, value, exc):
    patch(base, off, value, fix=False)
    opens_with(base, exc)


def _with_log(path, entries, flushed=None):
    """Point the headers at a new log GUID and put these (writes, zeros) entries in the log."""
    g = uuid.uuid4()
    size = path.stat().st_size
    log = bytearray(MIB)
    pos = 0
    for i, (writes, zeros) in enumerate(entries):
        e = vhdxref.log_entry(10 + i, 0, g, writes, zeros, size if flushed is None else flushed, size)
        log[pos:pos + len(e)] = e
        pos += len(e)
    patch(path, MIB, bytes(log), fix=False)
    dwg = uuid.UUID(bytes_le=path.read_bytes()[64 * KIB + 32:64 * KIB + 48])
    patch(path, 64 * KIB, vhdxref.header(1, dwg, g), fix=False)
    patch(path, 128 * KIB, vhdxref.header(2, dwg, g), fix=False)


@pytest.mark.parametrize("what, writes, zeros, exc", [
    ("write over the headers", [(0, b"x" * 4096)], [], errors.OutOfRangeError),
    ("write far past the end", [(1 << 50, b"x" * 4096)], [], errors.OutOfRangeError),
    ("write at the last offset", [(2 ** 64 - 4096, b"x" * 4096)], [], errors.OutOfRangeError),
    ("zero range overflowing", [], [(BAT, 2 ** 64 - 4096)], errors.OutOfRangeError),
    ("zero the BAT", [], [(BAT, 4096)], None),                # legal: the disk reads as zeros
    ("garbage BAT", [(BAT, b"\xff" * 4096)], [], errors.VhdkitError),
])
def test_log_entries_pointing_anywhere(base, what, writes, zeros, exc):
    _with_log(base, [(writes, zeros)])
    if exc is None:
        with vhdkit.open(base) as s:
            assert s.read() == bytes(8 * MIB)
        assert vhdkit.check(base).codes() == ["VHDX_LOG_REPLAY_PENDING"]
    else:
        opens_with(base, exc)


def test_log_guid_set_but_no_valid_entry(base):
    _with_log(base, [([(BAT, b"\0" * 4096)], [])])
    patch(base, MIB + 100, b"\x01", fix=False)             # the only entry's CRC fails
    opens_with(base, errors.FormatError, "VHDX_LOG_EMPTY")


def test_log_says_the_file_was_longer(base):
    _with_log(base, [([(BAT, base.read_bytes()[BAT:BAT + 4096])], [])], flushed=1 << 40)
    opens_with(base, errors.OutOfRangeError, "VHDX_LOG_FLUSHED")


def test_random_corruption_with_checksums_made_right(base, tmp_path):
    rng = random.Random(1234)
    good = base.read_bytes()
    hot = [64 * KIB, 128 * KIB, RT1, RT2, META, META + 64 * KIB, META + 68 * KIB, META + 76 * KIB, BAT, MIB]
    for i in range(80):
        p = tmp_path / f"m{i}.vhdx"
        b = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            at = rng.choice(hot) + rng.randrange(96)
            b[at] = rng.randrange(256)
        p.write_bytes(bytes(b))
        vhdxref.refresh_checksums(p)
        exercise(p)
