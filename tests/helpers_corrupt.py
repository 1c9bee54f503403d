"""Mutating valid VHDs into corrupt ones (for the checker and the corrupt
corpus).  Offsets follow the VHD spec; checksums can be recomputed so a
mutation reaches the logic behind the checksum gate."""
from __future__ import annotations

import struct
from pathlib import Path

from vhdref import checksum

FOOTER_LEN = 512


def load(path) -> bytearray:
    return bytearray(Path(path).read_bytes())


def header_offset(b: bytes) -> int:
    return struct.unpack(">Q", b[-512 + 16:-512 + 24])[0]


def bat_offset(b: bytes) -> int:
    return struct.unpack(">Q", b[header_offset(b) + 16:header_offset(b) + 24])[0]


def fix_footers(b: bytearray) -> None:
    """Recompute the end footer's checksum and copy it to offset 0 (dynamic)."""
    f = bytearray(b[-512:])
    struct.pack_into(">I", f, 64, checksum(bytes(f), 64))
    b[-512:] = f
    if struct.unpack(">I", f[60:64])[0] in (3, 4):
        b[0:512] = f


def fix_header(b: bytearray) -> None:
    h = header_offset(b)
    hdr = bytearray(b[h:h + 1024])
    struct.pack_into(">I", hdr, 36, checksum(bytes(hdr), 36))
    b[h:h + 1024] = hdr


def set_footer_field(b: bytearray, off: int, fmt: str, value) -> None:
    struct.pack_into(fmt, b, len(b) - 512 + off, value)
    fix_footers(b)


def set_header_field(b: bytearray, off: int, fmt: str, value) -> None:
    struct.pack_into(fmt, b, header_offset(b) + off, value)
    fix_header(b)


def set_bat(b: bytearray, index: int, value: int) -> None:
    struct.pack_into(">I", b, bat_offset(b) + 4 * index, value)


def bat_entries(b: bytes, n: int):
    o = bat_offset(b)
    return list(struct.unpack(f">{n}I", b[o:o + 4 * n]))
