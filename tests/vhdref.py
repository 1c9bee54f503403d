"""An independent, deliberately simple pure-Python VHD fixture writer and
reference reader, written from the VHD specification (v1.0, 2006) and not
from vhdkit's C code.  Tests use it as a second opinion:

- :func:`write_vhd` writes fixed, dynamic or differencing images from a
  ``{sector_number: 512 bytes}`` mapping (sector-granular bitmaps), so tests
  control exactly which bitmap bits are set;
- :class:`RefVhd` reads any VHD sector by sector, literally as the spec says
  (bitmap MSB first; bit 0 in a differencing disk = read the parent).

Slow on purpose (one sector at a time): use it on images of a few MiB.
Other helpers' tests may import it (``from tests.vhdref import ...`` or, with
pytest's rootdir on the path, ``from vhdref import ...``).
"""
from __future__ import annotations

import os
import struct
import time
import uuid as _uuid
from typing import Dict, List, Optional, Sequence, Tuple

SECTOR = 512
VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z in Unix time
UNUSED = 0xFFFFFFFF
UNUSED64 = 0xFFFFFFFFFFFFFFFF
FIXED, DYNAMIC, DIFF = 2, 3, 4


# ---- spec helpers ---------------------------------------------------------

def checksum(buf: bytes, skip_at: int) -> int:
    """One's complement of the byte sum, the 4-byte checksum field skipped."""
    total = sum(buf[:skip_at]) + sum(buf[skip_at + 4:])
    return (~total) & 0xFFFFFFFF


def chs(total_sectors: int) -> Tuple[int, int, int]:
    """The spec's 'CHS Calculation' appendix."""
    if total_sectors > 65535 * 16 * 255:
        total_sectors = 65535 * 16 * 255
    if total_sectors >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total_sectors // spt
    else:
        spt = 17
        cth = total_sectors // spt
        heads = (cth + 1023) // 1024
        if heads < 4:
            heads = 4
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total_sectors // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total_sectors // spt
    return cth // heads, heads, spt


