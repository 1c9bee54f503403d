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


# -- registry (issue 6) ----------------------------------------------------------------------

QUERY = {"tag": ["a", "b"], "visibility": "shared", "member_status": "accepted", "sort": "name:asc", "limit": "25"}
PROBE = "acctprobe"


def registry_populate(home: str, n: int, seed: int = 6) -> int:
    """N images over max(N/100, 10) accounts through the public API; 10% shared, each
    shared image with 1-3 members.  The probe account (whose queries are timed) is a
    member of the first 60 shared images whatever N is and accepts 80% of them, so
    the answer to its query is the same size at 1k and at 100k images: a query that
    uses indexes costs the same, a scan grows with N.  Tags a and b each on 60% of images."""
    import json as _json
    import numpy as np
    from vhdkit.registry import Registry
    from vhdkit.registry.rbac import Caller
    rng = np.random.default_rng(seed)
    reg = Registry(home)
    n_acct = max(n // 100, 10)
    accts = [Caller.parse(f"acct{i:05d}", "admin") for i in range(n_acct)]
    probe = Caller.parse(PROBE, "admin")
    shared_ids = []
    n_probe = 0
    for i in range(n):
        owner = accts[i % n_acct]
        tags = [t for t, p in (("a", 0.6), ("b", 0.6)) if rng.random() < p] + [f"t{rng.integers(100)}"]
        vis = "shared" if rng.random() < 0.10 else ("public" if rng.random() < 0.02 else "private")
        maker = Caller.service(owner.account) if vis == "public" else owner
        img = reg.create_image(maker, name=f"img-{rng.integers(1 << 40):010x}", visibility=vis, tags=tags,
                               disk_format="vhd", container_format="ova", owner=owner.account)
        if vis == "shared":
            for m in rng.choice(n_acct, rng.integers(1, 4), replace=False):
                if accts[m].account != owner.account:
                    reg.add_member(owner, img.id, accts[m].account)
            if n_probe < 60:
                n_probe += 1
                reg.add_member(owner, img.id, PROBE)
                if rng.random() < 0.8:
                    reg.update_member(probe, img.id, PROBE, "accepted")
                    shared_ids.append(img.id)
    with open(os.path.join(home, "bench.json"), "w") as f:
        _json.dump({"images": n, "accounts": n_acct, "probe_visible": shared_ids[:100]}, f)
    return 0


def registry_time(home: str, op: str, repeat: int, out: str) -> int:
    """Median seconds of one list (QUERY, as the probe account) or show-by-id."""
    import json as _json
    from vhdkit.registry import Registry
    from vhdkit.registry.rbac import Caller
    reg = Registry(home, cleanup=False)
    probe = Caller.parse(PROBE, "admin")
    ids = _json.load(open(os.path.join(home, "bench.json")))["probe_visible"]
    if op == "list":
        def once(i: int):
            return reg.list_images(probe, QUERY)
    else:
        def once(i: int):
            return reg.show_image(probe, ids[i % len(ids)])
    once(0)
    _time_calls(once, repeat, out, page=len(reg.list_images(probe, QUERY).images) if op == "list" else 1)
    return 0


def _time_calls(once, repeat: int, out: str, **extra) -> None:
    """Call once(i) up to ``repeat`` times (at most ~3 s, at least 5 calls); write the median to ``out``."""
    import json as _json
    import statistics
    import time
    times = []
    budget = time.perf_counter() + 3.0
    for i in range(repeat):
        t0 = time.perf_counter()
        once(i)
        times.append(time.perf_counter() - t0)
        if i >= 4 and t0 > budget:
            break
    with open(out, "w") as f:
        _json.dump({"seconds": statistics.median(times), "min": min(times), "n": len(times), **extra}, f)


def registry_upload(home: str, path: str) -> int:
    from vhdkit.registry import Registry
    from vhdkit.registry.rbac import Caller
    reg = Registry(home, cleanup=False)
    c = Caller.parse("acctup", "admin")
    img = reg.create_image(c, name="bench-upload", disk_format="raw", container_format="bare")
    reg.upload_file(c, img.id, path)
    return 0


def registry_download(home: str, image_id: str, out: str) -> int:
    """Registry.download of an image into a new file (as cp writes its copy)."""
    from vhdkit.registry import Registry
    from vhdkit.registry.rbac import Caller
    reg = Registry(home)
    with open(out, "wb") as f:
        reg.download(Caller.parse("acctup", "admin"), image_id, f)
    reg.close()
    return 0


def api_time(op: str, path: str, repeat: int, out: str) -> int:
    """Median seconds of vhdkit.vhd.check(path) / info(path) called in process."""
    from vhdkit import vhd
    fn = {"check": vhd.check, "info": vhd.info}[op]
    r = fn(path)
    if op == "check" and not r.ok:
        raise SystemExit(f"check found problems: {r.to_dict()}")
    _time_calls(lambda i: fn(path), repeat, out)
    return 0


EXTRA = {
    "api-time": lambda a: api_time(a[0], a[1], int(a[2]), a[3]),
    "registry-populate": lambda a: registry_populate(a[0], int(a[1])),
    "registry-time": lambda a: registry_time(a[0], a[1], int(a[2]), a[3]),
    "registry-upload": lambda a: registry_upload(a[0], a[1]),
    "registry-download": lambda a: registry_download(a[0], a[1], a[2]),
}


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
    if cmd in EXTRA:
        return EXTRA[cmd](args)
    raise SystemExit(f"unknown tool {cmd!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
