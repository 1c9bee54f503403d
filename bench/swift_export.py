#!/usr/bin/env python3
"""Export of a 2 GiB image into a real local Swift, against python-swiftclient.

    python bench/swift_export.py [--size 2G] [--runs 3] [--work DIR]

Starts the Swift all-in-one (scripts/swift_aio.py) unless VHDKIT_SWIFT_AUTH_URL
is set, makes a dynamic VHD of ``--size`` (every block allocated, pseudo-random
data), imports it as an image, then, for each run, in the same process and
the same Swift, measures side by side:

- ``export``: the whole export task (``Worker.run_once``): coalesce the image
  into a fresh dynamic VHD, then stream it as 200 MiB DLO segments + manifest
  + sidecar into Swift;
- ``split``: only the upload part, ``vhdkit.pack.segments.split`` of the VHD file
  into Swift (200 MiB segments), what the task's last stage does, with the
  configured parallel segment uploads (``VHDKIT_SWIFT_PARALLEL``, default 3);
- ``split 1x``: the same with one segment at a time (``parallel=1``, the
  behaviour before parallel uploads);
- ``swift upload``: ``swift upload --segment-size 200M`` (python-swiftclient's
  own command, default 10 segment threads) of the same VHD file.

Prints and writes bench/results/swift_export.{json,md}: medians and every
run, with the load average before each run (the machine is shared).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "fixtures")]

MiB = 1 << 20
SEG = 200 * MiB


def _size(s: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(s[:-1]) * units[s[-1].upper()]) if s[-1].upper() in units else int(s)


def _read_env(path: Path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@contextlib.contextmanager
def swift_aio(work: Path):
    """A Swift all-in-one under ``work/swift`` for the block (its settings put into
    os.environ), unless VHDKIT_SWIFT_AUTH_URL already names one."""
    if os.environ.get("VHDKIT_SWIFT_AUTH_URL"):
        yield
        return
    aio = work / "swift"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "swift_aio.py"), "start", "--dir", str(aio)],
                       capture_output=True, text=True, check=True)
    os.environ.update(_read_env(Path(r.stdout.strip().splitlines()[-1])))
    try:
        yield
    finally:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "swift_aio.py"), "stop", "--dir", str(aio)],
                       capture_output=True)


def make_vhd(raw: Path, vhd: Path, size: int) -> None:
    """Pseudo-random data in every 2 MiB block (a 64 MiB random pattern, each
    copy tagged, so no two blocks are equal), converted by vhdkit to dynamic."""
    from vhdkit.vhd import convert

    pattern = bytearray(os.urandom(64 * MiB))
    with open(raw, "wb") as f:
        for off in range(0, size, len(pattern)):
            pattern[:8] = off.to_bytes(8, "little")
            f.write(pattern[: min(len(pattern), size - off)])
    convert(raw, vhd, src_format="raw", type="dynamic")
    raw.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2G")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "swift_export")
    a = ap.parse_args()
    size = _size(a.size)
    work = Path(tempfile.mkdtemp(prefix="vhdkit-swift-bench-", dir=a.work))
    try:
        with swift_aio(work):
            _bench(a, size, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bench(a, size: int, work: Path) -> None:
    from shared import peer_env, put_file
    from vhdkit.pack import segments
    from vhdkit.tasks.pipeline import PipelineConfig, Worker
    from vhdkit.registry import Caller, Registry
    from vhdkit.store.swift import SwiftConfig, SwiftStore

    vhd = work / "disk.vhd"
    t0 = time.monotonic()
    make_vhd(work / "disk.raw", vhd, size)
    fsize = vhd.stat().st_size
    print(f"made {vhd} ({fsize} bytes) in {time.monotonic() - t0:.1f} s", file=sys.stderr)

    home = work / "home"
    reg, cfg = Registry(home), PipelineConfig(home=home, segment_size=SEG)
    caller = Caller.parse("bench", "cloudImages:admin")
    st = cfg.store(caller.account)
    assert isinstance(st, SwiftStore), "VHDKIT_STORE does not select Swift"
    put_file(st, "images", "disk.vhd", vhd, also=["exports", "split", "peer"])
    reg.create_task(caller, "import", {"import_from": "images/disk.vhd", "image_properties": {"name": "bench"}})
    t = Worker(reg, cfg).run_once()
    assert t.status == "success", t.message
    image_id = t.result["image_id"]
    print(f"imported {image_id}", file=sys.stderr)

    sc = SwiftStore(SwiftConfig.from_env(), caller.account)
    seq_cfg = SwiftConfig.from_env()
    seq_cfg.parallel = 1
    seq = SwiftStore(seq_cfg, caller.account)
    url, token = sc.storage_url, sc._connection().token

    runs = []
    for i in range(a.runs):
        row = {"load_before": os.getloadavg()[0]}
        reg.create_task(caller, "export", {"image_uuid": image_id, "receiving_swift_container": "exports"})
        t0 = time.monotonic()
        t = Worker(reg, cfg).run_once()
        row["export_s"] = time.monotonic() - t0
        assert t.status == "success", t.message
        row["export_bytes"] = t.result["size"]

        t0 = time.monotonic()
        with open(vhd, "rb") as f:
            man = segments.split(st, "split", "disk.vhd", f, segment_size=SEG, total=fsize)
        row["split_s"] = time.monotonic() - t0
        assert man.size == fsize

        t0 = time.monotonic()
        with open(vhd, "rb") as f:
            man = segments.split(seq, "split", "disk.vhd", f, segment_size=SEG, total=fsize)
        row["split_seq_s"] = time.monotonic() - t0
        assert man.size == fsize

        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "swiftclient.shell", "--os-storage-url", url, "--os-auth-token",
                            token, "upload", "--segment-size", "200M", "--object-name", "disk.vhd", "peer",
                            str(vhd)], capture_output=True, text=True, env=peer_env(), cwd=str(work))
        row["swift_upload_s"] = time.monotonic() - t0
        assert r.returncode == 0, r.stderr
        runs.append(row)
        print(json.dumps(row), file=sys.stderr)

    def med(k):
        return statistics.median(r[k] for r in runs)

    res = {
        "size": size, "vhd_file_bytes": fsize, "segment_size": SEG, "runs": runs,
        "median_s": {k: med(k) for k in ("export_s", "split_s", "split_seq_s", "swift_upload_s")},
        "median_MBps": {k: fsize / med(k) / 1e6 for k in ("export_s", "split_s", "split_seq_s", "swift_upload_s")},
        "cpus": os.cpu_count(),
        # peak RSS of this whole process (making the VHD holds a 64 MiB pattern)
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    lines = [
        f"# Export of a {size / (1 << 30):g} GiB image into a local Swift all-in-one",
        "",
        f"VHD file {fsize} bytes, 200 MiB segments, {a.runs} runs, medians; {os.cpu_count()} cores shared "
        "with other jobs (load average before each run listed).",
        "",
        "| what | median wall s | MB/s |",
        "|---|---|---|",
        f"| vhdkit export task (coalesce + split into Swift) | {med('export_s'):.1f} | "
        f"{res['median_MBps']['export_s']:.0f} |",
        f"| vhdkit segments.split of the VHD file into Swift, {st.config.parallel} segments in flight | "
        f"{med('split_s'):.1f} | {res['median_MBps']['split_s']:.0f} |",
        f"| the same, one segment at a time | {med('split_seq_s'):.1f} | "
        f"{res['median_MBps']['split_seq_s']:.0f} |",
        f"| swift upload --segment-size 200M (python-swiftclient) | {med('swift_upload_s'):.1f} | "
        f"{res['median_MBps']['swift_upload_s']:.0f} |",
        "",
        "| run | load before | export s | split s | split 1x s | swift upload s |",
        "|---|---|---|---|---|---|",
    ] + [f"| {i + 1} | {r['load_before']:.1f} | {r['export_s']:.1f} | {r['split_s']:.1f} | "
         f"{r['split_seq_s']:.1f} | {r['swift_upload_s']:.1f} |" for i, r in enumerate(runs)]
    lines += ["", f"Peak RSS of the benchmark process (all runs): {res['max_rss_mib']:.0f} MiB."]
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
