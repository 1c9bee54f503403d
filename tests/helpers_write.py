"""Helpers for the writer's tests: an independent look at what we wrote
(footer copies, BAT) following the spec, and small raw inputs."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

SECTOR = 512
UNUSED = 0xFFFFFFFF


def footer_ok(buf: bytes) -> bool:
    """Cookie and checksum of a 512-byte footer, computed here from the spec."""
    if len(buf) != 512 or buf[:8] != b"conectix":
        return False
    stored = struct.unpack(">I", buf[64:68])[0]
    return stored == (~(sum(buf[:64]) + sum(buf[68:]))) & 0xFFFFFFFF


def footers(path) -> Tuple[bytes, bytes]:
    """(copy at offset 0, end footer) raw bytes."""
    with open(path, "rb") as f:
        head = f.read(512)
        f.seek(-512, os.SEEK_END)
        return head, f.read(512)


def footer_fields(buf: bytes) -> dict:
    return {
        "creator": buf[28:32],
        "current_size": struct.unpack(">Q", buf[48:56])[0],
        "geometry": struct.unpack(">HBB", buf[56:60]),
        "disk_type": struct.unpack(">I", buf[60:64])[0],
        "uuid": buf[68:84],
        "timestamp": struct.unpack(">I", buf[24:28])[0],
        "data_offset": struct.unpack(">Q", buf[16:24])[0],
    }


def dynamic_layout(path) -> Tuple[int, List[int]]:
    """(block size, BAT entries as sector offsets) of a dynamic VHD, decoded
    literally from the header the footer points to."""
    with open(path, "rb") as f:
        f.seek(-512, os.SEEK_END)
        ft = f.read(512)
        data_offset = struct.unpack(">Q", ft[16:24])[0]
        f.seek(data_offset)
        hdr = f.read(1024)
        assert hdr[:8] == b"cxsparse"
        stored = struct.unpack(">I", hdr[36:40])[0]
        assert stored == (~(sum(hdr[:36]) + sum(hdr[40:]))) & 0xFFFFFFFF, "header checksum"
        table, _ver, entries, block_size = struct.unpack(">QIII", hdr[16:36])
        f.seek(table)
        bat = list(struct.unpack(f">{entries}I", f.read(4 * entries)))
    return block_size, bat


def block_pattern_raw(path, size: int, block: int, pattern: List[bool], seed: int = 0) -> bytes:
    """A raw file whose block i is random when pattern[i] else zeros (written
    as explicit zero bytes, not holes, so zero detection is what skips them)."""
    import random
    rng = random.Random(seed)
    out = bytearray(size)
    for i, filled in enumerate(pattern):
        a = i * block
        if filled and a < size:
            n = min(block, size - a)
            out[a:a + n] = rng.randbytes(n)
    Path(path).write_bytes(bytes(out))
    return bytes(out)


def vhdkit_cli(*args, input: Optional[bytes] = None, env: Optional[Dict[str, str]] = None,
               check: bool = False) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    if env:
        e.update(env)
    root = str(Path(__file__).resolve().parent.parent)
    e["PYTHONPATH"] = root + os.pathsep + e.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "vhdkit", *map(str, args)], input=input,
                          capture_output=True, env=e, check=check, cwd=root)