def make_footer(*, size: int, disk_type: int, data_offset: int, uid: bytes, timestamp: int,
                creator: bytes = b"vkrf", geometry: Optional[Tuple[int, int, int]] = None,
                original_size: Optional[int] = None) -> bytes:
    c, h, s = geometry if geometry else chs(size // SECTOR)
    f = bytearray(512)
    f[0:8] = b"conectix"
    struct.pack_into(">IIQI", f, 8, 2, 0x00010000, data_offset, timestamp)
    f[28:32] = creator
    struct.pack_into(">I", f, 32, 0x00010000)
    f[36:40] = b"Wi2k"
    struct.pack_into(">QQHBBI", f, 40, original_size if original_size is not None else size, size, c, h, s,
                     disk_type)
    f[68:84] = uid
    struct.pack_into(">I", f, 64, checksum(bytes(f), 64))
    return bytes(f)


def bitmap_bytes(block_size: int) -> int:
    bits = block_size // SECTOR
    return ((bits + 7) // 8 + SECTOR - 1) // SECTOR * SECTOR


def _utf16(text: str, le: bool) -> bytes:
    return text.encode("utf-16-le" if le else "utf-16-be")


# ---- writer ---------------------------------------------------------------

def _read_footer_fields(path: str) -> Tuple[bytes, int]:
    with open(path, "rb") as fh:
        fh.seek(-512, os.SEEK_END)
        f = fh.read(512)
    assert f[:8] == b"conectix", f"{path} is not a VHD"
    return f[68:84], struct.unpack(">I", f[24:28])[0]


def write_vhd(path, size: int, sectors: Optional[Dict[int, bytes]] = None, *, kind: str = "dynamic",
              block_size: int = 2 << 20, parent: Optional[str] = None, creator: bytes = b"vkrf",
              locators: Optional[Sequence[Tuple[str, str]]] = None, parent_name: Optional[str] = None,
              uid: Optional[bytes] = None, timestamp: Optional[int] = None) -> bytes:
    """Write a VHD.  ``sectors`` maps sector numbers to 512-byte contents;
    in dynamic/differencing disks exactly those sectors get their bitmap bit
    set.  ``locators`` is a list of (code, text) for a differencing disk; by
    default W2ru '.\\name' (data space in bytes, as Microsoft does), MacX
    'file://<absolute path>' (data space in sectors, as the spec says).
    Returns the UUID written."""
    path = os.fspath(path)
    sectors = sectors or {}
    assert size % SECTOR == 0
    uid = uid or _uuid.uuid4().bytes
    ts = int(time.time()) - VHD_EPOCH if timestamp is None else timestamp
    nsec = size // SECTOR
    for s, d in sectors.items():
        assert 0 <= s < nsec and len(d) == SECTOR
    if kind == "fixed":
        with open(path, "wb") as fh:
            fh.truncate(size)
            for s, d in sectors.items():
                fh.seek(s * SECTOR)
                fh.write(d)
            fh.seek(size)
            fh.write(make_footer(size=size, disk_type=FIXED, data_offset=UNUSED64, uid=uid, timestamp=ts,
                                 creator=creator))
        return uid
    disk_type = DIFF if kind == "differencing" else DYNAMIC
    spb = block_size // SECTOR
    entries = (size + block_size - 1) // block_size
    bat_off = 1536
    bat_len = (entries * 4 + SECTOR - 1) // SECTOR * SECTOR
    hdr = bytearray(1024)
    hdr[0:8] = b"cxsparse"
    struct.pack_into(">QQIII", hdr, 8, UNUSED64, bat_off, 0x00010000, entries, block_size)
    next_free = bat_off + bat_len
    loc_blobs: List[Tuple[int, bytes]] = []
    if disk_type == DIFF:
        assert parent is not None
        puid, pts = _read_footer_fields(parent)
        pabs = os.path.abspath(parent)
        name = parent_name if parent_name is not None else os.path.basename(parent)
        hdr[40:56] = puid
        struct.pack_into(">I", hdr, 56, pts)
        nb = _utf16(name, le=False)[:512]
        hdr[64:64 + len(nb)] = nb
        if locators is None:
            locators = [("W2ru", ".\\" + os.path.basename(parent)), ("MacX", "file://" + pabs)]
        for i, (code, text) in enumerate(locators):
            data = text.encode("utf-8") if code == "MacX" else _utf16(text, le=True)
            space_bytes = (len(data) + SECTOR - 1) // SECTOR * SECTOR or SECTOR
            space_field = space_bytes // SECTOR if code == "MacX" else space_bytes
            struct.pack_into(">4sIIIQ", hdr, 576 + 24 * i, code.encode("ascii"), space_field, len(data), 0,
                             next_free)
            loc_blobs.append((next_free, data))
            next_free += space_bytes
    bm_len = bitmap_bytes(block_size)
    by_block: Dict[int, Dict[int, bytes]] = {}
    for s, d in sectors.items():
        by_block.setdefault(s // spb, {})[s % spb] = d
    bat = [UNUSED] * entries
    with open(path, "wb") as fh:
        for blk in sorted(by_block):
            bat[blk] = next_free // SECTOR
            bm = bytearray(bm_len)
            body = bytearray(block_size)
            for i, d in by_block[blk].items():
                bm[i // 8] |= 0x80 >> (i % 8)          # MSB first
                body[i * SECTOR:(i + 1) * SECTOR] = d
            fh.seek(next_free)
            fh.write(bm)
            fh.write(body)
            next_free += bm_len + block_size
        struct.pack_into(">I", hdr, 36, checksum(bytes(hdr), 36))
        footer = make_footer(size=size, disk_type=disk_type, data_offset=512, uid=uid, timestamp=ts,
                             creator=creator)
        fh.seek(0)
        fh.write(footer)
        fh.write(hdr)
        fh.write(b"".join(struct.pack(">I", e) for e in bat))
        for off, data in loc_blobs:
            fh.seek(off)
            fh.write(data)
        fh.seek(next_free)
        fh.write(footer)
    return uid



def sectors_of(data: bytes, *, skip_zero: bool = True) -> Dict[int, bytes]:
    """Turn raw disk contents into a sector map (all-zero sectors left out)."""
    out = {}
    for s in range(len(data) // SECTOR):
        chunk = data[s * SECTOR:(s + 1) * SECTOR]
        if not skip_zero or chunk.count(0) != SECTOR:
            out[s] = chunk
    return out


# ---- reference reader -----------------------------------------------------

class RefVhd:
    """Spec-literal reader of a VHD and its chain (parents resolved from the
    W2ru/MacX locators next to the child, or given explicitly)."""

    def __init__(self, path, parents: Optional[Sequence[str]] = None, size_rule: str = "auto"):
        self.path = os.path.abspath(os.fspath(path))
        with open(self.path, "rb") as fh:
            self.blob = fh.read()
        f = self.blob[-512:]
        if f[:8] != b"conectix":
            raise ValueError("no footer")
        self.footer = f
        self.disk_type = struct.unpack(">I", f[60:64])[0]
        self.current_size = struct.unpack(">Q", f[48:56])[0]
        c, h, s = struct.unpack(">HBB", f[56:60])
        self.chs_size = c * h * s * SECTOR
        creator = f[28:32]
        if size_rule == "chs" or (size_rule == "auto" and creator in (b"vpc ", b"qemu")
                                  and (c, h, s) != (65535, 16, 255)):
            self.size = self.chs_size
        else:
            self.size = self.current_size
        self.uuid = f[68:84]
        self.parent: Optional[RefVhd] = None
        if self.disk_type in (DYNAMIC, DIFF):
            data_offset = struct.unpack(">Q", f[16:24])[0]
            hdr = self.blob[data_offset:data_offset + 1024]
            assert hdr[:8] == b"cxsparse"
            bat_off, _ver, entries, self.block_size = struct.unpack(">QIII", hdr[16:36])
            self.bat = list(struct.unpack(f">{entries}I", self.blob[bat_off:bat_off + 4 * entries]))
            self.bm_len = bitmap_bytes(self.block_size)
            if self.disk_type == DIFF:
                self.parent_uuid = hdr[40:56]
                ppath = None
                if parents:
                    ppath = parents[0]
                else:
                    for i in range(8):
                        code, _space, length, _r, off = struct.unpack(">4sIIIQ", hdr[576 + 24 * i:600 + 24 * i])
                        raw = self.blob[off:off + length]
                        if code == b"W2ru":
                            cand = os.path.join(os.path.dirname(self.path),
                                                raw.decode("utf-16-le").replace("\\", "/"))
                        elif code == b"MacX":
                            cand = raw.decode("utf-8").split("file://", 1)[-1]
                        else:
                            continue
                        if os.path.isfile(cand):
                            ppath = cand
                            break
                if ppath is None:
                    raise FileNotFoundError("parent not found")
                self.parent = RefVhd(ppath, parents[1:] if parents else None, size_rule)
                if self.parent.uuid != self.parent_uuid:
                    raise ValueError("parent UUID mismatch")

    def sector(self, s: int) -> bytes:
        if s * SECTOR >= self.size:
            return bytes(SECTOR)
        if self.disk_type == FIXED:
            return self.blob[s * SECTOR:(s + 1) * SECTOR]
        spb = self.block_size // SECTOR
        blk, i = divmod(s, spb)
        entry = self.bat[blk] if blk < len(self.bat) else UNUSED
        if entry == UNUSED:
            return self.parent.sector(s) if self.disk_type == DIFF else bytes(SECTOR)
        base = entry * SECTOR
        bit = (self.blob[base + i // 8] >> (7 - i % 8)) & 1
        if bit:
            start = base + self.bm_len + i * SECTOR
            return self.blob[start:start + SECTOR]
        return self.parent.sector(s) if self.disk_type == DIFF else bytes(SECTOR)

    def read(self, offset: int = 0, length: Optional[int] = None) -> bytes:
        if length is None:
            length = self.size - offset
        first, last = offset // SECTOR, (offset + length + SECTOR - 1) // SECTOR
        data = b"".join(self.sector(s) for s in range(first, last))
        skip = offset - first * SECTOR
        return data[skip:skip + length]
