#!/usr/bin/env python3
"""Time vhdkit's conversions side by side with their peers, alternating runs.

Input: a raw image of SIZE (default 2 GiB) whose 2 MiB blocks alternate
between random data and zeros (written as zero bytes, not holes).  Jobs:

  raw -> dynamic VHD   vs  qemu-img convert -O vpc -o subformat=dynamic
  dynamic VHD -> raw   vs  qemu-img convert -f vpc -O raw
  raw -> fixed VHD     vs  cp --sparse=always

The peers do not fsync their output, so these three run vhdkit with
--no-sync (output still complete-then-renamed); the same three again compare
vhdkit's default (written back while converting, fsynced before the rename)
with the peer followed by `sync FILE`.

Each round runs the peer then vhdkit (the order alternates between rounds),
and reports medians of wall time, the ratio ours/peer, MB/s of virtual disk
and peak RSS (ru_maxrss of the child).  Results go to bench/results/.

Usage: bench/convert_vs_qemu.sh [--dir /dev/shm] [--size 2G] [--rounds 7]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BLOCK = 2 << 20


def make_input(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        zero = bytes(BLOCK)
        for i in range(size // BLOCK):
            f.write(os.urandom(BLOCK) if i % 2 == 0 else zero)


def run(cmd, env) -> tuple:
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    if status != 0:
        raise SystemExit(f"failed ({status}): {' '.join(map(str, cmd))}")
    return wall, ru.ru_maxrss / 1024.0, ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/dev/shm")
    ap.add_argument("--size", default="2G")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--only", action="append", help="run only jobs whose name contains this (repeatable)")
    a = ap.parse_args()
    size = int(a.size[:-1]) << {"M": 20, "G": 30}[a.size[-1].upper()]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    vk = [sys.executable, "-m", "vhdkit"]
    qemu = shutil.which("qemu-img") or sys.exit("qemu-img missing")
    load0 = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="vhdkit-bench-", dir=a.dir))
    try:
        src = work / "src.raw"
        make_input(src, size)
        dyn = work / "ref.vhd"
        subprocess.run([*vk, "convert", src, dyn, "--type", "dynamic"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        out_q, out_v = work / "peer.out", work / "ours.out"
        def synced(cmd, out):
            # The peer followed by an fsync of its output (`sync FILE`), to
            # compare with vhdkit's default durable output.
            return ["sh", "-c", '"$@" && sync "$0"', str(out), *map(str, cmd)]

        q_dyn = [qemu, "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic", src, out_q]
        q_raw = [qemu, "convert", "-f", "vpc", "-O", "raw", dyn, out_q]
        cp = ["cp", "--sparse=always", src, out_q]
        v_dyn = [*vk, "convert", "-f", "raw", "-O", "vhd", src, out_v, "--type", "dynamic", "--force"]
        v_raw = [*vk, "convert", "-f", "vhd", dyn, out_v, "-O", "raw", "--force"]
        v_fix = [*vk, "convert", "-f", "raw", "-O", "vhd", src, out_v, "--type", "fixed", "--force"]
        # (job, peer description, peer command, vhdkit command).  Neither
        # qemu-img nor cp syncs its output: vhdkit --no-sync is the like-for-
        # like comparison; vhdkit's default (fsync before the rename) is
        # compared with the peer followed by `sync FILE`.
        jobs = [
            ("raw -> dynamic VHD", "qemu-img convert -O vpc -o subformat=dynamic", q_dyn, v_dyn + ["--no-sync"]),
            ("dynamic VHD -> raw", "qemu-img convert -f vpc -O raw", q_raw, v_raw + ["--no-sync"]),
            ("raw -> fixed VHD", "cp --sparse=always", cp, v_fix + ["--no-sync"]),
            ("raw -> dynamic VHD, synced", "qemu-img convert ... && sync OUT", synced(q_dyn, out_q), v_dyn),
            ("dynamic VHD -> raw, synced", "qemu-img convert ... && sync OUT", synced(q_raw, out_q), v_raw),
            ("raw -> fixed VHD, synced", "cp --sparse=always ... && sync OUT", synced(cp, out_q), v_fix),
        ]
        if a.only:
            jobs = [j for j in jobs if any(k in j[0] for k in a.only)]
        results = []
        for name, peer_desc, peer, ours in jobs:
            pw, ow, prss, orss, pcpu, ocpu = [], [], [], [], [], []
            for r in range(a.rounds):
                order = [(peer, pw, prss, pcpu), (ours, ow, orss, ocpu)]
                if r % 2:
                    order.reverse()
                for cmd, walls, rss, cpu in order:
                    for o in (out_q, out_v):
                        if o.exists():
                            o.unlink()
                    # Freeing the last output's blocks (ext4 with discard) must
                    # not be charged to the next command.
                    os.sync()
                    w, m, c = run(cmd, env)
                    walls.append(w)
                    rss.append(m)
                    cpu.append(c)
            row = {
                "job": name, "peer": peer_desc, "ours": " ".join(map(str, ours[3:])).replace(str(work) + "/", ""),
                "rounds": a.rounds,
                "peer_s": statistics.median(pw), "ours_s": statistics.median(ow),
                "ratio": statistics.median(ow) / statistics.median(pw),
                "peer_cpu_s": statistics.median(pcpu), "ours_cpu_s": statistics.median(ocpu),
                "ours_MBps": size / 1e6 / statistics.median(ow),
                "peer_rss_MiB": max(prss), "ours_rss_MiB": max(orss),
                "peer_all_s": [round(x, 3) for x in pw], "ours_all_s": [round(x, 3) for x in ow],
            }
            results.append(row)
            print(f"{name:20s} peer {row['peer_s']:.3f}s  ours {row['ours_s']:.3f}s  ratio {row['ratio']:.2f}  "
                  f"cpu {row['peer_cpu_s']:.2f}/{row['ours_cpu_s']:.2f}s  "
                  f"rss {row['peer_rss_MiB']:.0f}/{row['ours_rss_MiB']:.0f} MiB", flush=True)
        load = os.getloadavg()
        meta = {"size": size, "dir": a.dir, "loadavg_start": load0, "loadavg": load, "cpus": os.cpu_count(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "convert_vs_qemu.json").write_text(json.dumps({"meta": meta, "results": results},
                                                                           indent=2))
        lines = [f"Input: {size >> 20} MiB raw, 2 MiB blocks alternating random/zero, in {a.dir}; "
                 f"{a.rounds} alternating rounds, medians; load average {load0[0]:.1f} at the start, "
                 f"{load[0]:.1f} at the end, on {os.cpu_count()} CPUs.", "",
                 "| job | peer | vhdkit | peer s | vhdkit s | ratio | peer CPU s | vhdkit CPU s | vhdkit MB/s | peak RSS peer/vhdkit MiB |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in results:
            lines.append(f"| {r['job']} | `{r['peer']}` | `vhdkit {r['ours']}` | {r['peer_s']:.3f} | {r['ours_s']:.3f} | {r['ratio']:.2f} | "
                         f"{r['peer_cpu_s']:.2f} | {r['ours_cpu_s']:.2f} | {r['ours_MBps']:.0f} | "
                         f"{r['peer_rss_MiB']:.0f} / {r['ours_rss_MiB']:.0f} |")
        (HERE / "results" / "convert_vs_qemu.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
