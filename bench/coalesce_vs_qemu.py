#!/usr/bin/env python3
"""Coalesce of a depth-3 chain, side by side with qemu-img and libvhdi.

Input: a 2 GiB (--size) chain built with vhdkit: a dynamic base with ~20% of
its 2 MiB blocks written whole, and two differencing children with ~20% of
their blocks touched each, half of each touched block's 64 KiB runs written
(so reads interleave layers inside blocks, and upper layers hide lower
data).  Every write also goes into a plain raw file, the reference content.

Jobs (alternating order per round; medians of --rounds):
  vhdkit coalesce LEAF -o out.vhd            (flatten the chain, dynamic)
  qemu-img convert -f raw -O vpc -o subformat=dynamic RAW out.vhd
                                             (the same output from a raw file)
  qemu-img convert ... && sync OUT           (the same, made durable as vhdkit's is)
  pyvhdi read loop over the chain            (libvhdi reading the chain)
  vhdkit read loop over the chain            (vhdkit.open(leaf).readinto)

Reports wall time, ratio to qemu-img, peak RSS (ru_maxrss of the child), and
vhdkit's bytes read from the layers / bytes the output needs.  Outputs are
verified with `qemu-img compare` against the raw reference once (warm-up).

Usage: bench/coalesce_vs_qemu.sh [--dir DIR] [--size 2G] [--rounds 5] [--out NAME.json]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
BLOCK = 2 << 20
RUN = 64 << 10

PYVHDI_LOOP = r"""
import sys, pyvhdi
files = []
for p in sys.argv[1:]:
    f = pyvhdi.file(); f.open(p); files.append(f)
for i in range(len(files) - 2, -1, -1):
    files[i].set_parent(files[i + 1])
leaf = files[0]
size, off, step = leaf.get_media_size(), 0, 4 << 20
while off < size:
    n = min(step, size - off)
    leaf.read_buffer_at_offset(n, off)
    off += n
"""

VHDKIT_LOOP = r"""
import sys, vhdkit
buf = bytearray(4 << 20)
with vhdkit.open(sys.argv[1]) as f:
    while f.readinto(buf):
        pass
