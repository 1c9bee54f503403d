"""One block-size range for every operation.

The format's range (csrc/vhdkit.h: VK_BLOCK_SIZE_MIN..VK_BLOCK_SIZE_MAX, a
power of two from 512 bytes to 1 GiB) is what open, check, modify, repair,
the chain operations and conversion from an image accept; the creation policy
(VK_NEW_BLOCK_MIN..MAX, 512 KiB to 256 MiB) only bounds the images create and
convert write.  A VHD with 512 MiB blocks -- in the first range, above the
second -- used to open and check clean, then fail `modify`, `repair` and
`snapshot` as a format error.  Images come from the independent writer
(fixtures/vhdref.py); qemu-img, which reads any power-of-two block from 512
bytes, is the outside judge of the content.
"""
from __future__ import annotations

import json

import pytest

import vhdkit
from vhdkit.native import lib
from vhdref import RefVhd, write_vhd
from helpers_vhd import qemu_raw
from helpers_write import vhdkit_cli

pytestmark = pytest.mark.native

MiB = 1 << 20
BIG = 512 * MiB
SIZE = 8 * MiB


def _sectors():
    return {0: b"A" * 512, 5000: b"B" * 512, SIZE // 512 - 1: b"C" * 512}


@pytest.fixture
def big(tmp_path):
    """An 8 MiB dynamic VHD in one 512 MiB block (its data a file hole);
    creator qem2, so qemu too takes the current size as the disk size."""
    p = tmp_path / "big.vhd"
    write_vhd(p, SIZE, _sectors(), block_size=BIG, creator=b"qem2")
    return p


def _json(*args):
    r = vhdkit_cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_the_ranges_come_from_the_core():
    assert (lib.VK_BLOCK_SIZE_MIN, lib.VK_BLOCK_SIZE_MAX) == (512, 1 << 30)
    assert (lib.VK_NEW_BLOCK_MIN, lib.VK_NEW_BLOCK_MAX, lib.VK_NEW_BLOCK_DEFAULT) == (512 << 10, 256 * MiB, 2 * MiB)
    assert lib.VK_BLOCK_SIZE_MIN <= lib.VK_NEW_BLOCK_MIN <= BIG <= lib.VK_BLOCK_SIZE_MAX
    assert BIG > lib.VK_NEW_BLOCK_MAX


def test_512_mib_blocks_open_check_and_convert(big, tmp_path):
    want = RefVhd(big).read()
    assert _json("info", big)["block_size"] == BIG
    assert vhdkit_cli("check", big).returncode == 0
    assert qemu_raw(big, tmp_path / "q.raw").read_bytes() == want
    out = tmp_path / "out.raw"
    assert vhdkit_cli("convert", big, out, "-O", "raw").returncode == 0
    assert out.read_bytes() == want
    dyn = tmp_path / "out.vhd"
    r = vhdkit_cli("convert", big, dyn)
    assert r.returncode == 0, r.stderr
    assert _json("info", dyn)["block_size"] == lib.VK_NEW_BLOCK_DEFAULT
    assert RefVhd(dyn).read() == want


def test_512_mib_blocks_modify_and_repair(big, tmp_path):
    want = RefVhd(big).read()
    r = vhdkit_cli("modify", big, "--size", "16M", "--new-uuid")
    assert r.returncode == 0, r.stderr
    assert vhdkit.check(big).ok
    assert RefVhd(big).read() == want + bytes(8 * MiB)
    with open(big, "r+b") as f:      # the end footer damaged: repair restores it from the copy
        f.seek(-512 + 64, 2)
        f.write(b"\xde\xad\xbe\xef")
    assert not vhdkit.check(big).ok
    r = vhdkit_cli("repair", big)
    assert r.returncode == 0, r.stderr
    assert vhdkit.check(big).ok
    assert qemu_raw(big, tmp_path / "q.raw").read_bytes() == want + bytes(8 * MiB)


def test_512_mib_blocks_snapshot_write_and_coalesce(big, tmp_path):
    want = bytearray(RefVhd(big).read())
    child = tmp_path / "child.vhd"
    r = vhdkit_cli("snapshot", big, child)
    assert r.returncode == 0, r.stderr
    assert _json("info", child)["block_size"] == BIG          # the parent's, as documented
    with vhdkit.open(child, "r+") as f:
        f.pwrite(b"Z" * 4096, 3 * MiB)
    want[3 * MiB:3 * MiB + 4096] = b"Z" * 4096
    assert vhdkit_cli("check", child).returncode == 0
    assert RefVhd(child).read() == bytes(want)
    flat = tmp_path / "flat.raw"
    assert vhdkit_cli("coalesce", child, "-o", flat, "-O", "raw").returncode == 0
    assert flat.read_bytes() == bytes(want)
    r = vhdkit_cli("coalesce", child, "--into-parent")
    assert r.returncode == 0, r.stderr
    assert vhdkit.check(big).ok
    assert qemu_raw(big, tmp_path / "q.raw").read_bytes() == bytes(want)


def test_creation_policy_is_separate_from_the_format(big, tmp_path):
    """create/convert keep their stricter policy, and say its bounds."""
    r = vhdkit_cli("create", tmp_path / "n.vhd", "8M", "--block-size", "512M")
    assert r.returncode != 0
    err = r.stderr.decode()
    assert "512 KiB and 256 MiB" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("bs", [1 << 31, 3 << 20, 256])
def test_outside_the_format_every_operation_refuses(tmp_path, bs):
    """A header block size outside the range: open, modify and snapshot
    refuse it alike, check names it, and repair (which restores footers, here
    both intact) says in one line that it cannot mend that, leaving the file
    as it is (it used to answer "none", as if nothing were wrong)."""
    from helpers_hostile import patch_header

    p = tmp_path / "bad.vhd"
    write_vhd(p, SIZE, _sectors(), block_size=2 * MiB)
    patch_header(p, block_size=bs)
    with pytest.raises(vhdkit.errors.FormatError):
        vhdkit.info(p)
    assert "HEADER_BLOCK_SIZE" in [x.code for x in vhdkit.check(p).problems]
    before = p.read_bytes()
    for args in (("modify", p, "--new-uuid"), ("snapshot", p, tmp_path / "c.vhd")):
        r = vhdkit_cli(*args)
        assert r.returncode != 0 and "block size" in r.stderr.decode(), (args, r.stderr)
    for extra in ((), ("--dry-run",), ("--json",)):
        r = vhdkit_cli("repair", p, *extra)
        err = r.stderr.decode()
        assert r.returncode == 1 and p.read_bytes() == before, (extra, err)
        assert "cannot repair" in err and "block size" in err and "vhdkit check" in err, err
        assert len(err.strip().splitlines()) == 1, err
