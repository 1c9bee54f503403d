"""OVA pack/info/verify/unpack, checked with tar, gzip, qemu-img, ElementTree and
hand-made archives in other tools' layouts."""
from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import tarfile
import xml.etree.ElementTree as ET

import pytest

import vhdkit
import vhdkit.pack.ova as ova
from vhdkit.errors import ArchiveError, ChainError, ConflictError, IntegrityError
from conftest import require_tool
from helpers_packaging import differencing_child, hand_ovf, make_tar, qemu_vhd, run_cli

# Reaches the native core: runs again in scripts/test's sanitizer pass.
pytestmark = pytest.mark.native

NS = {"ovf": "http://schemas.dmtf.org/ovf/envelope/1"}
VBOX_URI = "http://go.microsoft.com/fwlink/?LinkId=137171"
XENCENTER_URI = "http://technet.microsoft.com/en-us/virtualserver/bb676673.aspx"


def _qemu_size(path) -> int:
    out = subprocess.run([require_tool("qemu-img"), "info", "--output=json", str(path)],
                         capture_output=True, check=True).stdout
    return json.loads(out)["virtual-size"]


@pytest.fixture
def disk(tmp_path):
    return qemu_vhd(tmp_path / "disk.vhd", "8M", [(0, 1 << 20, 0x5A), (5 << 20, 65536, 0x11)])


@pytest.fixture
def chain(tmp_path):
    base = qemu_vhd(tmp_path / "base.vhd", "8M", [(0, 65536, 0x42)])
    mid = differencing_child(base, tmp_path / "mid.vhd")
    leaf = differencing_child(mid, tmp_path / "leaf.vhd")
    return [leaf, mid, base]


def _members(path):
    with tarfile.open(path) as t:
        return [(m.name, t.extractfile(m).read()) for m in t.getmembers()]


@pytest.mark.peer
def test_pack_single_gzip_layout_checked_by_peers(tmp_path, disk):
    out = tmp_path / "disk.ova"
    ova.pack([disk], out)
    listing = subprocess.run([require_tool("tar"), "-tvf", str(out)], capture_output=True, text=True, check=True)
    assert [ln.split()[-1] for ln in listing.stdout.splitlines()] == ["disk.ovf", "disk.mf", "disk.vhd"]
    with tarfile.open(out) as t:
        assert all(m.isreg() for m in t.getmembers())
    # the stored disk is plain gzip that gzip itself decompresses to the VHD
    stored = subprocess.run([require_tool("tar"), "-xOf", str(out), "disk.vhd"], capture_output=True, check=True).stdout
    gz = tmp_path / "stored.gz"
    gz.write_bytes(stored)
    subprocess.run([require_tool("gzip"), "-t", str(gz)], check=True)
    assert subprocess.run([require_tool("gzip"), "-dc", str(gz)], capture_output=True).stdout == disk.read_bytes()
    # manifest: SHA256(name)= hex of each stored member, computed here independently
    mem = dict(_members(out))
    lines = mem["disk.mf"].decode().splitlines()
    assert lines == [f"SHA256({n})= {hashlib.sha256(mem[n]).hexdigest()}" for n in ("disk.ovf", "disk.vhd")]
    # descriptor: parsed with the standard library, sizes against the file and qemu-img
    root = ET.fromstring(mem["disk.ovf"])
    assert root.tag == "{%s}Envelope" % NS["ovf"]
    f = root.find("ovf:References/ovf:File", NS)
    a = {k.split("}")[1]: v for k, v in f.attrib.items()}
    assert a["href"] == "disk.vhd" and int(a["size"]) == len(stored) and a["compression"] == "gzip"
    d = root.find("ovf:DiskSection/ovf:Disk", NS)
    da = {k.split("}")[1]: v for k, v in d.attrib.items()}
    assert int(da["capacity"]) == _qemu_size(disk) and da["fileRef"] == a["id"]
    assert da["format"] == ova.VHD_FORMAT_URI
    assert root.find("ovf:VirtualSystem/ovf:VirtualHardwareSection", NS) is not None


