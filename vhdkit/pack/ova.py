"""OVA packages of VHD disks: one disk, or a differencing chain.

Writing (:func:`pack`) produces a tar archive whose members are, in order:

1. ``NAME.ovf`` — an OVF 1.x envelope (``References/File`` with href, id,
   stored size and ``ovf:compression="gzip"`` when compressed;
   ``DiskSection/Disk`` with the capacity in bytes, ``fileRef``, the VHD format
   URI and ``parentRef`` for chains; a minimal ``VirtualSystem`` with a
   ``VirtualHardwareSection``), written with ElementTree;
2. ``NAME.mf`` — ``SHA256(member)= hex`` for the descriptor and every disk file;
3. the disk files.  A single disk keeps its file name; a chain is stored as
   ``0.vhd`` (the leaf) … ``N.vhd`` (the base), as XenServer-based clouds do.

Every header is ustar, except that a member of 8 GiB or more gets the GNU
variant's base-256 size field (ustar's octal field stops at 8 GiB), which GNU
tar, bsdtar and VirtualBox read.

**One pass, no spool.**  The manifest (second member) needs the hash of each
stored disk and a compressed disk's tar header needs its compressed size, both
known only at the end.  Rather than spooling compressed disks to a temporary
file, :func:`pack` writes the archive to a temporary file next to the output
with room reserved for the descriptor (sized for 20-digit sizes) and the
manifest (fixed length), compresses each disk once straight into the archive
while hashing it, then seeks back to write the descriptor (padded with
trailing blanks, which XML allows after the root element), the manifest and
the disk headers, fsyncs and renames the file into place.  The only temporary
space used is the output file itself, in the output's directory.

Reading (:func:`info`, :func:`verify`, :func:`unpack`) streams any OVA: the
manifest may be anywhere, use SHA1 or SHA256, descriptors may use the VHD
format URIs of VirtualBox, XenCenter or the technet spec, and a plain
``tar.gz`` of the chain's ``.vhd`` files plus an ``.ovf`` ("tgz" layout) is
read as well.  Unpacking refuses absolute names, ``..``, links, devices,
duplicate names, members larger than the descriptor declares and decompressed
output beyond a bound, and leaves nothing behind on failure.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Dict, List, Optional, Sequence, Union

from . import streams
from ..fileutil import atomic_file
from ..errors import ArchiveError, ChainError, ConflictError, IntegrityError, InvalidInputError, NotFoundError, OutputLimitError
from ..interrupts import deferred

__all__ = [
    "OVF_NS",
    "VHD_FORMAT_URI",
    "VHD_FORMAT_URIS",
    "is_vhd_format_uri",
    "OvfFile",
    "OvfDisk",
    "Descriptor",
    "MemberInfo",
    "OvaReport",
    "pack",
    "build_descriptor",
    "parse_descriptor",
    "parse_manifest",
    "info",
    "verify",
    "unpack",
]

OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1"
RASD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"

#: The format URI we write (the VHD specification's technet address, as XenServer writes it).
VHD_FORMAT_URI = "http://technet.microsoft.com/en-us/library/bb676673.aspx"
#: VHD format URIs seen in the wild (compared case-insensitively, scheme-agnostic).
VHD_FORMAT_URIS = (
    VHD_FORMAT_URI,
    "http://technet.microsoft.com/en-us/virtualserver/bb676673.aspx",  # XenCenter
    "http://go.microsoft.com/fwlink/?LinkId=137171",  # VirtualBox
    "http://www.microsoft.com/technet/virtualserver/downloads/vhdspec.mspx",
    "http://technet.microsoft.com/en-us/virtualserver/bb676673",
)
_VHD_URI_KEYS = {u.lower().split("://", 1)[1].rstrip("/") for u in VHD_FORMAT_URIS}

MAX_DESCRIPTOR = 16 << 20
MAX_MANIFEST = 4 << 20
#: Largest VHD (2040 GiB) plus room for its metadata: the default cap on a decompressed disk.
MAX_DISK_BYTES = 2040 * (1 << 30) + (64 << 30)
_USTAR_MAX = 8 << 30  # exclusive

ProgressFn = Callable[[int, Optional[int]], None]
Pathish = Union[str, os.PathLike]


def is_vhd_format_uri(uri: Optional[str]) -> bool:
    if not uri:
        return False
    key = uri.strip().lower().split("://", 1)[-1].rstrip("/")
    return key in _VHD_URI_KEYS


# ------------------------------------------------------------- descriptor
@dataclass
class OvfFile:
    id: str
    href: str
    size: Optional[int]
    compression: Optional[str] = None


@dataclass
class OvfDisk:
    disk_id: str
    file_ref: Optional[str]
    capacity: Optional[int]
    format: Optional[str]
    parent_ref: Optional[str] = None

    @property
    def is_vhd(self) -> bool:
        return is_vhd_format_uri(self.format)


@dataclass
class Descriptor:
    files: List[OvfFile] = field(default_factory=list)
    disks: List[OvfDisk] = field(default_factory=list)
    name: Optional[str] = None
    problems: List[str] = field(default_factory=list)

    def file_by_href(self, href: str) -> Optional[OvfFile]:
        return next((f for f in self.files if f.href == href), None)

    def disk_for_file(self, file_id: str) -> Optional[OvfDisk]:
        return next((d for d in self.disks if d.file_ref == file_id), None)


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def build_descriptor(name: str, disks: Sequence[dict]) -> bytes:
    """The OVF envelope for ``disks`` (dicts: href, size, capacity, compression).
    ``disks[0]`` is the leaf (the attached disk); each refers to the next as parent."""
    for p, ns in (("ovf", OVF_NS), ("rasd", RASD_NS), ("vssd", VSSD_NS), ("xsi", XSI_NS)):
        ET.register_namespace(p, ns)
    o = lambda t: _q(OVF_NS, t)  # noqa: E731
    env = ET.Element(o("Envelope"), {o("version"): "1.0"})
    refs = ET.SubElement(env, o("References"))
    for i, d in enumerate(disks, 1):
        a = {o("href"): d["href"], o("id"): f"file{i}", o("size"): str(d["size"])}
        if d.get("compression"):
            a[o("compression")] = d["compression"]
        ET.SubElement(refs, o("File"), a)
    ds = ET.SubElement(env, o("DiskSection"))
    ET.SubElement(ds, o("Info")).text = "Virtual disks"
    for i, d in enumerate(disks, 1):
        a = {o("capacity"): str(d["capacity"]), o("capacityAllocationUnits"): "byte",
             o("diskId"): f"vmdisk{i}", o("fileRef"): f"file{i}", o("format"): VHD_FORMAT_URI}
        if i < len(disks):
            a[o("parentRef")] = f"vmdisk{i + 1}"
        ET.SubElement(ds, o("Disk"), a)
    vs = ET.SubElement(env, o("VirtualSystem"), {o("id"): name})
    ET.SubElement(vs, o("Info")).text = "A virtual machine"
    ET.SubElement(vs, o("Name")).text = name
    hw = ET.SubElement(vs, o("VirtualHardwareSection"))
    ET.SubElement(hw, o("Info")).text = "Virtual hardware requirements"
    system = ET.SubElement(hw, o("System"))
    for tag, text in (("ElementName", "Virtual Hardware Family"), ("InstanceID", "0"),
                      ("VirtualSystemIdentifier", name), ("VirtualSystemType", "vhdkit-1")):
        ET.SubElement(system, _q(VSSD_NS, tag)).text = text

    def item(fields: List[tuple]) -> None:
        it = ET.SubElement(hw, o("Item"))
        for tag, text in fields:  # rasd elements in the schema's (alphabetical) order
            ET.SubElement(it, _q(RASD_NS, tag)).text = text

    item([("AllocationUnits", "hertz * 10^6"), ("Description", "Number of virtual CPUs"),
          ("ElementName", "1 virtual CPU"), ("InstanceID", "1"), ("ResourceType", "3"),
          ("VirtualQuantity", "1")])
    item([("AllocationUnits", "byte * 2^20"), ("Description", "Memory size"),
          ("ElementName", "512 MB of memory"), ("InstanceID", "2"), ("ResourceType", "4"),
          ("VirtualQuantity", "512")])
    item([("Address", "0"), ("Description", "IDE controller"), ("ElementName", "IDE controller 0"),
          ("InstanceID", "3"), ("ResourceType", "5")])
    item([("AddressOnParent", "0"), ("ElementName", "Hard disk 1"), ("HostResource", "ovf:/disk/vmdisk1"),
          ("InstanceID", "4"), ("Parent", "3"), ("ResourceType", "17")])
    ET.indent(env)
    return ET.tostring(env, encoding="utf-8", xml_declaration=True) + b"\n"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _attr(el, name: str) -> Optional[str]:
    for k, v in el.attrib.items():
        if _local(k) == name:
            return v
    return None


_UNITS = re.compile(r"^\s*byte\s*(?:\*\s*(\d+)\s*\^\s*(\d+))?\s*$", re.I)


def parse_descriptor(data: bytes) -> Descriptor:
    """Parse an OVF envelope (any 0.9/1.x/2.x namespace) safely (defusedxml:
    no DTDs, no entity expansion)."""
    import defusedxml.ElementTree as DET

    try:
        root = DET.fromstring(data, forbid_dtd=True)
    except Exception as e:  # ParseError, DTDForbidden, EntitiesForbidden, ...
        raise ArchiveError(f"OVF descriptor is not acceptable XML: {e}") from None
    if _local(root.tag) != "Envelope":
        raise ArchiveError(f"OVF descriptor root is <{_local(root.tag)}>, not <Envelope>")
    desc = Descriptor()
    for el in root.iter():
        tag = _local(el.tag)
        if tag == "File":
            size_s = _attr(el, "size")
            size = None
            if size_s is not None:
                if not size_s.strip().isdigit():
                    raise ArchiveError(f"OVF File size {size_s!r} is not a number")
                size = int(size_s)
            fid, href = _attr(el, "id"), _attr(el, "href")
            if not fid or not href:
                raise ArchiveError("OVF File element without id or href")
            desc.files.append(OvfFile(fid, href, size, _attr(el, "compression")))
        elif tag == "Disk":
            cap_s, units = _attr(el, "capacity"), _attr(el, "capacityAllocationUnits") or "byte"
            cap = None
            m = _UNITS.match(units)
            if cap_s is not None and cap_s.strip().isdigit() and m:
                cap = int(cap_s) * (int(m.group(1)) ** int(m.group(2)) if m.group(1) else 1)
            else:
                desc.problems.append(f"disk {_attr(el, 'diskId')}: capacity {cap_s!r} {units!r} not understood")
            desc.disks.append(OvfDisk(_attr(el, "diskId") or "", _attr(el, "fileRef"), cap,
                                      _attr(el, "format"), _attr(el, "parentRef")))
        elif tag == "VirtualSystem" and desc.name is None:
            desc.name = _attr(el, "id")
    ids = [f.id for f in desc.files]
    if len(set(ids)) != len(ids):
        raise ArchiveError("OVF descriptor repeats a File id")
    return desc


_MF_LINE = re.compile(r"^\s*(SHA1|SHA256|SHA512)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*$")


def parse_manifest(data: bytes) -> Dict[str, tuple]:
    """``{member name: (algorithm, hex)}`` from an .mf file (ArchiveError if malformed)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ArchiveError("manifest is not UTF-8 text") from None
    out: Dict[str, tuple] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _MF_LINE.match(line)
        if not m:
            raise ArchiveError(f"manifest line {n} is not 'ALGO(name)= hex': {line[:80]!r}")
        algo, name, hexd = m.group(1).lower(), m.group(2), m.group(3).lower()
        if len(hexd) != hashlib.new(algo).digest_size * 2:
            raise ArchiveError(f"manifest line {n}: {algo} digest has the wrong length")
        if name in out:
            raise ArchiveError(f"manifest lists {name!r} twice")
        out[name] = (algo, hexd)
    return out


