"""Crafted hostile compressed streams, OVA archives, OVF descriptors,
manifests, segment sidecars and object names: each must give the typed error
(ArchiveError / IntegrityError / InvalidInputError / ResourceLimitError),
stop at the output bound, and leave nothing behind -- not in the target and
not next to it.  This adds the adversarial cases on top of the packaging
owner's refusal tests (tests/test_ova.py, test_streams.py, test_segments.py).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import struct
import tarfile
import zlib

import pytest

import vhdkit.pack.ova as ova
import vhdkit.pack.segments as seg
import vhdkit.pack.streams as streams
from helpers_hostile import tree_state
from vhdkit.errors import (ArchiveError, IntegrityError, InvalidInputError, NotFoundError, ResourceLimitError,
                           VhdkitError)
from vhdkit.store import LocalStore

# Reaches the native core: runs again in scripts/test's sanitizer pass.
pytestmark = pytest.mark.native

GZ = gzip.compress(b"hello world\n" * 1000)


# ---- gzip / zstd streams -------------------------------------------------------------

def _decompress(data: bytes, **kw) -> bytes:
    out = io.BytesIO()
    streams.decompress(io.BytesIO(data), out, **kw)
    return out.getvalue()


def _gz_bad_crc() -> bytes:
    b = bytearray(GZ)
    b[-8] ^= 0xFF
    return bytes(b)


def _gz_bad_isize() -> bytes:
    b = bytearray(GZ)
    b[-1] ^= 0x01
    return bytes(b)


def _gz_reserved_flags() -> bytes:
    b = bytearray(GZ)
    b[3] |= 0xE0
    return bytes(b)


def _gz_huge_extra() -> bytes:
    # FEXTRA with XLEN 65535 but only a few bytes follow
    return b"\x1f\x8b\x08\x04" + b"\0" * 6 + struct.pack("<H", 0xFFFF) + b"abc"


def _gz_bad_method() -> bytes:
    b = bytearray(GZ)
    b[2] = 7
    return bytes(b)


def _gz_corrupt_deflate() -> bytes:
    b = bytearray(GZ)
    for i in range(12, 40):
        b[i] ^= 0x5A
    return bytes(b)


GZ_BAD = {
    "empty": b"",
    "magic-only": b"\x1f\x8b",
    "header-only": GZ[:10],
    "truncated-1": GZ[:-1],
    "truncated-8": GZ[:-8],
    "truncated-half": GZ[: len(GZ) // 2],
    "bad-crc": _gz_bad_crc(),
    "bad-isize": _gz_bad_isize(),
    "reserved-flags": _gz_reserved_flags(),
    "huge-fextra": _gz_huge_extra(),
    "bad-method": _gz_bad_method(),
    "corrupt-deflate": _gz_corrupt_deflate(),
    "trailing-garbage": GZ + b"garbage!",
    "not-gzip": b"PK\x03\x04" + b"\0" * 100,
}


@pytest.mark.parametrize("label", sorted(GZ_BAD))
def test_bad_gzip_streams_refused(label):
    with pytest.raises(ArchiveError):
        _decompress(GZ_BAD[label], format="gzip")


def test_concatenated_gzip_members_read_whole():
    """RFC 1952: a gzip file may be several members; gzip(1) outputs all."""
    data = gzip.compress(b"a" * 100) + gzip.compress(b"b" * 50)
    assert _decompress(data) == b"a" * 100 + b"b" * 50


@pytest.mark.parametrize("fmt", ["gzip", "zstd"])
@pytest.mark.parametrize("bound", [0, 1, 1 << 20])
def test_bomb_stops_at_the_bound(fmt, bound):
    """16 MiB of zeros in a few KiB: output stops at max_output."""
    raw = bytes(16 << 20)
    if fmt == "gzip":
        bomb = gzip.compress(raw, compresslevel=9)
    else:
        import zstandard
        bomb = zstandard.ZstdCompressor(level=3).compress(raw)
    assert len(bomb) < 1 << 20
    sink = io.BytesIO()
    with pytest.raises(ArchiveError):
        streams.decompress(io.BytesIO(bomb), sink, max_output=bound)
    assert len(sink.getvalue()) <= bound


def test_nested_gzip_is_not_unwrapped():
    """gzip of gzip decompresses one level only (no recursive bomb)."""
    inner = gzip.compress(bytes(1 << 20))
    outer = gzip.compress(inner)
    assert _decompress(outer) == inner


@pytest.mark.parametrize("label", ["truncated", "bad-magic-frame", "huge-window", "garbage-after"])
def test_bad_zstd_streams_refused(label):
    import zstandard
    good = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(b"x" * 100000)
    data = {
        "truncated": good[: len(good) // 2],
        "bad-magic-frame": good + b"\x28\xb5\x2f\xfd" + b"\xff" * 20,
        # frame header asking for a 2 GiB window (Window_Descriptor exponent 21)
        "huge-window": b"\x28\xb5\x2f\xfd" + b"\x00" + bytes([21 << 3]) + b"\0" * 16,
        "garbage-after": good + b"not zstd at all",
    }[label]
    with pytest.raises(ArchiveError):
        _decompress(data, format="zstd")


# ---- OVA archives ------------------------------------------------------------------

OVF = b"""<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
 <References>%s</References>
 <DiskSection>%s</DiskSection>
 <VirtualSystem ovf:id="vm"/>