def test_pack_unpack_round_trip_identical(tmp_path, disk):
    out = tmp_path / "x.ova"
    ova.pack([disk], out, name="vm1")
    rep = ova.verify(out)
    assert rep.ok, rep.problems
    assert rep.name == "vm1" and rep.manifest_algorithm == "sha256"
    res = ova.unpack(out, tmp_path / "u")
    assert (tmp_path / "u" / "disk.vhd").read_bytes() == disk.read_bytes()
    assert sorted(p.name for p in (tmp_path / "u").iterdir()) == ["disk.vhd", "vm1.mf", "vm1.ovf"]
    assert [m.name for m in res.disks] == ["disk.vhd"]


def test_pack_uncompressed(tmp_path, disk):
    out = tmp_path / "x.ova"
    ova.pack([disk], out, compress="none")
    assert dict(_members(out))["disk.vhd"] == disk.read_bytes()
    assert b"compression" not in dict(_members(out))["disk.ovf"]
    assert ova.verify(out).ok


def test_pack_leaves_no_spool_or_temp(tmp_path, disk):
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    ova.pack([disk], out_dir / "x.ova")
    assert [p.name for p in out_dir.iterdir()] == ["x.ova"]


def test_chain_round_trip(tmp_path, chain):
    out = tmp_path / "snap.ova"
    ova.pack(chain, out, name="snap")
    names = [n for n, _ in _members(out)]
    assert names == ["snap.ovf", "snap.mf", "0.vhd", "1.vhd", "2.vhd"]
    root = ET.fromstring(dict(_members(out))["snap.ovf"])
    disks = root.findall("ovf:DiskSection/ovf:Disk", NS)
    parent = [d.get("{%s}parentRef" % NS["ovf"]) for d in disks]
    ids = [d.get("{%s}diskId" % NS["ovf"]) for d in disks]
    assert parent == [ids[1], ids[2], None]
    ova.unpack(out, tmp_path / "u")
    assert_unpacked_chain(tmp_path / "u", chain)


def assert_unpacked_chain(dest, chain):
    """The base comes back byte for byte.  Each differencing disk differs only
    in its parent's name and locators, which now name the next unpacked disk, so
    the chain is self-contained (issue 17); footers and data are unchanged."""
    got = [dest / f"{i}.vhd" for i in range(len(chain))]
    assert got[-1].read_bytes() == chain[-1].read_bytes()
    for i in range(len(chain) - 1):
        a, b = got[i].read_bytes(), chain[i].read_bytes()
        assert a[:512] == b[:512] and a[-512:] == b[-512:]
        ia, ib = vhdkit.info(got[i]), vhdkit.info(chain[i])
        assert (ia.uuid, ia.parent_uuid, ia.allocated_bytes) == (ib.uuid, ib.parent_uuid, ib.allocated_bytes)
        assert ia.parent_name == f"{i + 1}.vhd"
    with vhdkit.open(got[0]) as x, vhdkit.open(chain[0], parents=chain[1:]) as y:
        assert [L.path for L in x.chain] == [str(p.resolve()) for p in got]
        assert x.read() == y.read()


def test_chain_order_checked(tmp_path, chain):
    with pytest.raises(ChainError):
        ova.pack([chain[1], chain[0], chain[2]], tmp_path / "bad.ova")
    with pytest.raises(ChainError):
        ova.pack(chain[:2], tmp_path / "bad.ova")  # base missing
    assert not (tmp_path / "bad.ova").exists()


def test_tgz_chain_layout_read(tmp_path, chain):
    """XenServer-style snapshot: a plain tar.gz of 0.vhd..N.vhd plus an .ovf, made by GNU tar."""
    stage = tmp_path / "stage"
    stage.mkdir()
    disks = []
    for i, src in enumerate(chain):
        (stage / f"{i}.vhd").write_bytes(src.read_bytes())
        disks.append({"href": f"{i}.vhd", "size": src.stat().st_size, "capacity": _qemu_size(src)})
    (stage / "snap.ovf").write_bytes(hand_ovf("snap", disks, XENCENTER_URI))
    tgz = tmp_path / "snap.tgz"
    subprocess.run([require_tool("tar"), "-czf", str(tgz), "-C", str(stage), "snap.ovf", "0.vhd", "1.vhd", "2.vhd"],
                   check=True)
    rep = ova.info(tgz)
    assert rep.layout == "tgz" and [m.name for m in rep.disks] == ["0.vhd", "1.vhd", "2.vhd"]
    rep = ova.unpack(tgz, tmp_path / "u", require_valid=False)
    assert rep.problems == ["no manifest (.mf): the contents cannot be verified"]
    assert_unpacked_chain(tmp_path / "u", chain)


