"""Small child programs the harness times (run as ``python -m bench.tools NAME ...``).

* ``pyvhdi-read LEAF [PARENT ...]``   – libvhdi-python read loop over a chain
  (leaf first, then its parents down to the base), 1 MiB reads, data discarded.
* ``pyvhdi-raw OUT LEAF [PARENT ...]`` – the same, writing a sparse raw file
  (all-zero MiBs are skipped with a seek), the "libvhdi read + write raw" peer.
* ``vhdkit-read [--md5] LEAF``        – vhdkit.vhd.open() read loop (readinto a
  reused 1 MiB buffer), data discarded (or md5 printed, to verify).
* ``md5 FILE``                         – md5 of a file (used only to verify outputs).
"""
from __future__ import annotations

import hashlib
import os
import sys

CHUNK = 1 << 20


def _open_chain(paths: list[str]):
    import pyvhdi
    files = []
    for p in paths:
        f = pyvhdi.file()
        f.open(p)
        files.append(f)
    for child, parent in zip(files, files[1:]):
        child.set_parent(parent)
    return files


def pyvhdi_read(paths: list[str]) -> int:
    files = _open_chain(paths)
    leaf = files[0]
    size = leaf.get_media_size()
    pos = 0
    while pos < size:
        n = min(CHUNK, size - pos)
        data = leaf.read_buffer_at_offset(n, pos)
        if len(data) != n:
            raise SystemExit(f"short read at {pos}")
        pos += n
    return 0


def pyvhdi_raw(out: str, paths: list[str]) -> int:
    files = _open_chain(paths)
    leaf = files[0]
    size = leaf.get_media_size()
    zero = bytes(CHUNK)
    with open(out, "wb") as f:
        pos = 0
        while pos < size:
            n = min(CHUNK, size - pos)
            data = leaf.read_buffer_at_offset(n, pos)
            if data != zero[:n]:
                os.pwrite(f.fileno(), data, pos)
            pos += n
        f.truncate(size)
    return 0


def vhdkit_read(path: str, want_md5: bool = False) -> int:
    from vhdkit.vhd import open as vopen
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    h = hashlib.md5() if want_md5 else None
    with vopen(path) as s:
        while True:
            n = s.readinto(buf)
            if not n:
                break
            if h is not None:
                h.update(view[:n])
    if h is not None:
        print(h.hexdigest())
    return 0


def md5(path: str) -> int:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while True:
            b = f.read(CHUNK * 4)
            if not b:
                break
            h.update(b)
    print(h.hexdigest())
    return 0


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "pyvhdi-read":
        return pyvhdi_read(args)
    if cmd == "pyvhdi-raw":
        return pyvhdi_raw(args[0], args[1:])
    if cmd == "vhdkit-read":
        return vhdkit_read(args[-1], want_md5="--md5" in args)
    if cmd == "md5":
        return md5(args[0])
    raise SystemExit(f"unknown tool {cmd!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