</Envelope>"""


def ovf_for(files):
    """files: list of (href, size, capacity, compression)."""
    refs, disks = b"", b""
    for i, (href, size, cap, comp) in enumerate(files):
        c = b' ovf:compression="%s"' % comp.encode() if comp else b""
        s = b' ovf:size="%d"' % size if size is not None else b""
        refs += b'<File ovf:id="f%d" ovf:href="%s"%s%s/>' % (i, href.encode(), s, c)
        disks += (b'<Disk ovf:diskId="d%d" ovf:fileRef="f%d" ovf:capacity="%d" '
                  b'ovf:format="http://technet.microsoft.com/en-us/library/bb676673.aspx"/>' % (i, i, cap))
    return OVF % (refs, disks)


def mf(members):
    return b"".join(b"SHA256(%s)= %s\n" % (n.encode(), hashlib.sha256(d).hexdigest().encode())
                    for n, d in members)


def make_tar(path, members, fmt=tarfile.USTAR_FORMAT):
    """members: (name, bytes) or a TarInfo (data-less) or (TarInfo, bytes)."""
    with tarfile.open(path, "w", format=fmt) as t:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                t.addfile(m)
                continue
            info, data = m
            if not isinstance(info, tarfile.TarInfo):
                info = tarfile.TarInfo(info)
                info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def valid_members(disk=b"D" * 4096):
    ovf = ovf_for([("d.vhd", len(disk), len(disk), None)])
    return [("vm.ovf", ovf), ("vm.mf", mf([("vm.ovf", ovf), ("d.vhd", disk)])), ("d.vhd", disk)]


def _ti(name, type_, linkname="", **kw):
    t = tarfile.TarInfo(name)
    t.type = type_
    t.linkname = linkname
    for k, v in kw.items():
        setattr(t, k, v)
    return t


def _pax(name, data, pax):
    t = tarfile.TarInfo(name)
    t.size = len(data)
    t.pax_headers = pax
    return (t, data)


UNSAFE = {
    "dotdot": [("../evil.vhd", b"x")],
    "dotdot-deep": [("a/b/../../../evil", b"x")],
    "absolute": [("/tmp/evil.vhd", b"x")],
    "absolute-double-slash": [("//etc/evil", b"x")],
    "backslash": [("..\\evil.vhd", b"x")],
    "nul-in-name": None,   # tarfile cannot write NUL: built by hand below
    "symlink": [_ti("s.vhd", tarfile.SYMTYPE, "/etc/passwd")],
    "symlink-dir-escape": [_ti("d", tarfile.SYMTYPE, ".."), ("d/evil", b"x")],
    "hardlink": [_ti("h.vhd", tarfile.LNKTYPE, "vm.ovf")],
    "hardlink-outside": [_ti("h.vhd", tarfile.LNKTYPE, "/etc/shadow")],
    "chardev": [_ti("c", tarfile.CHRTYPE, devmajor=1, devminor=3)],
    "blockdev": [_ti("b", tarfile.BLKTYPE, devmajor=8, devminor=0)],
    "fifo": [_ti("f", tarfile.FIFOTYPE)],
    "duplicate": [("d2.vhd", b"x"), ("d2.vhd", b"y")],
    "duplicate-dot-slash": [("d2.vhd", b"x"), ("./d2.vhd", b"y")],
    "duplicate-double-slash": [("sub/d2.vhd", b"x"), ("sub//d2.vhd", b"y")],
    "pax-path-dotdot": [_pax("ok.vhd", b"x", {"path": "../evil.vhd"})],
    "pax-path-absolute": [_pax("ok.vhd", b"x", {"path": "/tmp/evil.vhd"})],
    "pax-linkpath": [(_ti("ok.vhd", tarfile.SYMTYPE, "x", pax_headers={"linkpath": "/etc/passwd"}))],
    "gnu-longname-dotdot": "gnu",
}


def _nul_tar(path):
    make_tar(path, [("vm.ovf", ovf_for([])), ("evilXname", b"x")])
    data = bytearray(open(path, "rb").read())
    i = data.index(b"evilXname")
    data[i + 4] = 0x2F  # "evil/name" is harmless; put a NUL after a '..' prefix instead
    data[i:i + 9] = b"..\x00/evil."
    # fix the header checksum of that member
    start = i - (i % 512)
    hdr = data[start:start + 512]
    hdr[148:156] = b" " * 8
    data[start + 148:start + 156] = b"%06o\x00 " % sum(hdr)
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("label", sorted(UNSAFE))
def test_unsafe_tar_members_refused_nothing_left(tmp_path, label):
    work = tmp_path / "w"
    work.mkdir()
    path = work / "x.ova"
    if label == "nul-in-name":
        _nul_tar(path)
    elif label == "gnu-longname-dotdot":
        make_tar(path, [("vm.ovf", ovf_for([])), ("../" + "x" * 150 + ".vhd", b"x")], fmt=tarfile.GNU_FORMAT)
    else:
        make_tar(path, [("vm.ovf", ovf_for([]))] + UNSAFE[label], fmt=tarfile.PAX_FORMAT)
    before = tree_state(tmp_path)
    with pytest.raises(ArchiveError):
        ova.unpack(path, work / "out")
    assert tree_state(tmp_path) == before
    assert not (tmp_path / "evil.vhd").exists() and not (tmp_path / "evil").exists()


def test_member_size_lying_larger_than_data(tmp_path):
    """A header claiming more bytes than the archive holds: truncated."""
    path = make_tar(tmp_path / "x.ova", valid_members())
    data = open(path, "rb").read()
    i = data.index(b"d.vhd\0")
    start = i - (i % 512)
    hdr = bytearray(data[start:start + 512])
    hdr[124:136] = b"%011o\0" % (1 << 30)
    hdr[148:156] = b" " * 8
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    bad = data[:start] + bytes(hdr) + data[start + 512:start + 512 + 4096]
    (tmp_path / "y.ova").write_bytes(bad)
    before = tree_state(tmp_path)
    with pytest.raises(ArchiveError):
        ova.unpack(tmp_path / "y.ova", tmp_path / "out")
    with pytest.raises(ArchiveError):
        ova.verify(tmp_path / "y.ova")
    assert tree_state(tmp_path) == before


def test_member_larger_than_descriptor_says(tmp_path):
    disk = b"D" * 8192
    ovf = ovf_for([("d.vhd", 4096, 8192, None)])
    path = make_tar(tmp_path / "x.ova", [("vm.ovf", ovf), ("vm.mf", mf([("vm.ovf", ovf), ("d.vhd", disk)])),
                                         ("d.vhd", disk)])
    with pytest.raises(ArchiveError, match="larger than"):
        ova.unpack(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gzip_disk_over_declared_capacity(tmp_path):
    """A 1 MiB disk whose gzip member inflates to 32 MiB (the bound for a
    1 MiB disk is about 17 MiB): stopped at the bound, nothing left."""
    bomb = gzip.compress(bytes(32 << 20), compresslevel=6)
    ovf = ovf_for([("d.vhd", len(bomb), 1 << 20, "gzip")])
    path = make_tar(tmp_path / "x.ova", [("vm.ovf", ovf), ("vm.mf", mf([("vm.ovf", ovf), ("d.vhd", bomb)])),
                                         ("d.vhd", bomb)])
    before = tree_state(tmp_path)
    with pytest.raises(ArchiveError):
        ova.unpack(path, tmp_path / "out")
    assert tree_state(tmp_path) == before


def test_tgz_outer_bomb_bounded(tmp_path):
    """The tgz layout: the whole tar is gzip; max_output bounds it too."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as t:
        ovf = ovf_for([])
        ti = tarfile.TarInfo("vm.ovf")
        ti.size = len(ovf)
        t.addfile(ti, io.BytesIO(ovf))
        ti = tarfile.TarInfo("d.vhd")
        ti.size = 8 << 20
        t.addfile(ti, io.BytesIO(bytes(8 << 20)))
    (tmp_path / "x.tgz").write_bytes(gzip.compress(inner.getvalue()))
    with pytest.raises(ArchiveError):
        ova.unpack(tmp_path / "x.tgz", tmp_path / "out", max_output=1 << 20)
    assert not (tmp_path / "out").exists()