def _other_tool_ova(tmp_path, disk, *, uri, algo="sha1", manifest_last=True, compress=False, name="vm"):
    raw = disk.read_bytes()
    stored = gzip.compress(raw) if compress else raw
    ovf = hand_ovf(name, [{"href": "disk1.vhd", "size": len(stored), "capacity": _qemu_size(disk),
                           "compression": "gzip" if compress else None}], uri)
    h = lambda b: hashlib.new(algo, b).hexdigest()  # noqa: E731
    mf = f"{algo.upper()}({name}.ovf)= {h(ovf)}\n{algo.upper()}(disk1.vhd)= {h(stored)}\n".encode()
    members = [(f"{name}.ovf", ovf), ("disk1.vhd", stored)]
    members = members + [(f"{name}.mf", mf)] if manifest_last else [members[0], (f"{name}.mf", mf), members[1]]
    return make_tar(tmp_path / "other.ova", members)


@pytest.mark.parametrize("uri", [VBOX_URI, XENCENTER_URI, ova.VHD_FORMAT_URI])
@pytest.mark.parametrize("algo,last,compress", [("sha1", True, False), ("sha256", False, True), ("sha1", False, True)])
def test_other_tools_layouts_read(tmp_path, disk, uri, algo, last, compress):
    path = _other_tool_ova(tmp_path, disk, uri=uri, algo=algo, manifest_last=last, compress=compress)
    rep = ova.verify(path)
    assert rep.ok, rep.problems
    assert rep.manifest_algorithm == algo
    assert rep.disks[0].capacity == _qemu_size(disk)
    ova.unpack(path, tmp_path / "u")
    assert (tmp_path / "u" / "disk1.vhd").read_bytes() == disk.read_bytes()


def test_unknown_disk_format_reported(tmp_path, disk):
    path = _other_tool_ova(tmp_path, disk, uri="http://www.vmware.com/interfaces/specifications/vmdk.html")
    assert any("not VHD" in p for p in ova.verify(path).problems)


