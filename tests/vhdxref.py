"""An independent, deliberately simple pure-Python VHDX fixture writer,
written from the VHDX specification ([MS-VHDX] v1.0) and not from vhdkit's
C code.  qemu writes neither differencing VHDX, nor partially present
blocks, nor logs with entries left unapplied; this writer does, literally
as the spec lays them out:

- :func:`write_vhdx` makes a fixed, dynamic or differencing VHDX from a
  ``{logical sector number: sector bytes}`` mapping (a differencing disk gets
  PARTIALLY_PRESENT blocks and sector bitmaps where a block is not whole),
  with a parent locator naming its parent by DataWriteGuid and paths;
- ``unapplied`` moves 4 KiB pages of the finished file into log entries
  (the file keeps stale bytes there), so a reader must replay the log to see
  the disk; ``zeroed`` adds zero descriptors over pages left with garbage.

Layout: identifier at 0, headers at 64/128 KiB, region tables at 192/256
KiB, log at 1 MiB, metadata at 2 MiB, BAT at 3 MiB, blocks after it.
"""
from __future__ import annotations

import os
import struct
import uuid as _uuid
from typing import Dict, List, Optional, Sequence, Tuple

MIB = 1 << 20
KIB = 1 << 10
GUID_BAT = _uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
GUID_METADATA = _uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
GUID_FILE_PARAMS = _uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
GUID_VIRTUAL_SIZE = _uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
GUID_PAGE83 = _uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
GUID_LOGICAL = _uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
GUID_PHYSICAL = _uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
GUID_PARENT_LOCATOR = _uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
GUID_LOCATOR_TYPE = _uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")
NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED, FULLY, PARTIALLY = 0, 1, 2, 3, 6, 7
SB_PRESENT = 6


def _crc_table() -> List[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):   # the reflected Castagnoli polynomial, bit by bit
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli)."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def refresh_checksums(path) -> None:
    """Recompute the CRC-32C of both headers and both region tables in place
    (tests edit a structure, then make its checksum right again)."""
    with open(path, "r+b") as f:
        for off, size, sig in ((64 * KIB, 4 * KIB, b"head"), (128 * KIB, 4 * KIB, b"head"),
                               (192 * KIB, 64 * KIB, b"regi"), (256 * KIB, 64 * KIB, b"regi")):
            f.seek(off)
            b = bytearray(f.read(size))
            if len(b) == size and b[:4] == sig:
                f.seek(off)
                f.write(_with_crc(b))


def _with_crc(buf: bytearray, at: int = 4) -> bytes:
    buf[at:at + 4] = b"\0\0\0\0"
    buf[at:at + 4] = struct.pack("<I", crc32c(bytes(buf)))
    return bytes(buf)


def _u16(text: str) -> bytes:
    return text.encode("utf-16-le")


def header(seq: int, data_write_guid: _uuid.UUID, log_guid: Optional[_uuid.UUID] = None,
           log_offset: int = MIB, log_length: int = MIB) -> bytes:
    b = bytearray(4 * KIB)
    b[0:4] = b"head"
    struct.pack_into("<Q16s16s16sHHIQ", b, 8, seq, _uuid.uuid4().bytes_le, data_write_guid.bytes_le,
                     (log_guid or _uuid.UUID(int=0)).bytes_le, 0, 1, log_length, log_offset)
    return _with_crc(b)


def region_table(entries: Sequence[Tuple[_uuid.UUID, int, int, int]]) -> bytes:
    b = bytearray(64 * KIB)
    b[0:4] = b"regi"
    struct.pack_into("<I", b, 8, len(entries))
    for i, (g, off, length, req) in enumerate(entries):
        struct.pack_into("<16sQII", b, 16 + 32 * i, g.bytes_le, off, length, req)
    return _with_crc(b)


def parent_locator(entries: Dict[str, str]) -> bytes:
    head = bytearray(20)
    head[0:16] = GUID_LOCATOR_TYPE.bytes_le
    struct.pack_into("<H", head, 18, len(entries))
    table = bytearray()
    blob = bytearray()
    base = 20 + 12 * len(entries)
    for k, v in entries.items():
        kb, vb = _u16(k), _u16(v)
        table += struct.pack("<IIHH", base + len(blob), base + len(blob) + len(kb), len(kb), len(vb))
        blob += kb + vb
    return bytes(head + table + blob)