BAD_OVF = {
    "billion-laughs": b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
                      + b"".join(b'<!ENTITY %s "%s">' % (bytes([98 + i]), (b"&%s;" % bytes([97 + i])) * 10)
                                 for i in range(9))
                      + b']><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1">&j;</Envelope>',
    "external-entity": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                       b'<Envelope>&x;</Envelope>',
    "external-dtd": b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://127.0.0.1:1/evil.dtd"><Envelope/>',
    "parameter-entity": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY % p SYSTEM "file:///etc/passwd">%p;]>'
                        b'<Envelope/>',
    "quadratic-blowup": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "' + b"x" * 100000 + b'">]><Envelope>'
                        + b"&a;" * 1000 + b"</Envelope>",
    "xinclude": b'<Envelope xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="file:///etc/passwd" '
                b'parse="text"/></Envelope>',
    "not-xml": b"\xff\xfe\x00garbage",
    "wrong-root": b"<Foo/>",
    "unclosed": b"<Envelope><References>",
    "negative-size": OVF % (b'<File ovf:id="f0" ovf:href="d.vhd" ovf:size="-1"/>', b""),
    "size-not-number": OVF % (b'<File ovf:id="f0" ovf:href="d.vhd" ovf:size="1e9"/>', b""),
    "file-without-href": OVF % (b'<File ovf:id="f0"/>', b""),
    "repeated-file-id": OVF % (b'<File ovf:id="f0" ovf:href="a"/><File ovf:id="f0" ovf:href="b"/>', b""),
    "deep-nesting": b"<Envelope>" + b"<a>" * 100000 + b"</a>" * 100000 + b"</Envelope>",
}


