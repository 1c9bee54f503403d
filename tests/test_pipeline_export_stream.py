"""The export's one-pass path for a stored single dynamic VHD (vhdkit/pack/exportstream.py).

The streamed export must give what the general path gives (unpack, check,
rewrite both footers): the same file except the footer's UUID, timestamp and
checksum, checked by qemu-img (check, compare) and our own check (qemu-img has no check for VHD: it must
open the file; vhdiinfo reads it too).  A damaged
stored OVA (flipped byte in the compressed disk, truncated member, wrong
manifest digest, a VHD that fails check) fails the task with a clear message
and leaves no segment, manifest object or sidecar behind.  A fixed disk takes
the general path (coalesced into a dynamic VHD, as before)."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import require_tool
from test_pipeline import A, MiB, assert_no_debris, env, make_dynamic, put, run_export, run_import  # noqa: F401
from vhdkit.pack import ova, segments
from vhdkit import vhd

import vhdref

# Reaches the native core: runs again in scripts/test's sanitizer pass.
pytestmark = pytest.mark.native

SECTOR = 512


def _qemu(*args):
    return subprocess.run([require_tool("qemu-img"), *args], capture_output=True, text=True)


def _imported(reg, cfg, path):
    put(cfg, "acct-a", path.name, path)
    t = run_import(reg, cfg, path.name)
    assert t.status == "success", t.message
    return t.result["image_id"]


def _stored_disk(reg, image_id, tmp_path) -> Path:
    """The stored disk as the general path would unpack it."""
    d = tmp_path / "unpacked"
    rep = ova.unpack(reg.open_data(A, image_id).path, d)
    return Path(rep.disks[0].extracted_to)


def _masked(b: bytes) -> bytes:
    """A VHD file with the footer fields an export renews (timestamp 24..28,
    checksum 64..68, UUID 68..84) zeroed in both copies."""
    b = bytearray(b)
    for base in (0, len(b) - SECTOR):
        b[base + 24:base + 28] = bytes(4)
        b[base + 64:base + 84] = bytes(20)
    return bytes(b)


def _exports(cfg):
    return [o.name for o in cfg.store("acct-a").list("exports")]


def test_streamed_export_equals_the_general_path_and_passes_the_peers(env, tmp_path):
    reg, cfg = env
    src = tmp_path / "d.vhd"
    make_dynamic(src, size=24 * MiB)
    image_id = _imported(reg, cfg, src)
    t = run_export(reg, cfg, image_id)
    assert t.status == "success", t.message
    assert set(t.result["timings"]) == {"split"}  # one pass: no unpack, no coalesce stage
    joined = tmp_path / "joined.vhd"
    man = segments.join(cfg.store("acct-a"), "exports", f"{image_id}.vhd", joined)
    assert man.sha256 == hashlib.sha256(joined.read_bytes()).hexdigest() == t.result["sha256"]

    stored = _stored_disk(reg, image_id, tmp_path)
    a, b = joined.read_bytes(), stored.read_bytes()
    assert len(a) == len(b) and a != b
    assert _masked(a) == _masked(b)  # only the renewed footer fields differ
    assert a[:SECTOR] == a[-SECTOR:]  # footer copy = end footer
    assert vhd.info(joined).uuid != vhd.info(src).uuid
    assert vhd.info(joined).disk_type == "dynamic" and vhd.check(joined).ok
    # qemu-img has no check for vpc: it must open it with the same size, and vhdiinfo read it
    r = _qemu("info", "--output=json", "-f", "vpc", str(joined))
    size = lambda p: json.loads(_qemu("info", "--output=json", "-f", "vpc", str(p)).stdout)["virtual-size"]  # noqa: E731
    assert r.returncode == 0 and json.loads(r.stdout)["virtual-size"] == size(src), r.stderr
    out = subprocess.run([require_tool("vhdiinfo"), str(joined)], capture_output=True, text=True, check=True).stdout
    assert "Dynamic" in out and "Parent" not in out
    r = _qemu("compare", "-f", "vpc", "-F", "vpc", str(src), str(joined))
    assert r.returncode == 0 and "identical" in r.stdout.lower(), r.stdout + r.stderr
    assert_no_debris(reg, cfg, images_expected=1)


@pytest.mark.parametrize("exact", [True, False])
def test_segment_boundaries_exact_multiple_or_not(env, tmp_path, exact):
    reg, cfg = env
    src = tmp_path / "d.vhd"
    make_dynamic(src, size=8 * MiB, every=1)
    image_id = _imported(reg, cfg, src)
    size = src.stat().st_size
    assert size % SECTOR == 0
    # exact: the last segment ends with the end footer (held back to the very end);
    # not: a last, short segment smaller than the held-back footer
    cfg.segment_size = size // 4 if exact else (size - 100) // 4
    assert (size % cfg.segment_size == 0) == exact
    t = run_export(reg, cfg, image_id)
    assert t.status == "success", t.message
    joined = tmp_path / "joined.vhd"
    man = segments.join(cfg.store("acct-a"), "exports", f"{image_id}.vhd", joined)
    assert len(man.segments) == (4 if exact else 5)
    assert [s.size for s in man.segments][-1] == (cfg.segment_size if exact else 100)
    assert _masked(joined.read_bytes()) == _masked(src.read_bytes())
    assert vhd.check(joined).ok
    r = _qemu("compare", "-f", "vpc", "-F", "vpc", str(src), str(joined))
    assert r.returncode == 0, r.stdout + r.stderr


def test_fixed_disk_takes_the_general_path(env, tmp_path):
    reg, cfg = env
    src = tmp_path / "f.vhd"
    data = bytearray(6 * MiB)
    data[MiB:MiB + 4096] = hashlib.shake_256(b"fixed").digest(4096)
    vhdref.write_vhd(src, len(data), vhdref.sectors_of(bytes(data)), kind="fixed")
    image_id = _imported(reg, cfg, src)
    t = run_export(reg, cfg, image_id)
    assert t.status == "success", t.message
    assert "coalesce" in t.result["timings"]
    joined = tmp_path / "joined.vhd"
    segments.join(cfg.store("acct-a"), "exports", f"{image_id}.vhd", joined)
    assert vhd.info(joined).disk_type == "dynamic" and vhd.check(joined).ok
    r = _qemu("compare", "-f", "vpc", "-F", "vpc", str(src), str(joined))
    assert r.returncode == 0, r.stdout + r.stderr
    assert_no_debris(reg, cfg, images_expected=1)


# ------------------------------------------------------------ damaged OVAs
def _members(path):
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def _write_ova(path, members):
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))


def _manifest(members):
    mf = "".join(f"SHA256({n})= {hashlib.sha256(d).hexdigest()}\n" for n, d in members)
    return mf.encode()


def _store_ova(reg, path, virtual_size):
    img = reg.create_image(A, name="crafted", disk_format="vhd", container_format="ova")
    reg.upload_file(A, img.id, str(path), virtual_size=virtual_size)
    return img.id


def _damaged(tmp_path, how):
    """A stored-OVA look-alike of a dynamic VHD, damaged ``how``."""
    src = tmp_path / "d.vhd"
    make_dynamic(src, size=8 * MiB, every=1)
    good = tmp_path / "good.ova"
    ova.pack([src], good, compress="gzip", name="d")
    (ovf_name, ovf), (mf_name, _), (disk_name, disk) = _members(good)
    if how == "flip":
        disk = bytearray(disk)
        disk[len(disk) // 2] ^= 0x40
        disk = bytes(disk)
    elif how == "truncate":
        disk = disk[: len(disk) - 1000]
    elif how == "bat-past-eof":
        # the BAT (no checksum of its own) points a block past the end of the file
        raw = bytearray(src.read_bytes())
        bat = int.from_bytes(raw[SECTOR + 16:SECTOR + 24], "big")
        raw[bat + 4:bat + 8] = (len(raw) // SECTOR + 100).to_bytes(4, "big")
        disk = gzip.compress(bytes(raw))
    if how == "wrong-digest":
        mf = _manifest([(ovf_name, ovf)]) + f"SHA256({disk_name})= {'ab' * 32}\n".encode()
    else:  # the manifest matches the damaged bytes: the damage is found by decoding
        mf = _manifest([(ovf_name, ovf), (disk_name, disk)])
    bad = tmp_path / f"{how}.ova"
    _write_ova(bad, [(ovf_name, ovf), (mf_name, mf), (disk_name, disk)])
    return bad


@pytest.mark.parametrize("how, words", [("flip", "corrupt gzip data"),
                                        ("truncate", "truncated gzip stream"),
                                        ("wrong-digest", "does not match the OVA manifest's sha256")])
def test_damaged_stored_ova_fails_and_leaves_nothing(env, tmp_path, how, words):
    reg, cfg = env
    cfg.segment_size = 1 * MiB  # segments are written before the damage is found
    image_id = _store_ova(reg, _damaged(tmp_path, how), 8 * MiB)
    t = run_export(reg, cfg, image_id)
    assert t.status == "failure"
    assert "the stored image is damaged" in t.message and words in t.message, t.message
    assert _exports(cfg) == []  # no segment, no manifest object, no sidecar
    assert_no_debris(reg, cfg, images_expected=1)


def test_stored_vhd_that_fails_check_fails_the_export_and_leaves_nothing(env, tmp_path):
    reg, cfg = env
    cfg.segment_size = 1 * MiB
    image_id = _store_ova(reg, _damaged(tmp_path, "bat-past-eof"), 8 * MiB)
    t = run_export(reg, cfg, image_id)
    assert t.status == "failure" and t.message.startswith("[397]"), t.message
    assert "BAT_PAST_EOF" in t.message, t.message
    assert _exports(cfg) == []
    assert_no_debris(reg, cfg, images_expected=1)


# ------------------------------------------------ the inflater, on its own
def _inflate(blob: bytes, bound: int = 1 << 40) -> bytes:
    from concurrent.futures import ThreadPoolExecutor

    from vhdkit.pack.exportstream import _HashedSlice, _Inflater

    with ThreadPoolExecutor(1) as pool:
        inf = _Inflater(_HashedSlice(io.BytesIO(blob), len(blob), "sha256", pool), True, bound, "m")
        try:
            return b"".join(iter(inf.get, b""))
        finally:
            inf.close()


def test_inflater_reads_any_gzip_and_refuses_damage():
    from vhdkit.errors import ArchiveError

    data = hashlib.shake_256(b"x").digest(3 * MiB) + bytes(20 * MiB) + b"end"
    z = gzip.compress(data)
    assert _inflate(z) == data
    assert _inflate(gzip.compress(data[:5]) + gzip.compress(data[5:])) == data  # two members
    for bad, words in [(z[:-3], "truncated"), (z + b"xx", "garbage after"), (b"", "empty"),
                       (b"PK\x03\x04" + z, "bad magic"), (z[:-8] + bytes(8), "corrupt gzip data")]:
        with pytest.raises(ArchiveError, match=words):
            _inflate(bad)
    with pytest.raises(ArchiveError, match="exceeds the limit"):
        _inflate(z, bound=8 * MiB)  # a bomb is stopped at the bound, in bounded memory