def metadata(size: int, block_size: int, logical: int, physical: int, *, leave_allocated: bool,
             locator: Optional[Dict[str, str]]) -> bytes:
    items: List[Tuple[_uuid.UUID, bytes, int]] = [
        (GUID_FILE_PARAMS, struct.pack("<II", block_size, (1 if leave_allocated else 0) | (2 if locator else 0)), 4),
        (GUID_VIRTUAL_SIZE, struct.pack("<Q", size), 2 | 4),
        (GUID_PAGE83, _uuid.uuid4().bytes_le, 2 | 4),
        (GUID_LOGICAL, struct.pack("<I", logical), 2 | 4),
        (GUID_PHYSICAL, struct.pack("<I", physical), 2 | 4),
    ]
    if locator is not None:
        items.append((GUID_PARENT_LOCATOR, parent_locator(locator), 4))
    b = bytearray(MIB)
    b[0:8] = b"metadata"
    struct.pack_into("<H", b, 10, len(items))
    pos = 64 * KIB
    for i, (g, data, flags) in enumerate(items):
        struct.pack_into("<16sIII", b, 32 + 32 * i, g.bytes_le, pos, len(data), flags)
        b[pos:pos + len(data)] = data
        pos += (len(data) + 4095) // 4096 * 4096
    return bytes(b)


def log_entry(seq: int, tail: int, log_guid: _uuid.UUID, writes: Sequence[Tuple[int, bytes]],
              zeros: Sequence[Tuple[int, int]], flushed: int, last: int) -> bytes:
    """One log entry: zero descriptors, then one data descriptor + data sector per 4 KiB write."""
    nd = len(zeros) + len(writes)
    hdr_len = (64 + 32 * nd + 4095) // 4096 * 4096
    total = hdr_len + 4096 * len(writes)
    b = bytearray(total)
    b[0:4] = b"loge"
    struct.pack_into("<IIQII16sQQ", b, 8, total, tail, seq, nd, 0, log_guid.bytes_le, flushed, last)
    d = 64
    for off, length in zeros:
        struct.pack_into("<4sIQQQ", b, d, b"zero", 0, length, off, seq)
        d += 32
    for i, (off, page) in enumerate(writes):
        assert len(page) == 4096 and off % 4096 == 0
        struct.pack_into("<4s4s8sQQ", b, d, b"desc", page[4092:], page[:8], off, seq)
        d += 32
        s = hdr_len + 4096 * i
        b[s:s + 4] = b"data"
        struct.pack_into("<I", b, s + 4, seq >> 32)
        b[s + 8:s + 4092] = page[8:4092]
        struct.pack_into("<I", b, s + 4092, seq & 0xFFFFFFFF)
    return _with_crc(b)