# -------------------------------------------------------------------- pack
class _HashWriter(io.RawIOBase):
    def __init__(self, f: BinaryIO):
        self.f = f
        self.h = hashlib.sha256()
        self.n = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.h.update(b)
        self.f.write(b)
        self.n += len(b)
        return len(b)

    def flush(self) -> None:
        self.f.flush()


def _sha256_file(path: Path, progress=None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(streams.CHUNK)
            if not b:
                return h.hexdigest()
            h.update(b)


def _disk_infos(paths: Sequence[Path]) -> list:
    """VhdInfo of each disk; a chain must link leaf -> ... -> base by parent UUID."""
    from ..vhd.read import info as vhd_info  # lazy: the format layer needs the native build

    infos = [vhd_info(str(p)) for p in paths]
    for i, (p, inf) in enumerate(zip(paths, infos)):
        last = i == len(infos) - 1
        if not last:
            if inf.disk_type != "differencing":
                raise ChainError(f"{p} is {inf.disk_type}, but it is followed by a parent in the chain")
            if inf.parent_uuid != infos[i + 1].uuid:
                raise ChainError(f"{p}: its parent UUID {inf.parent_uuid} is not the UUID of {paths[i + 1]} "
                                 f"({infos[i + 1].uuid})")
        elif inf.disk_type == "differencing":
            raise ChainError(f"{p} is a differencing disk: a package of it without its parents could never be "
                             f"read; give the whole chain, leaf first ({_chain_hint(paths)})")
    return infos


def _chain_hint(paths: Sequence[Path]) -> str:
    """The chain ``vhdkit chain`` resolves from ``paths[0]``, as a hint, or how to find it."""
    try:
        from ..vhd.chain import chain_info

        return "here: " + " ".join(x.path for x in chain_info(str(paths[0])))
    except Exception:  # noqa: BLE001 - only a hint; the refusal stands
        return f"`vhdkit chain {paths[0]}` lists it"


def _tar_header(name: str, size: int, mtime: int) -> bytes:
    """One 512-byte header: ustar, or GNU base-256 size from 8 GiB on."""
    t = tarfile.TarInfo(name)
    t.size, t.mode, t.mtime, t.type = size, 0o644, mtime, tarfile.REGTYPE
    t.uname = t.gname = "root"
    fmt = tarfile.USTAR_FORMAT if size < _USTAR_MAX else tarfile.GNU_FORMAT
    buf = t.tobuf(fmt, "utf-8", "strict")
    if len(buf) != tarfile.BLOCKSIZE:
        raise InvalidInputError(f"member name {name!r} is too long for a single tar header")
    return buf


def _pad(n: int) -> bytes:
    return b"\0" * (-n % tarfile.BLOCKSIZE)


def pack(disks: Sequence[Pathish], output: Pathish, *, compress: Optional[str] = "gzip",
         name: Optional[str] = None, level: Optional[int] = None, threads: Optional[int] = None,
         progress: Optional[ProgressFn] = None) -> dict:
    """Write ``output`` (an .ova) holding ``disks`` (leaf first; more than one
    means a differencing chain, stored as ``0.vhd`` … ``N.vhd``).  ``compress``
    is ``"gzip"`` or None.  Returns a summary dict (members, sizes, hashes).

    One pass over each disk: the archive is written to a temporary file next
    to ``output`` with room reserved for the descriptor and the manifest; each
    disk is compressed straight into the archive while being hashed; then the
    descriptor (padded with trailing whitespace to its reserved size), the
    manifest and the disk headers are written into place and the file is
    fsynced and renamed over ``output``.  No spool file, no second read.
    """
    if not disks:
        raise InvalidInputError("nothing to pack: give at least one VHD")
    if compress not in (None, "none", "gzip"):
        raise InvalidInputError(f"OVA disks can be stored gzip-compressed or not, not {compress!r}")
    compress = None if compress == "none" else compress
    paths = [Path(d) for d in disks]
    for p in paths:
        if p.is_dir():
            raise InvalidInputError(f"{p} is a directory (give a file)")
        if not p.is_file():
            raise NotFoundError(f"{p}: no such file")
    out = Path(output)
    name = name or (paths[0].stem if len(paths) == 1 else out.stem)
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise InvalidInputError(f"bad package name {name!r}")
    hrefs = [paths[0].name] if len(paths) == 1 else [f"{i}.vhd" for i in range(len(paths))]
    ovf_name, mf_name = f"{name}.ovf", f"{name}.mf"
    if len(set(hrefs + [ovf_name, mf_name])) != len(hrefs) + 2:
        raise InvalidInputError("a disk file name collides with the descriptor or manifest name")
    infos = _disk_infos(paths)
    entries: List[dict] = [{"href": h, "size": 10 ** 20 - 1, "capacity": int(i.virtual_size),
                            "compression": compress, "source": str(p)}
                           for h, i, p in zip(hrefs, infos, paths)]
    ovf_room = len(build_descriptor(name, entries))  # every size at its widest (20 digits)
    mf_len = len(f"SHA256({ovf_name})= {'0' * 64}\n") + sum(len(f"SHA256({h})= {'0' * 64}\n") for h in hrefs)
    now = int(time.time())
    total_in = sum(p.stat().st_size for p in paths)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise NotFoundError(f"{parent}: output directory does not exist")
    with atomic_file(out, "w+b") as f:
        f.write(_tar_header(ovf_name, ovf_room, now))  # placeholders, rewritten below
        f.write(b"\0" * (ovf_room + len(_pad(ovf_room))))
        f.write(_tar_header(mf_name, mf_len, now))
        f.write(b"\0" * (mf_len + len(_pad(mf_len))))
        done_in = 0
        for e, p in zip(entries, paths):
            e["header_at"] = f.tell()
            f.write(b"\0" * tarfile.BLOCKSIZE)
            hw = _HashWriter(f)  # type: ignore[arg-type]
            base = done_in

            def prog(n, _t, base=base):
                if progress is not None:
                    progress(base + n, total_in)

            with open(p, "rb") as src:
                size_before = os.fstat(src.fileno()).st_size
                if compress:
                    streams.compress(src, hw, format="gzip", level=level, threads=threads,  # type: ignore[arg-type]
                                     progress=prog)
                else:
                    streams.copy_stream(src, hw, progress=prog, total=total_in)
                if os.fstat(src.fileno()).st_size != size_before:
                    raise ConflictError(f"{p} changed while being packed")
            e["size"], e["sha256"] = hw.n, hw.h.hexdigest()
            f.write(_pad(hw.n))
            done_in += size_before
        f.write(b"\0" * (2 * tarfile.BLOCKSIZE))  # end-of-archive marker
        ovf = build_descriptor(name, entries)
        ovf = ovf.rstrip(b"\n") + b" " * (ovf_room - len(ovf)) + b"\n"  # XML allows trailing blanks
        mf = f"SHA256({ovf_name})= {hashlib.sha256(ovf).hexdigest()}\n"
        mf += "".join(f"SHA256({e['href']})= {e['sha256']}\n" for e in entries)
        assert len(ovf) == ovf_room and len(mf) == mf_len
        f.seek(0)
        f.write(_tar_header(ovf_name, ovf_room, now) + ovf)
        f.seek(tarfile.BLOCKSIZE * (2 + -(-ovf_room // tarfile.BLOCKSIZE)) - tarfile.BLOCKSIZE)
        f.write(_tar_header(mf_name, mf_len, now) + mf.encode("ascii"))
        for e in entries:
            f.seek(e.pop("header_at"))
            f.write(_tar_header(e["href"], e["size"], now))
    for e in entries:
        if not e["compression"]:
            e.pop("compression")
    return {"output": str(out), "name": name, "descriptor": ovf_name, "manifest": mf_name,
            "compression": compress or "none", "size": out.stat().st_size, "disks": entries}


# -------------------------------------------------------------------- read
@dataclass
class MemberInfo:
    name: str
    size: int
    kind: str  # descriptor | manifest | disk | certificate | other
    sha256: Optional[str] = None
    sha1: Optional[str] = None
    compression: Optional[str] = None
    declared_size: Optional[int] = None
    capacity: Optional[int] = None
    format: Optional[str] = None
    extracted_to: Optional[str] = None
    extracted_size: Optional[int] = None


@dataclass
class OvaReport:
    path: str
    layout: str  # "ova" (plain tar) or "tgz" (gzip-compressed tar)
    members: List[MemberInfo] = field(default_factory=list)
    descriptor: Optional[str] = None
    manifest: Optional[str] = None
    manifest_algorithm: Optional[str] = None
    name: Optional[str] = None
    problems: List[str] = field(default_factory=list)
    hashed: bool = False
    #: differencing disks whose parent the package lacks (each also a problem)
    orphans: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def disks(self) -> List[MemberInfo]:
        return [m for m in self.members if m.kind == "disk"]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def _safe_name(raw: str) -> str:
    """Normalise a member name or refuse it."""
    if "\0" in raw or "\\" in raw:
        raise ArchiveError(f"unsafe member name {raw!r} (NUL or backslash)")
    if raw.startswith("/"):
        raise ArchiveError(f"unsafe member name {raw!r}: absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ArchiveError(f"unsafe member name {raw!r}: contains '..'")
    return "/".join(parts)


class _HashReader(io.RawIOBase):
    """Reads ``f`` hashing what passes (sha256 and/or sha1)."""

    HEAD = 64 << 10

    def __init__(self, f, algos: Sequence[str]):
        self.f = f
        self.hs = {a: hashlib.new(a) for a in algos}
        self.n = 0
        self.head = bytearray()  # the member's first bytes (see _is_differencing)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.f.readinto(b) or 0
        if n:
            view = memoryview(b)[:n]
            for h in self.hs.values():
                h.update(view)
            if len(self.head) < self.HEAD:
                self.head += view[:self.HEAD - len(self.head)]
            self.n += n
        return n


def _is_differencing(head: bytes) -> bool:
    """Whether a disk member (its first stored bytes, gzip or not) is a
    differencing VHD: such a disk starts with a copy of its footer."""
    from ..vhd import layout

    if head[:2] == streams.GZIP_MAGIC:
        try:
            head = zlib.decompressobj(31).decompress(bytes(head), layout.FOOTER_BYTES)
        except zlib.error:
            return False
    f = layout.footer(head[:layout.FOOTER_BYTES]) if len(head) >= layout.FOOTER_BYTES else None
    return f is not None and f.disk_type == layout.lib.VK_DISK_DIFF


def _kind(name: str) -> str:
    low = name.lower()
    if low.endswith(".ovf"):
        return "descriptor"
    if low.endswith(".mf"):
        return "manifest"
    if low.endswith(".cert"):
        return "certificate"
    return "other"


def _scan(path: Pathish, *, hash_data: bool, dest: Optional[Path] = None, decompress: bool = True,
          max_output: Optional[int] = None, progress: Optional[ProgressFn] = None) -> OvaReport:
    """One streaming pass over the archive; with ``dest``, extract into it."""
    p = Path(path)
    try:
        fobj = open(p, "rb")
    except FileNotFoundError:
        raise NotFoundError(f"{p}: no such file") from None
    except OSError as e:
        raise ArchiveError(f"{p}: cannot open: {e}") from None
    differencing: set = set()  # disk members that are differencing VHDs
    with fobj:
        head = fobj.read(4)
        fobj.seek(0)
        layout = "tgz" if streams.detect_format(head) == "gzip" else "ova"
        src: BinaryIO = fobj
        if layout == "tgz":
            bound = max_output if max_output is not None else 16 * MAX_DISK_BYTES
            src = streams.open_decompressor(fobj, "gzip", max_output=bound, name=str(p))
        rep = OvaReport(path=str(p), layout=layout, hashed=hash_data)
        desc: Optional[Descriptor] = None
        manifest: Optional[Dict[str, tuple]] = None
        seen: Dict[str, MemberInfo] = {}
        done = 0
        total = p.stat().st_size
        try:
            tar = tarfile.open(fileobj=src, mode="r|", bufsize=streams.CHUNK)
        except tarfile.TarError as e:
            raise ArchiveError(f"{p}: not a tar archive: {e}") from None
        try:
            while True:
                try:
                    m = tar.next()
                except tarfile.TarError as e:
                    raise ArchiveError(f"{p}: corrupt tar archive: {e}") from None
                if m is None:
                    break
                if m.isdir():
                    _safe_name(m.name)
                    continue
                if m.issym() or m.islnk():
                    raise ArchiveError(f"{p}: member {m.name!r} is a link; refused")
                if m.ischr() or m.isblk() or m.isfifo() or m.isdev():
                    raise ArchiveError(f"{p}: member {m.name!r} is a device or fifo; refused")
                if not m.isreg() or m.issparse():
                    raise ArchiveError(f"{p}: member {m.name!r} is not a regular file; refused")
                name = _safe_name(m.name)
                if not name:
                    raise ArchiveError(f"{p}: member with an empty name")
                if name in seen:
                    raise ArchiveError(f"{p}: duplicate member name {name!r}; refused")
                kind = _kind(name)
                mi = MemberInfo(name=name, size=m.size, kind=kind)
                seen[name] = mi
                rep.members.append(mi)
                f_decl = desc.file_by_href(name) if desc is not None else None
                if f_decl is not None:
                    _check_declared(p, mi, f_decl, desc)  # type: ignore[arg-type]
                small = kind in ("descriptor", "manifest") and ((kind == "descriptor" and rep.descriptor is None)
                                                                or (kind == "manifest" and rep.manifest is None))
                if small:
                    limit = MAX_DESCRIPTOR if kind == "descriptor" else MAX_MANIFEST
                    if m.size > limit:
                        raise ArchiveError(f"{p}: {kind} {name!r} is {m.size} bytes, over the {limit}-byte limit")
                    data = tar.extractfile(m).read()  # type: ignore[union-attr]
                    mi.sha256 = hashlib.sha256(data).hexdigest()
                    mi.sha1 = hashlib.sha1(data).hexdigest()
                    if kind == "descriptor":
                        rep.descriptor = name
                        desc = parse_descriptor(data)
                        rep.name = desc.name
                        rep.problems.extend(desc.problems)
                        for other in rep.members[:-1]:  # members before the descriptor
                            fd_ = desc.file_by_href(other.name)
                            if fd_ is not None:
                                _check_declared(p, other, fd_, desc)
                    else:
                        rep.manifest = name
                        manifest = parse_manifest(data)
                        algos = {a for a, _ in manifest.values()}
                        rep.manifest_algorithm = "/".join(sorted(algos))
                    if dest is not None:
                        _write_small(dest, name, data)
                        mi.extracted_to = str(dest / name)
                        mi.extracted_size = len(data)
                    done += m.size
                    continue
                if not hash_data and dest is None:
                    done += m.size
                    continue
                algos = ["sha256", "sha1"]
                if manifest is not None and name in manifest:
                    algos = [manifest[name][0]]
                reader = _HashReader(tar.extractfile(m), algos)
                if dest is not None:
                    gz = (f_decl is not None and (f_decl.compression or "").lower() == "gzip" and decompress)
                    if f_decl is not None and f_decl.compression and f_decl.compression.lower() not in ("gzip", "identity"):
                        raise ArchiveError(f"{p}: {name!r} uses unsupported compression {f_decl.compression!r}")
                    mi.extracted_size = _extract(dest, name, reader, gz, _disk_bound(desc, f_decl, max_output), p)
                    mi.extracted_to = str(dest / name)
                else:
                    buf = bytearray(streams.CHUNK)
                    while reader.readinto(buf):
                        pass
                if reader.n != m.size:
                    raise ArchiveError(f"{p}: member {name!r} is truncated")
                if _is_differencing(reader.head):
                    differencing.add(name)
                for a, h in reader.hs.items():
                    setattr(mi, a, h.hexdigest())
                done += m.size
                if progress is not None:
                    progress(done, total)
        except tarfile.TarError as e:
            raise ArchiveError(f"{p}: corrupt tar archive: {e}") from None
        except EOFError:
            raise ArchiveError(f"{p}: truncated tar archive") from None
        finally:
            tar.close()
            if src is not fobj:
                src.close()
    _finish(rep, desc, manifest)
    _check_parents(rep, desc, differencing)
    return rep


def _check_declared(p: Path, mi: MemberInfo, f: OvfFile, desc: Descriptor) -> None:
    mi.kind = "disk" if desc.disk_for_file(f.id) is not None else mi.kind
    mi.compression = f.compression
    mi.declared_size = f.size
    d = desc.disk_for_file(f.id)
    if d is not None:
        mi.capacity, mi.format = d.capacity, d.format
    if f.size is not None and mi.size > f.size:
        raise ArchiveError(f"{p}: member {mi.name!r} is {mi.size} bytes, larger than the "
                           f"{f.size} bytes the descriptor declares; refused")


def capacity_bound(capacity: int) -> int:
    """Most bytes a VHD of ``capacity`` can take: its data plus footers,
    header, BAT and bitmaps, far under 1/64 + 16 MiB."""
    return capacity + capacity // 64 + (16 << 20)


def _disk_bound(desc: Optional[Descriptor], f: Optional[OvfFile], max_output: Optional[int]) -> int:
    """The cap on a decompressed disk: its declared capacity plus metadata room,
    never more than ``max_output`` (the caller's limit, whatever the package says)."""
    bound = MAX_DISK_BYTES
    if desc is not None and f is not None:
        d = desc.disk_for_file(f.id)
        if d is not None and d.capacity is not None:
            bound = capacity_bound(d.capacity)
    return bound if max_output is None else min(bound, max_output)


class DiskOutputGuard:
    """A writer for a decompressed disk that stops as soon as the output is
    longer than the VHD it holds can be.  Starts from ``bound``; once a dynamic
    VHD's footer copy, header and BAT have been written (they come first) the
    bound tightens to the end of its last block plus the footer (and
    :attr:`TAIL_SLACK` of alignment), read back
    from ``f`` itself (so memory stays small).  A fixed disk keeps ``bound``.
    Exceeding it raises :class:`~vhdkit.errors.OutputLimitError`."""

    _SECTOR = 512   # the VHD sector (layout.SECTOR; this module loads the core only for a VHD)
    _MAX_META = 64 << 20   # where a dynamic VHD's header and BAT must start
    _MAX_BAT = 16 << 20
    #: room past the last block (creators align the footer: Windows to 4 KiB)
    TAIL_SLACK = 1 << 20

    def __init__(self, f: BinaryIO, bound: int, name: str):
        self.f, self.bound, self.name = f, bound, name
        self.pos = 0
        self._next: Optional[int] = self._SECTOR    # the position the next parse needs
        self._step = 0

    def write(self, b) -> int:
        n = self.f.write(b)
        self.pos += len(b)
        if self._next is not None and self.pos >= self._next:
            self.f.flush()
            self._parse()
        if self.pos > self.bound:
            raise OutputLimitError(f"{self.name}: the disk decompresses to more than the {self.bound} bytes "
                                   "its VHD structure and the limits allow")
        return n

    def _pread(self, n: int, at: int) -> bytes:
        return os.pread(self.f.fileno(), n, at)

    def _parse(self) -> None:
        from ..vhd import layout

        if self._step == 0:
            foot = layout.footer(self._pread(self._SECTOR, 0))
            if (foot is None or foot.disk_type not in (layout.lib.VK_DISK_DYNAMIC, layout.lib.VK_DISK_DIFF)
                    or foot.data_offset % self._SECTOR or not self._SECTOR <= foot.data_offset <= self._MAX_META):
                self._next = None     # not a dynamic disk (a fixed one): the bound stays
                return
            self._hdr, self._step = foot.data_offset, 1
            self._next = foot.data_offset + layout.DYNHDR_BYTES
        elif self._step == 1:
            h = layout.dynamic_header(self._pread(layout.DYNHDR_BYTES, self._hdr))
            if (h is None or h.table_offset % self._SECTOR or h.table_offset > self._MAX_META
                    or h.max_table_entries * 4 > self._MAX_BAT):
                self._next = None
                return
            self._table, self._entries, self._block = h.table_offset, h.max_table_entries, h.block_size
            self._bitmap = h.bitmap_bytes
            self._step, self._next = 2, h.table_offset + h.max_table_entries * 4
        else:
            self._next = None
            end = self._table + -(-self._entries * 4 // self._SECTOR) * self._SECTOR
            blocks = layout.bat_blocks(self._pread(self._entries * 4, self._table))
            if blocks:
                end = max(end, max(blocks) + self._bitmap + self._block)
            self.bound = min(self.bound, end + self._SECTOR + self.TAIL_SLACK)


def _create(dest: Path, name: str) -> BinaryIO:
    """A new file for member ``name`` under ``dest`` (names are already safe)."""
    target = dest / name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return open(target, "xb+")  # read back by DiskOutputGuard
    except (FileExistsError, IsADirectoryError, NotADirectoryError):
        raise ArchiveError(f"member {name!r} conflicts with another member's path; refused") from None


def _write_small(dest: Path, name: str, data: bytes) -> None:
    with _create(dest, name) as f:
        f.write(data)


def _extract(dest: Path, name: str, reader: BinaryIO, gz: bool, bound: int, p: Path) -> int:
    with _create(dest, name) as out:
        if gz:
            st = streams.decompress(reader, DiskOutputGuard(out, bound, f"{p}:{name}"), format="gzip",  # type: ignore[arg-type]
                                    max_output=bound, name=f"{p}:{name}")
            return st.bytes_out
        return streams.copy_stream(reader, out)


def _check_parents(rep: OvaReport, desc: Optional[Descriptor], differencing: set) -> None:
    """A differencing disk needs its parent in the package: the disk the
    descriptor's parentRef names, or in a snapshot chain ``0.vhd`` … ``N.vhd``
    the next one.  Without it the package can never be read."""
    disks = {d.disk_id: d for d in desc.disks} if desc is not None else {}
    names = {m.name for m in rep.members}
    for name in sorted(differencing):
        f = desc.file_by_href(name) if desc is not None else None
        d = desc.disk_for_file(f.id) if f is not None and desc is not None else None
        if d is not None and d.parent_ref in disks and disks[d.parent_ref] is not d:
            continue
        m = re.fullmatch(r"(\d+)\.vhd", name)
        if m is None or f"{int(m.group(1)) + 1}.vhd" not in names:
            rep.orphans.append(name)
            rep.problems.append(f"{name!r} is a differencing VHD but the package holds no parent disk for it: "
                                "it cannot be read")


def _finish(rep: OvaReport, desc: Optional[Descriptor], manifest: Optional[Dict[str, tuple]]) -> None:
    names = {m.name for m in rep.members}
    if rep.descriptor is None:
        rep.problems.append("no .ovf descriptor in the archive")
    elif rep.layout == "ova" and rep.members and rep.members[0].name != rep.descriptor:
        rep.problems.append(f"the descriptor {rep.descriptor!r} is not the first member (OVF requires it)")
    if desc is not None:
        for f in desc.files:
            if f.href not in names:
                rep.problems.append(f"{f.href!r} is referenced by the descriptor but missing from the archive")
            else:
                mi = next(m for m in rep.members if m.name == f.href)
                if f.size is not None and mi.size != f.size:
                    rep.problems.append(f"{f.href!r} is {mi.size} bytes, the descriptor says {f.size}")
        for d in desc.disks:
            if d.format and not d.is_vhd:
                rep.problems.append(f"disk {d.disk_id}: format {d.format!r} is not VHD")
    if manifest is None:
        if rep.hashed:
            rep.problems.append("no manifest (.mf): the contents cannot be verified")
        return
    base = lambda n: n.rsplit("/", 1)[-1].rsplit(".", 1)[0]  # noqa: E731
    if rep.descriptor is not None and rep.manifest is not None and base(rep.manifest) != base(rep.descriptor):
        rep.problems.append(f"manifest {rep.manifest!r} does not match the descriptor name {rep.descriptor!r}")
    for mname, (algo, hexd) in manifest.items():
        if mname not in names:
            rep.problems.append(f"{mname!r} is listed in the manifest but missing from the archive")
            continue
        mi = next(m for m in rep.members if m.name == mname)
        got = getattr(mi, algo, None)
        if got is None:
            if rep.hashed:
                rep.problems.append(f"{mname!r}: could not compute {algo}")
        elif got != hexd:
            rep.problems.append(f"{mname!r}: {algo} mismatch (manifest {hexd}, archive {got})")
    for mi in rep.members:
        if mi.kind in ("manifest", "certificate"):
            continue
        if mi.name not in manifest:
            rep.problems.append(f"{mi.name!r} is in the archive but not listed in the manifest")


def info(path: Pathish) -> OvaReport:
    """Members, descriptor and disks of an OVA, reading headers only (no hashing)."""
    return _scan(path, hash_data=False)


def verify(path: Pathish, *, progress: Optional[ProgressFn] = None) -> OvaReport:
    """Hash every member and check the manifest both ways and the descriptor;
    problems are listed in the report (``.ok`` is False if any)."""
    return _scan(path, hash_data=True, progress=progress)


def unpack(path: Pathish, dest: Pathish, *, decompress: bool = True, max_output: Optional[int] = None,
           require_valid: bool = True, progress: Optional[ProgressFn] = None) -> OvaReport:
    """Extract ``path`` into the new directory ``dest`` (created; an existing
    empty directory is replaced), decompressing gzip disks unless
    ``decompress`` is False.  ``max_output`` caps each decompressed disk
    (default: its declared capacity plus metadata room).  Extraction happens in
    a temporary directory next to ``dest`` that is renamed at the end; on any
    refusal or (with ``require_valid``) verification problem nothing is left.
    A snapshot chain ``0.vhd`` … ``N.vhd`` is relinked inside ``dest`` after
    verification: each differencing ``N.vhd`` names ``N+1.vhd`` as its parent
    (relative and absolute locators), so the unpacked chain is self-contained
    (its rewritten headers no longer match the manifest's hashes of the
    packed bytes; ``ova verify`` the archive, not the unpacked files)."""
    dst = Path(dest)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConflictError(f"{dst} exists and is not an empty directory")
    parent = dst.parent if str(dst.parent) else Path(".")
    tmp = None
    try:
        with deferred():  # a SIGINT/SIGTERM lands after tmp is known: the cleanup below removes it
            tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=parent))
        rep = _scan(path, hash_data=True, dest=tmp, decompress=decompress, max_output=max_output,
                    progress=progress)
        if require_valid and rep.problems:
            # a parent missing from the package is a chain fault (the public [721]), not a damaged file
            raise (ChainError if rep.orphans else IntegrityError)(f"{path}: " + "; ".join(rep.problems))
        if dst.exists():
            dst.rmdir()
        os.rename(tmp, dst)
        for m in rep.members:
            if m.extracted_to:
                m.extracted_to = str(dst / m.name)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if decompress:
        try:
            _relink_chain(dst, rep)
        except BaseException:
            shutil.rmtree(dst, ignore_errors=True)
            raise
    return rep


def _relink_chain(dst: Path, rep: OvaReport) -> None:
    """Point each unpacked ``N.vhd`` of a snapshot chain at ``N+1.vhd`` beside
    it (parent name and W2ru/W2ku/MacX locators, relative and absolute), so the
    chain reads without the packer's original files -- and never from them.
    Runs after the manifest was verified against the bytes as packed; the
    rewritten headers are the only bytes that then differ.  Each disk is
    opened with its explicit parents from the package, never its old locators."""
    names = sorted(m.name for m in rep.disks)
    want = [f"{i}.vhd" for i in range(len(names))]
    if len(names) < 2 or names != sorted(want):
        return
    from ..vhd.chain import reparent
    from ..vhd.read import probe

    chain = [dst / n for n in want]
    for i in range(len(chain) - 1):
        if probe(chain[i]) == "differencing":
            reparent(chain[i], chain[i + 1], parents=[str(p) for p in chain[i + 2:]] or None,
                     follow_locators=False)