"""


def build(d: Path, size: int, seed: int = 1) -> list:
    import vhdkit
    from vhdkit.vhd import chain, write
    rng = random.Random(seed)
    nblk = size // BLOCK
    paths = [d / "base.vhd", d / "mid.vhd", d / "leaf.vhd"]
    raw_path = d / "content.raw"
    write.create(paths[0], size, block_size=BLOCK)
    pool = rng.randbytes(BLOCK + 4096)
    with open(raw_path, "wb") as raw:
        raw.truncate(size)
        for li, p in enumerate(paths):
            if li:
                chain.snapshot(paths[li - 1], p)
            blocks = rng.sample(range(nblk), nblk // 5)
            with vhdkit.open(p, "r+") as f:
                for b in blocks:
                    k = rng.randrange(4096)
                    if li == 0:
                        runs = [(0, BLOCK)]
                    else:
                        runs = [(r * RUN, RUN) for r in range(BLOCK // RUN) if rng.random() < 0.5]
                    for off, n in runs:
                        data = pool[k + off:k + off + n]
                        f.pwrite(data, b * BLOCK + off)
                        raw.seek(b * BLOCK + off)
                        raw.write(data)
    return paths + [raw_path]


def run(cmd, env, capture=False):
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE if capture else subprocess.DEVNULL)
    out = p.stdout.read() if capture else b""
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    if status != 0:
        raise SystemExit(f"failed ({status}): {' '.join(map(str, cmd))}")
    return wall, ru.ru_maxrss / 1024.0, out, ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir under /var/tmp)")
    ap.add_argument("--size", default="2G")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", default="coalesce_vs_qemu.json", help="results file name under bench/results/")
    a = ap.parse_args()
    size = int(a.size[:-1]) << {"M": 20, "G": 30}[a.size[-1].upper()]
    d = Path(a.dir or "/var/tmp") / f"vk-coalesce-bench-{os.getpid()}"
    d.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    py = sys.executable
    try:
        t0 = time.perf_counter()
        base, mid, leaf, raw = build(d, size)
        print(f"built chain in {time.perf_counter() - t0:.1f} s: "
              + ", ".join(f"{p.name} {p.stat().st_size >> 20} MiB" for p in (base, mid, leaf)), file=sys.stderr)
        ours, theirs = d / "ours.vhd", d / "qemu.vhd"
        jobs = {
            "vhdkit coalesce -o": [py, "-m", "vhdkit", "coalesce", str(leaf), "-o", str(ours), "--json", "--force"],
            "qemu-img convert raw->vpc dynamic": ["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o",
                                                  "subformat=dynamic", str(raw), str(theirs)],
            # vhdkit fsyncs its output before the atomic rename; qemu-img does not
            "qemu-img convert + sync OUT": ["sh", "-c", f"qemu-img convert -f raw -O vpc -o subformat=dynamic "
                                                         f"'{raw}' '{theirs}' && sync '{theirs}'"],
            "pyvhdi read loop (chain)": [py, "-c", PYVHDI_LOOP, str(leaf), str(mid), str(base)],
            "vhdkit read loop (chain)": [py, "-c", VHDKIT_LOOP, str(leaf)],
        }
        # warm-up + verification
        _, _, out, _ = run(jobs["vhdkit coalesce -o"], env, capture=True)
        res = json.loads(out)
        run(jobs["qemu-img convert raw->vpc dynamic"], env)
        for o in (ours, theirs):
            subprocess.run(["qemu-img", "compare", "-f", "vpc", "-F", "raw", str(o), str(raw)], check=True,
                           stdout=subprocess.DEVNULL)
        chk = subprocess.run([py, "-m", "vhdkit", "check", str(ours)], env=env, capture_output=True, text=True)
        assert chk.returncode == 0, chk.stdout + chk.stderr
        times = {k: [] for k in jobs}
        cpu = {k: [] for k in jobs}
        rss = {k: 0.0 for k in jobs}
        names = list(jobs)
        for r in range(a.rounds):
            order = names if r % 2 == 0 else names[::-1]
            for k in order:
                for o in (ours, theirs):
                    if o.exists():
                        o.unlink()
                os.sync()   # no dirty pages of the previous run left to write back
                w, m, _, c = run(jobs[k], env)
                times[k].append(w)
                cpu[k].append(c)
                rss[k] = max(rss[k], m)
        med = {k: statistics.median(v) for k, v in times.items()}
        q = med["qemu-img convert raw->vpc dynamic"]
        rows = []
        for k in names:
            rows.append({"job": k, "median_s": round(med[k], 3), "min_s": round(min(times[k]), 3),
                         "max_s": round(max(times[k]), 3), "ratio_to_qemu": round(med[k] / q, 3),
                         "cpu_s": round(statistics.median(cpu[k]), 3),
                         "mb_s_virtual": round(size / med[k] / 1e6, 1), "peak_rss_mib": round(rss[k], 1)})
        summary = {"size": size, "rounds": a.rounds, "rows": rows,
                   "bytes_read": res["bytes_read"], "data_needed": res["data_needed"],
                   "read_ratio": res["read_ratio"], "output_file_size": res["file_size"],
                   "layer_file_sizes": {p.name: p.stat().st_size for p in (base, mid, leaf)},
                   "load_average": os.getloadavg()[0], "cpus": os.cpu_count(),
                   "note": "warm page cache; shared cores (other jobs running); medians"}
        print(f"{'job':38} {'median s':>9} {'ratio':>6} {'cpu s':>6} {'MB/s':>8} {'RSS MiB':>8}")
        for row in rows:
            print(f"{row['job']:38} {row['median_s']:9.3f} {row['ratio_to_qemu']:6.2f} {row['cpu_s']:6.2f} "
                  f"{row['mb_s_virtual']:8.1f} {row['peak_rss_mib']:8.1f}")
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"bytes read from layers {res['bytes_read']} / data needed {res['data_needed']} "
              f"= {res['read_ratio']:.5f}")
        outdir = HERE / "results"
        outdir.mkdir(exist_ok=True)
        summary["dir"] = str(Path(a.dir or "/var/tmp"))
        (outdir / a.out).write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        if not a.keep:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