# --------------------------------------------------------- verification
def _rewrite(src, dst, fn):
    with tarfile.open(src) as t:
        members = [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
    return make_tar(dst, fn(members))


def test_altered_disk_detected(tmp_path, disk):
    ova.pack([disk], tmp_path / "a.ova", compress="none")

    def alter(ms):
        return [(n, (d[:100] + bytes([d[100] ^ 1]) + d[101:]) if n == "disk.vhd" else d) for n, d in ms]

    bad = _rewrite(tmp_path / "a.ova", tmp_path / "b.ova", alter)
    rep = ova.verify(bad)
    assert not rep.ok and any("disk.vhd" in p and "mismatch" in p for p in rep.problems)
    with pytest.raises(IntegrityError, match="mismatch"):
        ova.unpack(bad, tmp_path / "u")
    assert not (tmp_path / "u").exists()


def test_manifest_checked_both_ways(tmp_path, disk):
    ova.pack([disk], tmp_path / "a.ova", compress="none")
    extra = _rewrite(tmp_path / "a.ova", tmp_path / "extra.ova", lambda ms: ms + [("notes.txt", b"hi")])
    assert any("notes.txt" in p and "not listed" in p for p in ova.verify(extra).problems)

    def add_listed(ms):
        return [(n, d + b"SHA256(ghost.vhd)= " + b"0" * 64 + b"\n" if n.endswith(".mf") else d) for n, d in ms]

    ghost = _rewrite(tmp_path / "a.ova", tmp_path / "ghost.ova", add_listed)
    probs = ova.verify(ghost).problems
    assert any("ghost.vhd" in p and "missing" in p for p in probs)


def test_manifest_name_must_match_descriptor(tmp_path, disk):
    ova.pack([disk], tmp_path / "a.ova", compress="none")
    renamed = _rewrite(tmp_path / "a.ova", tmp_path / "r.ova",
                       lambda ms: [("other.mf" if n.endswith(".mf") else n, d) for n, d in ms])
    assert any("does not match the descriptor" in p for p in ova.verify(renamed).problems)


def test_malformed_manifest_refused(tmp_path, disk):
    ova.pack([disk], tmp_path / "a.ova", compress="none")
    bad = _rewrite(tmp_path / "a.ova", tmp_path / "m.ova",
                   lambda ms: [(n, b"this is not a manifest\n" if n.endswith(".mf") else d) for n, d in ms])
    with pytest.raises(ArchiveError, match="manifest"):
        ova.verify(bad)


# -------------------------------------------------------------- refusals
def _ovf_plus(tmp_path, extra_members, name="x.ova"):
    ovf = hand_ovf("vm", [], ova.VHD_FORMAT_URI)
    return make_tar(tmp_path / name, [("vm.ovf", ovf)] + extra_members)


def _ti(name, type_, linkname=""):
    t = tarfile.TarInfo(name)
    t.type = type_
    t.linkname = linkname
    return t


@pytest.mark.parametrize("member,match", [
    (("/etc/evil", b"x"), "absolute"),
    (("../evil", b"x"), r"'\.\.'"),
    (("a/../../evil", b"x"), r"'\.\.'"),
    (_ti("link", tarfile.SYMTYPE, "/etc/passwd"), "link"),
    (_ti("hard", tarfile.LNKTYPE, "vm.ovf"), "link"),
    (_ti("dev", tarfile.CHRTYPE), "device"),
    (_ti("blk", tarfile.BLKTYPE), "device"),
    (_ti("fifo", tarfile.FIFOTYPE), "device or fifo"),
    (("vm.ovf", b"<again/>"), "duplicate"),
    (("./vm.ovf", b"<again/>"), "duplicate"),
])
def test_unsafe_members_refused_and_nothing_left(tmp_path, member, match):
    path = _ovf_plus(tmp_path, [member])
    with pytest.raises(ArchiveError, match=match):
        ova.unpack(path, tmp_path / "u")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ova"]
    with pytest.raises(ArchiveError, match=match):
        ova.verify(path)


def test_member_larger_than_declared_refused(tmp_path, disk):
    raw = disk.read_bytes()
    ovf = hand_ovf("vm", [{"href": "d.vhd", "size": len(raw) - 512, "capacity": _qemu_size(disk)}],
                   ova.VHD_FORMAT_URI)
    path = make_tar(tmp_path / "x.ova", [("vm.ovf", ovf), ("d.vhd", raw)])
    with pytest.raises(ArchiveError, match="larger than"):
        ova.unpack(path, tmp_path / "u")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.vhd", "x.ova"]


def test_gzip_bomb_disk_refused(tmp_path):
    bomb = gzip.compress(bytes(64 << 20), compresslevel=1)
    ovf = hand_ovf("vm", [{"href": "d.vhd", "size": len(bomb), "capacity": 1 << 20, "compression": "gzip"}],
                   ova.VHD_FORMAT_URI)
    path = make_tar(tmp_path / "x.ova", [("vm.ovf", ovf), ("d.vhd", bomb)])
    with pytest.raises(ArchiveError, match="exceeds the limit"):
        ova.unpack(path, tmp_path / "u")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ova"]
    with pytest.raises(ArchiveError, match="exceeds the limit"):
        ova.unpack(path, tmp_path / "u2", max_output=1 << 20)


def test_corrupt_gzip_disk_refused(tmp_path, disk):
    stored = gzip.compress(disk.read_bytes())[:-10]
    ovf = hand_ovf("vm", [{"href": "d.vhd", "size": len(stored), "capacity": 1, "compression": "gzip"}],
                   ova.VHD_FORMAT_URI)
    path = make_tar(tmp_path / "x.ova", [("vm.ovf", ovf), ("d.vhd", stored)])
    with pytest.raises(ArchiveError, match="truncated"):
        ova.unpack(path, tmp_path / "u")
    assert not (tmp_path / "u").exists()


@pytest.mark.parametrize("xml", [
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><Envelope>&b;</Envelope>',
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><Envelope>&x;</Envelope>',
    b"<Envelope><unclosed></Envelope>",
    b"<NotAnEnvelope/>",
])
def test_hostile_or_bad_descriptor_refused(tmp_path, xml):
    path = make_tar(tmp_path / "x.ova", [("vm.ovf", xml)])
    with pytest.raises(ArchiveError):
        ova.info(path)


def test_truncated_archive_refused(tmp_path, disk):
    ova.pack([disk], tmp_path / "a.ova", compress="none")
    data = (tmp_path / "a.ova").read_bytes()
    (tmp_path / "t.ova").write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(ArchiveError):
        ova.unpack(tmp_path / "t.ova", tmp_path / "u")
    assert not (tmp_path / "u").exists()


def test_not_an_archive(tmp_path):
    (tmp_path / "x.ova").write_bytes(b"hello" * 1000)
    with pytest.raises(ArchiveError):
        ova.info(tmp_path / "x.ova")


def test_unpack_refuses_existing_nonempty_dest(tmp_path, disk):
    ova.pack([disk], tmp_path / "a.ova")
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "keep").write_text("mine")
    with pytest.raises(ConflictError):
        ova.unpack(tmp_path / "a.ova", tmp_path / "u")
    assert [p.name for p in (tmp_path / "u").iterdir()] == ["keep"]


