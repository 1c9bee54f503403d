#!/usr/bin/env python3
"""Generate the seed corpora of the fuzz targets (fuzz/corpus/<target>/).

Seeds are made at run time, never committed: small VHDs from the pure-Python
reference writer (fixtures/vhdref.py: fixed, dynamic and differencing, block
sizes 512 B .. 64 KiB so several blocks fit in a few KiB), images made by
qemu-img and by vhdkit itself (when available), the real samples in
../shared/samples cut down to their metadata (footer copy, header, BAT
prefix, footer), and chains joined with the separator fuzz_chain.c splits
on.  Every seed is at most MAX_LEN bytes (libFuzzer's -max_len).

    python3 fuzz/make_seeds.py fuzz/corpus
"""
import gzip
import hashlib
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "fixtures"))
sys.path.insert(0, ROOT)
import vhdref  # noqa: E402

MAX_LEN = 256 * 1024
SEP = b"VHDKIT-FUZZ-SPLIT"
TARGETS = ["fuzz_open", "fuzz_check", "fuzz_chain", "fuzz_convert", "fuzz_modify", "fuzz_vhdx"]
SAMPLES = os.path.join(ROOT, "..", "shared", "samples")


def _sectors(rng, nsec, density):
    return {s: bytes(rng.randrange(256) for _ in range(16)) * 32
            for s in range(nsec) if rng.random() < density}


