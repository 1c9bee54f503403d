"""Minimal, independent VHD *writer* used only to build benchmark inputs.

It follows the Microsoft VHD specification (v1.0, 2006) literally and shares no
code with vhdkit, so the inputs the harness times vhdkit on were not made by
vhdkit.  Everything here writes big-endian structures with ``struct``:

* footer: 512 bytes, at the end of every image and copied at offset 0 of
  dynamic/differencing images;
* dynamic header: 1024 bytes at offset 512 (cookie ``cxsparse``);
* BAT: one big-endian u32 sector offset per block, 0xFFFFFFFF = unallocated,
  padded to a 512-byte multiple;
* a block: sector bitmap (one bit per sector, MSB first, padded to 512 bytes)
  followed by the block's data.

Created images use creator application ``qem2`` so that qemu-img, libvhdi and
vhdkit all take the footer's *current size* as the virtual size.
"""
from __future__ import annotations

import os
import struct
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Optional

SECTOR = 512
FIXED, DYNAMIC, DIFFERENCING = 2, 3, 4
UNALLOCATED = 0xFFFFFFFF
VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z as a Unix time
BENCH_TIMESTAMP = 800_000_000  # fixed, so inputs are byte-for-byte reproducible


def checksum(buf: bytes) -> int:
    """One's complement of the byte sum (the checksum field must already be zero)."""
    return (~sum(buf)) & 0xFFFFFFFF


def chs_geometry(size: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) by the algorithm in the spec's appendix."""
    total = size // SECTOR
    total = min(total, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total // spt
    else:
        spt = 17
        cth = total // spt
        heads = max((cth + 1023) // 1024, 4)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total // spt
    return cth // heads, heads, spt


def footer(size: int, disk_type: int, uid: uuidlib.UUID, data_offset: Optional[int]) -> bytes:
    cyl, heads, spt = chs_geometry(size)
    buf = bytearray(512)
    struct.pack_into(
        ">8sIIQI4sI4sQQHBBII16sB",
        buf, 0,
        b"conectix", 2, 0x00010000,
        0xFFFFFFFFFFFFFFFF if data_offset is None else data_offset,
        BENCH_TIMESTAMP, b"qem2", 0x00050003, b"Wi2k",
        size, size, cyl, heads, spt, disk_type, 0, uid.bytes, 0,
    )
    struct.pack_into(">I", buf, 64, checksum(buf))
    return bytes(buf)


@dataclass
class Parent:
    """What a differencing child records about its parent."""
    path: str
    uuid: uuidlib.UUID
    timestamp: int = BENCH_TIMESTAMP


@dataclass
class Layout:
    """File layout of a dynamic or differencing image about to be written."""
    size: int
    block_size: int
    allocated: list[int]                       # block indexes, ascending
    parent: Optional[Parent] = None
    uid: uuidlib.UUID = field(default_factory=uuidlib.uuid4)

    @property
    def n_blocks(self) -> int:
        return -(-self.size // self.block_size)

    @property
    def bitmap_bytes(self) -> int:
        bits = self.block_size // SECTOR
        return -(-(-(-bits // 8)) // SECTOR) * SECTOR

    @property
    def bat_bytes(self) -> int:
        return -(-(self.n_blocks * 4) // SECTOR) * SECTOR

    def _locators(self, child_path: str) -> list[tuple[bytes, bytes]]:
        if self.parent is None:
            return []
        ppath = os.path.abspath(self.parent.path)
        rel = os.path.relpath(ppath, os.path.dirname(os.path.abspath(child_path)))
        return [
            (b"W2ru", (".\\" + rel.replace("/", "\\")).encode("utf-16-le")),
            (b"W2ku", ppath.encode("utf-16-le")),
            (b"MacX", ("file://" + ppath).encode("utf-8")),
        ]

    def write_metadata(self, f, child_path: str) -> dict[int, int]:
        """Write footer copy, header, locators, BAT and final footer; return {block: file offset of bitmap}."""
        locs = self._locators(child_path)
        bat_off = 512 + 1024
        loc_off = bat_off + self.bat_bytes
        data_start = loc_off + SECTOR * len(locs)
        stride = self.bitmap_bytes + self.block_size
        offsets = {b: data_start + k * stride for k, b in enumerate(self.allocated)}
        bat = bytearray(b"\xff" * self.bat_bytes)
        for b, off in offsets.items():
            struct.pack_into(">I", bat, 4 * b, off // SECTOR)
        kind = DYNAMIC if self.parent is None else DIFFERENCING
        foot = footer(self.size, kind, self.uid, 512)
        hdr = bytearray(1024)
        struct.pack_into(">8sQQIIII", hdr, 0, b"cxsparse", 0xFFFFFFFFFFFFFFFF, bat_off,
                         0x00010000, self.n_blocks, self.block_size, 0)
        if self.parent is not None:
            struct.pack_into(">16sI", hdr, 40, self.parent.uuid.bytes, self.parent.timestamp)
            name = os.path.basename(self.parent.path).encode("utf-16-be")[:512]
            hdr[64:64 + len(name)] = name
            for i, (code, data) in enumerate(locs):
                # data space in sectors, as the spec says (Microsoft writes bytes; readers accept both)
                struct.pack_into(">4sIIIQ", hdr, 576 + 24 * i, code, 1, len(data), 0, loc_off + SECTOR * i)
                f.seek(loc_off + SECTOR * i)
                f.write(data)
        struct.pack_into(">I", hdr, 36, checksum(hdr))
        f.seek(0)
        f.write(foot)
        f.write(hdr)
        f.write(bat)
        end = data_start + stride * len(self.allocated)
        f.seek(end)
        f.write(foot)
        f.truncate(end + 512)
        return offsets