@pytest.mark.parametrize("label", sorted(BAD_OVF))
def test_hostile_descriptor_refused_or_reported(tmp_path, label):
    """Refused (ArchiveError) -- or, for an XInclude, not followed: the
    descriptor is data, /etc/passwd never gets read into it.  Deep nesting is
    parsed by expat without recursion: accepted (no disks) or refused, but
    never a RecursionError."""
    path = make_tar(tmp_path / "x.ova", [("vm.ovf", BAD_OVF[label])])
    if label == "deep-nesting":
        try:
            assert ova.info(path).disks == []
        except ArchiveError:
            pass
        return
    if label == "xinclude":
        rep = ova.info(path)
        assert "root:" not in json.dumps(rep.to_dict())
        return
    with pytest.raises(ArchiveError):
        ova.info(path)
    with pytest.raises(ArchiveError):
        ova.unpack(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_oversized_descriptor_refused(tmp_path):
    big = b"<Envelope>" + b" " * (ova.MAX_DESCRIPTOR + 1) + b"</Envelope>"
    path = make_tar(tmp_path / "x.ova", [("vm.ovf", big)])
    with pytest.raises(ArchiveError):
        ova.info(path)


MANIFESTS = {
    "missing-entry": lambda ovf, disk: mf([("vm.ovf", ovf)]),
    "extra-entry": lambda ovf, disk: mf([("vm.ovf", ovf), ("d.vhd", disk), ("ghost.vhd", b"")]),
    "mismatch": lambda ovf, disk: mf([("vm.ovf", ovf), ("d.vhd", disk + b"!")]),
    "mismatch-descriptor": lambda ovf, disk: mf([("vm.ovf", ovf + b" "), ("d.vhd", disk)]),
    "traversal-name": lambda ovf, disk: mf([("vm.ovf", ovf), ("d.vhd", disk), ("../etc/passwd", b"")]),
}


@pytest.mark.parametrize("label", sorted(MANIFESTS))
def test_manifest_missing_extra_mismatched(tmp_path, label):
    disk = b"D" * 4096
    ovf = ovf_for([("d.vhd", len(disk), len(disk), None)])
    path = make_tar(tmp_path / "x.ova", [("vm.ovf", ovf), ("vm.mf", MANIFESTS[label](ovf, disk)), ("d.vhd", disk)])
    rep = ova.verify(path)
    assert not rep.ok and rep.problems
    with pytest.raises(IntegrityError):
        ova.unpack(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", [
    b"SHA256(d.vhd)= zz\n", b"MD5(d.vhd)= " + b"0" * 32 + b"\n", b"SHA256(d.vhd)=" + b"0" * 63 + b"\n",
    b"\xff\xfe\n", b"SHA256(d.vhd)= " + b"0" * 64 + b"\nSHA256(d.vhd)= " + b"1" * 64 + b"\n",
    b"just text\n",
])
def test_malformed_manifest_lines_refused(text):
    with pytest.raises(ArchiveError):
        ova.parse_manifest(text)


