"""Helpers for the reader's tests: peers (qemu-img, vhdiinfo, pyvhdi) and
random disk contents.  Usable by other test modules too."""
from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

from conftest import SAMPLES as SAMPLES_DIR, require_tool
from shared import file_digest, peer_env

SAMPLES_README = SAMPLES_DIR / "README.md"


def sample_table(readme: Path) -> Dict[str, dict]:
    """stem -> {"type", "size", "sha256"} parsed from the samples README table."""
    out = {}
    for line in readme.read_text().splitlines():
        m = re.match(r"\|\s*([\w.-]+)\.vhd\.gz\s*\|.*\|\s*(fixed|dynamic|differencing)\b.*\|\s*(\d+)\s*\|\s*([0-9a-f]{64})\s*\|",
                     line)
        if m:
            out[m.group(1)] = {"type": m.group(2), "size": int(m.group(3)), "sha256": m.group(4)}
    return out


def run_peer(args, **kw):
    """subprocess.run for a peer tool (check=True, output captured)."""
    kw.setdefault("check", True)
    kw.setdefault("capture_output", True)
    return subprocess.run([str(a) for a in args], env=peer_env(), **kw)


def stream_sha256(stream, bufsize: int = 8 << 20) -> str:
    h = hashlib.sha256()
    buf = bytearray(bufsize)
    mv = memoryview(buf)
    while True:
        n = stream.readinto(buf)
        if not n:
            break
        h.update(mv[:n])
    return h.hexdigest()


def file_sha256(path) -> str:
    return file_digest(path, "sha256")


def qemu_raw(path, out, fmt: str = "vpc") -> Path:
    """`qemu-img convert -f vpc -O raw`: the peer's reading of the disk."""
    run_peer([require_tool("qemu-img"), "convert", "-f", fmt, "-O", "raw", path, out])
    return Path(out)


def qemu_info(path) -> dict:
    r = run_peer([require_tool("qemu-img"), "info", "--output=json", "-f", "vpc", path], text=True)
    return json.loads(r.stdout)


def vhdiinfo(path) -> dict:
    """Parse `vhdiinfo` output into {"type", "size", "uuid", "parent_uuid"}."""
    r = run_peer([require_tool("vhdiinfo"), path], text=True)
    d = {}
    for line in r.stdout.splitlines():
        if ":" not in line:
            continue
        k, v = (s.strip() for s in line.split(":", 1))
        if k == "Disk type":
            d["type"] = {"Fixed": "fixed", "Dynamic": "dynamic", "Differential": "differencing"}.get(v, v)
        elif k == "Media size":
            d["size"] = int(re.search(r"\((\d+) bytes\)", v).group(1))
        elif k == "Identifier":
            d["uuid"] = v
        elif k == "Parent identifier":
            d["parent_uuid"] = v
    return d


def pyvhdi_read(chain: List[str], offset: int, length: int) -> bytes:
    """Read through libvhdi-python with parents attached explicitly (leaf first)."""
    import pyvhdi

    files = []
    for p in chain:
        f = pyvhdi.file()
        f.open(str(p))
        files.append(f)
    for i in range(len(files) - 2, -1, -1):
        files[i].set_parent(files[i + 1])
    try:
        return files[0].read_buffer_at_offset(length, offset)
    finally:
        for f in files:
            f.close()


def random_raw(path, size: int, rng: random.Random, density: float = 0.3, granule: int = 64 << 10) -> bytes:
    """A sparse raw file: granules of random data with probability `density`."""
    data = bytearray(size)
    for off in range(0, size, granule):
        if rng.random() < density:
            n = min(granule, size - off)
            data[off:off + n] = rng.randbytes(n)
    Path(path).write_bytes(bytes(data))
    return bytes(data)


def random_sectors(n_sectors: int, rng: random.Random, density: float, whole_bytes: bool = False) -> Dict[int, bytes]:
    """Random {sector: data}; whole_bytes: runs of 8 aligned sectors (4 KiB writes)."""
    out = {}
    if whole_bytes:
        for g in range(0, n_sectors, 8):
            if rng.random() < density:
                for s in range(g, min(g + 8, n_sectors)):
                    out[s] = rng.randbytes(512)
    else:
        for s in range(n_sectors):
            if rng.random() < density:
                out[s] = rng.randbytes(512)
    return out