def ref_images(tmp, rng):
    """Small fixed/dynamic images from the reference writer."""
    out = []
    for i, (kind, size, bs) in enumerate([
            ("fixed", 8192, 0), ("fixed", 512, 0), ("dynamic", 16384, 512), ("dynamic", 65536, 4096),
            ("dynamic", 3 * 4096 + 1024, 4096), ("dynamic", 131072, 65536), ("dynamic", 0, 512)]):
        p = os.path.join(tmp, f"ref{i}.vhd")
        kw = {"block_size": bs} if bs else {}
        vhdref.write_vhd(p, size, _sectors(rng, size // 512, 0.4), kind=kind,
                         creator=[b"vkrf", b"vpc ", b"qemu", b"win "][i % 4], **kw)
        out.append(p)
    return out


def ref_chains(tmp, rng):
    """child + SEP + parent (+ SEP + grandparent) as fuzz_chain.c expects:
    the locators name parent.vhd / grand.vhd next to the child."""
    seeds = []
    for i, (bs, depth) in enumerate([(512, 1), (4096, 1), (4096, 2), (1024, 2)]):
        d = os.path.join(tmp, f"chain{i}")
        os.mkdir(d)
        size = 8 * bs
        grand = os.path.join(d, "grand.vhd")
        parent = os.path.join(d, "parent.vhd")
        child = os.path.join(d, "a.vhd")
        files = []
        if depth == 2:
            vhdref.write_vhd(grand, size, _sectors(rng, size // 512, 0.5), kind="dynamic", block_size=bs)
            vhdref.write_vhd(parent, size, _sectors(rng, size // 512, 0.3), kind="differencing",
                             block_size=bs, parent=grand, locators=[("W2ru", ".\\grand.vhd")])
            files = [child, parent, grand]
        else:
            vhdref.write_vhd(parent, size, _sectors(rng, size // 512, 0.5),
                             kind="dynamic" if i % 2 == 0 else "fixed", block_size=bs)
            files = [child, parent]
        locs = [("W2ru", ".\\parent.vhd"), ("MacX", "file://./parent.vhd"), ("W2ku", "parent.vhd")][: 1 + i % 3]
        vhdref.write_vhd(child, size, _sectors(rng, size // 512, 0.3), kind="differencing", block_size=bs,
                         parent=parent, locators=locs)
        blob = SEP.join(open(f, "rb").read() for f in files)
        seeds.append(blob)
    return seeds


def qemu_images(tmp):
    out = []
    if not shutil.which("qemu-img"):
        return out
    for i, (opts, size) in enumerate([(["-o", "subformat=dynamic"], "64K"), (["-o", "subformat=fixed"], "16K"),
                                      (["-o", "subformat=dynamic,force_size=on"], "100K")]):
        p = os.path.join(tmp, f"qemu{i}.vhd")
        r = subprocess.run(["qemu-img", "create", "-q", "-f", "vpc", *opts, p, size], capture_output=True)
        if r.returncode == 0:
            out.append(p)
    return out


def vhdkit_images(tmp):
    out = []
    try:
        from vhdkit.vhd import write as vw
    except Exception:  # the native core is not built: skip these seeds
        return out
    raw = os.path.join(tmp, "data.raw")
    with open(raw, "wb") as fh:
        fh.write(os.urandom(4096) + bytes(8192) + os.urandom(2048))
    for i, kind in enumerate(["fixed", "dynamic"]):
        p = os.path.join(tmp, f"vk{i}.vhd")
        try:
            vw.convert(raw, p, type=kind, block_size=512 << 10) if kind == "dynamic" else vw.convert(raw, p, type=kind)
        except TypeError:
            try:
                vw.convert(raw, p)
            except Exception:
                continue
        except Exception:
            continue
        if os.path.getsize(p) <= MAX_LEN:
            out.append(p)
        else:
            out.append(cut_down(open(p, "rb").read()))
    return out


def cut_down(data: bytes) -> bytes:
    """Keep a real image's metadata: the first 64 KiB (footer copy, dynamic
    header, BAT prefix; BAT entries pointing past the cut made unused), then
    the footer."""
    if len(data) <= MAX_LEN:
        return data
    head = bytearray(data[:64 * 1024])
    footer = data[-512:]
    if head[:8] == b"conectix" and head[512:520] == b"cxsparse":
        table = struct.unpack(">Q", head[512 + 16:512 + 24])[0]
        n = struct.unpack(">I", head[512 + 28:512 + 32])[0]
        for i in range(n):
            o = table + 4 * i
            if o + 4 > len(head):
                break
            if struct.unpack(">I", head[o:o + 4])[0] != 0xFFFFFFFF:
                head[o:o + 4] = b"\xff\xff\xff\xff"
    return bytes(head) + footer


def samples():
    out = []
    if not os.path.isdir(SAMPLES):
        return out
    for name in sorted(os.listdir(SAMPLES)):
        if name.endswith(".vhd.gz"):
            with gzip.open(os.path.join(SAMPLES, name)) as fh:
                out.append(cut_down(fh.read()))
    return out


def vhdx_patches(path: str) -> bytes:
    """fuzz_vhdx's input form of a file: its non-zero KiB runs as patches
    (u16 offset in KiB, u16 length, bytes)."""
    data = open(path, "rb").read()
    out = bytearray()
    k = 0
    while k * 1024 < len(data) and k < 0x10000:
        if not any(data[k * 1024:(k + 1) * 1024]):
            k += 1
            continue
        start = k
        while k * 1024 < len(data) and any(data[k * 1024:(k + 1) * 1024]) and k - start < 63:
            k += 1
        chunk = data[start * 1024:k * 1024]
        out += struct.pack("<HH", start, len(chunk)) + chunk
    return bytes(out)


def vhdx_seeds(tmp, rng):
    """VHDX seeds for fuzz_vhdx: vhdxref dynamic, 4 KiB-sector, a log with
    unapplied entries, a differencing leaf + parent; qemu-img's if present."""
    import uuid
    import vhdxref
    size = 3 << 20
    secs = {s: bytes([s & 0xFF]) * 512 for s in range(0, 6000, 97)}
    seeds = []
    p = os.path.join(tmp, "parent.vhdx")
    g = vhdxref.write_vhdx(p, size, secs)
    seeds.append(vhdx_patches(p))
    c = os.path.join(tmp, "a.vhdx")
    vhdxref.write_vhdx(c, size, {s: b"c" * 512 for s in range(3, 300, 7)}, kind="differencing",
                       parent=(g, {"relative_path": "parent.vhdx"}))
    seeds.append(vhdx_patches(c) + SEP + vhdx_patches(p))
    vhdxref.write_vhdx(c, size, secs, unapplied=[3 << 20, (2 << 20) + 65536], zeroed=[(4 << 20) + 8192],
                       stale_entry=True)
    seeds.append(vhdx_patches(c))
    vhdxref.write_vhdx(c, size, {s: b"4" * 4096 for s in range(0, 700, 33)}, logical=4096)
    seeds.append(vhdx_patches(c))
    try:
        q = os.path.join(tmp, "q.vhdx")
        subprocess.run(["qemu-img", "create", "-q", "-f", "vhdx", "-o", "block_size=1M", q, "8M"], check=True)
        seeds.append(vhdx_patches(q))
    except (OSError, subprocess.CalledProcessError):
        pass
    return seeds


def main(dest: str) -> int:
    rng = random.Random(20261130)
    with tempfile.TemporaryDirectory() as tmp:
        singles = []
        for item in ref_images(tmp, rng) + qemu_images(tmp) + vhdkit_images(tmp):
            singles.append(open(item, "rb").read() if isinstance(item, str) else item)
        singles += samples()
        chains = ref_chains(tmp, rng)
        vhdx = vhdx_seeds(tmp, rng)
    singles = [s[:MAX_LEN] for s in singles]
    total = 0
    for t in TARGETS:
        d = os.path.join(dest, t)
        os.makedirs(d, exist_ok=True)
        seeds = singles + chains if t in ("fuzz_chain", "fuzz_check", "fuzz_open") else singles
        if t == "fuzz_vhdx":
            seeds = vhdx
        if t == "fuzz_chain":
            seeds = seeds + [s + SEP + s for s in singles[:4]]
        for s in seeds:
            s = s[:MAX_LEN]
            with open(os.path.join(d, "seed-" + hashlib.sha1(s).hexdigest()), "wb") as fh:
                fh.write(s)
            total += 1
    print(f"make_seeds: {total} seeds for {len(TARGETS)} targets in {dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus")))