def write_vhdx(path, size: int, sectors: Optional[Dict[int, bytes]] = None, *, kind: str = "dynamic",
               block_size: int = MIB, logical: int = 512, physical: int = 4096,
               parent: Optional[Tuple[_uuid.UUID, Dict[str, str]]] = None,
               data_write_guid: Optional[_uuid.UUID] = None, states: Optional[Dict[int, int]] = None,
               unapplied: Sequence[int] = (), zeroed: Sequence[int] = (), stale_entry: bool = False) -> _uuid.UUID:
    """Write a VHDX; return its DataWriteGuid (what a child's parent_linkage names).

    ``parent``: (the parent's DataWriteGuid, extra locator keys such as
    ``relative_path``) for a differencing disk.  ``states``: payload block
    number -> BAT state for blocks holding no sectors (e.g. ZERO, UNDEFINED).
    ``unapplied``: file offsets (4 KiB pages) whose final bytes live only in
    the log (the file holds 0xEE there); ``zeroed``: pages the log zeroes
    (the file holds 0xEE there).  ``stale_entry``: also leave an older,
    superseded entry in the log whose writes must not be replayed.
    """
    sectors = sectors or {}
    diff = kind == "differencing"
    assert diff == (parent is not None)
    dwg = data_write_guid or _uuid.uuid4()
    spb = block_size // logical
    chunk_ratio = (1 << 23) * logical // block_size
    nblocks = (size + block_size - 1) // block_size
    nsb = (nblocks + chunk_ratio - 1) // chunk_ratio
    nbat = nsb * (chunk_ratio + 1) if diff else nblocks + (nblocks - 1) // chunk_ratio
    bat_len = (nbat * 8 + MIB - 1) // MIB * MIB
    bat = [0] * nbat
    data_at = 3 * MIB + bat_len
    blocks: Dict[int, Dict[int, bytes]] = {}
    for s, d in sectors.items():
        assert len(d) == logical
        blocks.setdefault(s // spb, {})[s % spb] = d
    out: Dict[int, bytes] = {}                     # file offset -> bytes
    bitmaps: Dict[int, bytearray] = {}
    for blk in range(nblocks):
        have = blocks.get(blk)
        entry = blk + blk // chunk_ratio
        if not have and kind != "fixed":
            bat[entry] = (states or {}).get(blk, NOT_PRESENT)
            continue
        buf = bytearray(block_size)
        for i, d in (have or {}).items():
            buf[i * logical:(i + 1) * logical] = d
        out[data_at] = bytes(buf)
        whole = have is not None and len(have) == spb
        state = PARTIALLY if diff and not whole else FULLY
        bat[entry] = state | ((data_at // MIB) << 20)
        data_at += block_size
        if state == PARTIALLY:
            bm = bitmaps.setdefault(blk // chunk_ratio, bytearray(MIB))
            for i in have:
                bit = (blk % chunk_ratio) * spb + i
                bm[bit // 8] |= 1 << (bit % 8)          # bit 0 of byte 0 = first sector
    for chunk, bm in sorted(bitmaps.items()):
        out[data_at] = bytes(bm)
        bat[chunk * (chunk_ratio + 1) + chunk_ratio] = SB_PRESENT | ((data_at // MIB) << 20)
        data_at += MIB
    locator = None
    if diff:
        locator = {"parent_linkage": "{%s}" % str(parent[0]).upper(), **parent[1]}
    out[2 * MIB] = metadata(size, block_size, logical, physical, leave_allocated=kind == "fixed", locator=locator)
    out[3 * MIB] = struct.pack(f"<{nbat}Q", *bat)
    out[192 * KIB] = out[256 * KIB] = region_table([(GUID_BAT, 3 * MIB, bat_len, 1),
                                                    (GUID_METADATA, 2 * MIB, MIB, 1)])
    ident = bytearray(64 * KIB)
    ident[0:8] = b"vhdxfile"
    c = _u16("vhdxref")
    ident[8:8 + len(c)] = c
    out[0] = bytes(ident)
    file_size = data_at

    image = bytearray(file_size)
    for off, data in out.items():
        image[off:off + len(data)] = data
    log_guid = _uuid.uuid4() if (unapplied or zeroed) else None
    if log_guid:
        writes = [(off, bytes(image[off:off + 4096])) for off in unapplied]
        zeros = [(off, 4096) for off in zeroed]
        for off in list(unapplied) + list(zeroed):
            image[off:off + 4096] = b"\xEE" * 4096
        log = bytearray(MIB)
        pos = 0
        if stale_entry:  # an old sequence: its writes were applied long ago and must not be replayed
            old = log_entry(5, 0, log_guid, [(off, b"\xBB" * 4096) for off in unapplied], [], file_size, file_size)
            log[pos:pos + len(old)] = old
            pos += len(old)
        half = len(writes) // 2
        first = log_entry(41, pos, log_guid, writes[:half], zeros, file_size, file_size)
        second = log_entry(42, pos, log_guid, writes[half:], [], file_size, file_size)
        log[pos:pos + len(first)] = first
        log[pos + len(first):pos + len(first) + len(second)] = second
        image[MIB:2 * MIB] = log
    image[64 * KIB:68 * KIB] = header(1, dwg, log_guid)
    image[128 * KIB:132 * KIB] = header(2, dwg, log_guid)
    with open(path, "wb") as f:
        f.write(image)
    return dwg


def expected_raw(size: int, sectors: Dict[int, bytes], logical: int = 512,
                 parent: Optional[bytes] = None) -> bytes:
    """What a reader must return: the sectors over the parent's content (or zeros)."""
    buf = bytearray(parent[:size].ljust(size, b"\0") if parent is not None else bytes(size))
    for s, d in sectors.items():
        buf[s * logical:(s + 1) * logical] = d
    return bytes(buf)