# ------------------------------------------------------------------ CLI
def test_cli_ova_pack_info_verify_unpack(tmp_path, disk):
    out = tmp_path / "cli.ova"
    p = run_cli("ova", "pack", str(disk), "-o", str(out), "--json", check=True)
    assert json.loads(p.stdout)["disks"][0]["capacity"] == _qemu_size(disk)
    info = json.loads(run_cli("ova", "info", str(out), "--json", check=True).stdout)
    assert [m["kind"] for m in info["members"]] == ["descriptor", "manifest", "disk"]
    assert run_cli("ova", "verify", str(out), check=True).stdout.strip().endswith(b"OK")
    run_cli("ova", "unpack", str(out), "-d", str(tmp_path / "u"), check=True)
    assert (tmp_path / "u" / "disk.vhd").read_bytes() == disk.read_bytes()


def test_cli_verify_exit_1_on_problems(tmp_path, disk):
    ova.pack([disk], tmp_path / "a.ova", compress="none")
    bad = _rewrite(tmp_path / "a.ova", tmp_path / "b.ova", lambda ms: ms + [("x.txt", b"x")])
    p = run_cli("ova", "verify", str(bad))
    assert p.returncode == 1 and b"not listed in the manifest" in p.stdout


def test_large_member_header_uses_base256_size():
    hdr = ova._tar_header("big.vhd", 9 << 30, 0)
    assert len(hdr) == 512
    assert tarfile.TarInfo.frombuf(hdr, "utf-8", "strict").size == 9 << 30
    small = ova._tar_header("small.vhd", 1000, 0)
    assert small[257:263] == b"ustar\x00"  # plain POSIX ustar below 8 GiB


def test_descriptor_padding_keeps_it_valid_xml(tmp_path, chain):
    ova.pack(chain, tmp_path / "c.ova")
    ovf = dict(_members(tmp_path / "c.ova"))["c.ovf"]
    assert ovf.endswith(b">" + b" " * (len(ovf) - len(ovf.rstrip()) - 1) + b"\n")
    ET.fromstring(ovf)


def test_member_path_conflicts_refused(tmp_path):
    path = _ovf_plus(tmp_path, [("a/b.vhd", b"x"), ("a", b"y")])
    with pytest.raises(ArchiveError, match="conflicts"):
        ova.unpack(path, tmp_path / "u")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ova"]