def test_no_manifest_reported(tmp_path):
    disk = b"D" * 4096
    ovf = ovf_for([("d.vhd", len(disk), len(disk), None)])
    path = make_tar(tmp_path / "x.ova", [("vm.ovf", ovf), ("d.vhd", disk)])
    assert not ova.verify(path).ok


def test_valid_control_case_unpacks(tmp_path):
    """The control: the same builder without damage is accepted (so the
    refusals above are about the damage)."""
    path = make_tar(tmp_path / "x.ova", valid_members())
    rep = ova.unpack(path, tmp_path / "out")
    assert rep.ok and (tmp_path / "out" / "d.vhd").read_bytes() == b"D" * 4096


# ---- segments and object names -------------------------------------------------------

@pytest.fixture
def st(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "objects", "acct")


def _good(st):
    seg.split(st, "c", "img.vhd", io.BytesIO(os.urandom(3000)), segment_size=1000)
    return json.loads(st.get_bytes("c", "img.vhd.segments.json"))


def _put_sidecar(st, d):
    st.put_bytes("c", "img.vhd.segments.json", json.dumps(d).encode())


SIDECAR_EDITS = {
    "other-container": lambda d: d.update(container="other"),
    "segment-in-other-container": lambda d: d["segments"][0].update(name="../other/img.vhd-00001"),
    "segment-absolute": lambda d: d["segments"][0].update(name="/etc/passwd"),
    "segment-foreign-object": lambda d: d["segments"][0].update(name="secret.txt"),
    "loop": lambda d: d["segments"].append(dict(d["segments"][0])),
    "repeat-first": lambda d: d["segments"].__setitem__(1, dict(d["segments"][0])),
    "reorder": lambda d: d["segments"].reverse(),
    "negative-size": lambda d: d["segments"][0].update(size=-1),
    "zero-size": lambda d: d["segments"][0].update(size=0),
    "huge-size": lambda d: d["segments"][0].update(size=1 << 62),
    "float-size": lambda d: d["segments"][0].update(size=1000.0),
    "bool-size": lambda d: d["segments"][0].update(size=True),
    "string-size": lambda d: d["segments"][0].update(size="1000"),
    "total-negative": lambda d: d.update(size=-3000),
    "total-huge": lambda d: d.update(size=1 << 60),
    "segment-size-huge": lambda d: d.update(segment_size=1 << 40),
    "digits-huge": lambda d: d.update(digits=1000),
    "digits-zero": lambda d: d.update(digits=0),
    "bad-md5": lambda d: d["segments"][0].update(md5="x" * 32),
    "bad-sha": lambda d: d.update(sha256="../" * 20),
    "segments-not-list": lambda d: d.update(segments={"a": 1}),
    "segment-not-dict": lambda d: d["segments"].__setitem__(0, "img.vhd-00001"),
    "format": lambda d: d.update(format="vhdkit-segments/999"),
}


