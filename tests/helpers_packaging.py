"""Fixtures for the packaging tests: small VHDs (qemu-img, plus a minimal
differencing child written here from the VHD spec), hand-made tar archives in
other tools' layouts, and a CLI runner."""
from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple, Union

from conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, input: Optional[bytes] = None, env: Optional[dict] = None,
            check: bool = False) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    if env:
        e.update(env)
    p = subprocess.run([sys.executable, "-m", "vhdkit", *args], input=input, capture_output=True, env=e)
    if check and p.returncode != 0:
        raise AssertionError(f"vhdkit {' '.join(args)} failed ({p.returncode}): {p.stderr.decode()}")
    return p


def vhd_like(n: int, seed: int = 0) -> bytes:
    """Half pseudo-random, half zeros and text: compresses like a disk image."""
    import random

    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        out += rnd.randbytes(4096)
        out += bytes(2048)
        out += b"The quick brown fox jumps over the lazy dog %d\n" % len(out) * 40
    return bytes(out[:n])


def qemu_vhd(path: Path, size: str = "8M", writes: Sequence[Tuple[int, int, int]] = ()) -> Path:
    """A dynamic VHD made by qemu-img; ``writes`` = (offset, length, pattern byte)
    written through qemu-io."""
    subprocess.run([require_tool("qemu-img"), "create", "-q", "-f", "vpc", str(path), size], check=True)
    for off, length, pat in writes:
        subprocess.run([require_tool("qemu-io"), "-f", "vpc", "-c", f"write -q -P {pat} {off} {length}", str(path)],
                       check=True, capture_output=True)
    return path


def _checksum(b: bytes) -> int:
    return (~sum(b)) & 0xFFFFFFFF


def differencing_child(parent: Path, child: Path) -> Path:
    """A differencing VHD whose parent is ``parent`` and which holds no blocks
    (every block reads from the parent), following the VHD spec layout:
    footer copy, dynamic header at 512, BAT at 1536, footer at the end."""
    pf = parent.read_bytes()[-512:]
    assert pf[:8] == b"conectix"
    current_size = struct.unpack(">Q", pf[48:56])[0]
    parent_uuid = pf[68:84]
    footer = bytearray(pf)
    struct.pack_into(">Q", footer, 16, 512)  # data offset -> dynamic header
    struct.pack_into(">I", footer, 60, 4)  # disk type: differencing
    footer[68:84] = uuid.uuid4().bytes
    struct.pack_into(">I", footer, 64, 0)
    struct.pack_into(">I", footer, 64, _checksum(bytes(footer)))
    block = 2 << 20
    entries = -(-current_size // block)
    bat_bytes = -(-entries * 4 // 512) * 512
    hdr = bytearray(1024)
    hdr[0:8] = b"cxsparse"
    struct.pack_into(">QQIII", hdr, 8, 0xFFFFFFFFFFFFFFFF, 1536, 0x00010000, entries, block)
    hdr[40:56] = parent_uuid
    struct.pack_into(">I", hdr, 56, struct.unpack(">I", pf[24:28])[0])  # parent timestamp
    name = parent.name.encode("utf-16-be")
    hdr[64:64 + len(name)] = name
    struct.pack_into(">I", hdr, 36, _checksum(bytes(hdr)))
    with open(child, "wb") as f:
        f.write(footer)
        f.write(hdr)
        f.write(b"\xff" * bat_bytes)
        f.write(footer)
    return child


Member = Union[Tuple[str, bytes], tarfile.TarInfo, Tuple[tarfile.TarInfo, bytes]]


def make_tar(path: Path, members: Iterable[Member], *, gz: bool = False, fmt=tarfile.USTAR_FORMAT) -> Path:
    """A tar archive with exactly ``members`` in order ((name, bytes) or TarInfo)."""
    with tarfile.open(path, "w:gz" if gz else "w", format=fmt) as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            elif isinstance(m[0], tarfile.TarInfo):
                ti, data = m  # type: ignore[misc]
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
            else:
                name, data = m  # type: ignore[misc]
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
    return path


OVF_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xmlns="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References>
{files}
  </References>
  <DiskSection>
    <Info>disks</Info>
{disks}
  </DiskSection>
  <VirtualSystem ovf:id="{name}">
    <Info>vm</Info>
    <VirtualHardwareSection><Info>hw</Info></VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def hand_ovf(name: str, disks: Sequence[dict], format_uri: str) -> bytes:
    """A descriptor as another tool would write it (default namespace, own ids)."""
    files = "\n".join(
        f'    <File ovf:href="{d["href"]}" ovf:id="f{i}" ovf:size="{d["size"]}"'
        + (f' ovf:compression="{d["compression"]}"' if d.get("compression") else "") + "/>"
        for i, d in enumerate(disks))
    dsk = "\n".join(
        f'    <Disk ovf:capacity="{d["capacity"]}" ovf:diskId="d{i}" ovf:fileRef="f{i}" ovf:format="{format_uri}"/>'
        for i, d in enumerate(disks))
    return OVF_TEMPLATE.format(files=files, disks=dsk, name=name).encode()
