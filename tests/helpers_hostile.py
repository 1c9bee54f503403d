"""Helpers of the hostile-input and crash tests (tests/test_hostile_*.py,
tests/test_crash_*.py): patch fields of a VHD written by the reference writer
(fixtures/vhdref.py) with checksums recomputed, so each test damages exactly one
thing, and snapshot a directory tree to prove nothing was written outside the
target.

Footer fields (offset, struct format) and dynamic header fields follow the
VHD specification's tables; a patched field keeps every other byte.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Dict, Iterable, Tuple

import vhdref

FOOTER_FIELDS: Dict[str, Tuple[int, str]] = {
    "features": (8, ">I"), "version": (12, ">I"), "data_offset": (16, ">Q"), "timestamp": (24, ">I"),
    "creator_version": (32, ">I"), "original_size": (40, ">Q"), "current_size": (48, ">Q"),
    "cylinders": (56, ">H"), "heads": (58, ">B"), "sectors": (59, ">B"), "disk_type": (60, ">I"),
    "checksum": (64, ">I"), "saved_state": (84, ">B"),
}
HEADER_FIELDS: Dict[str, Tuple[int, str]] = {
    "data_offset": (8, ">Q"), "table_offset": (16, ">Q"), "version": (24, ">I"),
    "max_table_entries": (28, ">I"), "block_size": (32, ">I"), "checksum": (36, ">I"),
    "parent_timestamp": (56, ">I"),
}
HEADER_OFF = 512      # where the reference writer puts the dynamic header
BAT_OFF = 1536        # and the BAT


def _fix_footer(buf: bytearray, keep_checksum: bool) -> None:
    if not keep_checksum:
        struct.pack_into(">I", buf, 64, vhdref.checksum(bytes(buf), 64))


def patch_footer(path, *, both: bool = True, keep_checksum: bool = False, **fields) -> None:
    """Set footer fields (end footer, and the copy at 0 for dynamic disks
    when ``both``), recomputing the checksum unless ``keep_checksum``."""
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        offs = [size - 512]
        fh.seek(0)
        if both and fh.read(8) == b"conectix" and size >= 1536:
            offs.append(0)
        for off in offs:
            fh.seek(off)
            buf = bytearray(fh.read(512))
            for name, value in fields.items():
                o, fmt = FOOTER_FIELDS[name]
                struct.pack_into(fmt, buf, o, value)
            _fix_footer(buf, keep_checksum or "checksum" in fields)
            fh.seek(off)
            fh.write(buf)


def patch_header(path, *, keep_checksum: bool = False, raw: Iterable[Tuple[int, bytes]] = (), **fields) -> None:
    """Set dynamic header fields (and raw byte ranges ``(offset, bytes)``
    inside the header), recomputing its checksum unless ``keep_checksum``."""
    with open(path, "r+b") as fh:
        fh.seek(HEADER_OFF)
        buf = bytearray(fh.read(1024))
        for name, value in fields.items():
            o, fmt = HEADER_FIELDS[name]
            struct.pack_into(fmt, buf, o, value)
        for o, b in raw:
            buf[o:o + len(b)] = b
        if not keep_checksum and "checksum" not in fields:
            struct.pack_into(">I", buf, 36, vhdref.checksum(bytes(buf), 36))
        fh.seek(HEADER_OFF)
        fh.write(buf)


def set_locator(path, index: int, code: bytes, data: bytes, *, data_offset=None, data_length=None,
                data_space=None) -> None:
    """Point locator ``index`` at ``data`` appended just before the footer
    (or at an explicit offset/length)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.seek(size - 512)
        footer = fh.read(512)
        if data_offset is None:
            data_offset = size - 512
            pad = (len(data) + 511) // 512 * 512
            fh.seek(data_offset)
            fh.write(data.ljust(pad, b"\0"))
            fh.write(footer)
    entry = struct.pack(">4sIIIQ", code, len(data) if data_space is None else data_space,
                        len(data) if data_length is None else data_length, 0, data_offset)
    patch_header(path, raw=[(576 + 24 * index, entry)])


def set_bat(path, index: int, value: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(BAT_OFF + 4 * index)
        fh.write(struct.pack(">I", value))


def bat(path, n: int):
    with open(path, "rb") as fh:
        fh.seek(BAT_OFF)
        return list(struct.unpack(f">{n}I", fh.read(4 * n)))


def tree_state(root) -> Dict[str, Tuple[int, float]]:
    """Every path under ``root`` with (size, mtime) for files and links:
    compare before/after to prove an operation wrote nothing outside its
    target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue
            # directories: only their existence (a temp entry made and removed
            # inside one changes its mtime, which is not a write of data)
            out[str(p.relative_to(root))] = ("dir", 0) if name in dirnames else (st.st_size, st.st_mtime_ns)
    return out