@pytest.mark.parametrize("label", sorted(SIDECAR_EDITS))
def test_hostile_sidecar_refused(st, tmp_path, label):
    d = _good(st)
    st.put_bytes("c", "secret.txt", b"s" * 1000)
    SIDECAR_EDITS[label](d)
    _put_sidecar(st, d)
    before = tree_state(tmp_path)
    with pytest.raises(IntegrityError):
        seg.join(st, "c", "img.vhd", tmp_path / "out.bin")
    after = tree_state(tmp_path)
    assert after == before and not (tmp_path / "out.bin").exists()


@pytest.mark.parametrize("raw", [b"", b"[]", b"null", b"{", b"\xff", b"[" * 100000 + b"]" * 100000,
                                 b'{"format": "vhdkit-segments/1"}'],
                         ids=["empty", "list", "null", "open-brace", "not-utf8", "deep-nesting", "fields-missing"])
def test_sidecar_not_json_or_not_object(st, tmp_path, raw):
    _good(st)
    st.put_bytes("c", "img.vhd.segments.json", raw)
    with pytest.raises((IntegrityError, ResourceLimitError)):
        seg.join(st, "c", "img.vhd", tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


def test_extra_segment_under_prefix_refused(st, tmp_path):
    _good(st)
    st.put_bytes("c", "img.vhd-00004", b"x")
    with pytest.raises(IntegrityError):
        seg.join(st, "c", "img.vhd", tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


BAD_CONTAINERS = ["", ".", "..", "a/b", "../x", "a\0b", "x" * 300, "\udcff"]
BAD_OBJECTS = ["", "/abs", "../x", "a/../../x", "a/./b", "a\0b", "x" * 2000, "..", ".", "a/..", "\udcff"]


@pytest.mark.parametrize("name", BAD_CONTAINERS, ids=range(len(BAD_CONTAINERS)))
def test_hostile_container_names(st, tmp_path, name):
    before = tree_state(tmp_path)
    with pytest.raises(InvalidInputError):
        st.put_bytes(name, "obj", b"x")
    with pytest.raises((InvalidInputError, NotFoundError)):
        st.get_bytes(name, "obj")
    assert tree_state(tmp_path) == before


@pytest.mark.parametrize("name", BAD_OBJECTS, ids=range(len(BAD_OBJECTS)))
def test_hostile_object_names(st, tmp_path, name):
    st.create_container("c")
    before = tree_state(tmp_path)
    with pytest.raises(InvalidInputError):
        st.put_bytes("c", name, b"x")
    with pytest.raises((InvalidInputError, NotFoundError)):
        st.get_bytes("c", name)
    with pytest.raises((InvalidInputError, NotFoundError)):
        seg.join(st, "c", name, tmp_path / "o.bin")
    assert tree_state(tmp_path) == before


def test_object_names_that_look_like_traversal_stay_inside(st, tmp_path):
    """Names that are legal but look dangerous ('..x', 'a..', '%2e%2e',
    unicode dots) are stored inside the container's directory."""
    st.create_container("c")
    for n in ["..x", "a..", "%2e%2e/%2e%2e/x", "\u2024\u2024/x", "a/b/c", " ..", ".. "]:
        st.put_bytes("c", n, b"v")
        assert st.get_bytes("c", n) == b"v"
    for dirpath, _, files in os.walk(tmp_path / "objects"):
        assert os.path.realpath(dirpath).startswith(os.path.realpath(tmp_path / "objects"))
