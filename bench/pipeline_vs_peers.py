#!/usr/bin/env python3
"""Issue 8 performance: the import/export pipeline side by side with its peers.

    python bench/pipeline_vs_peers.py [--size-gib 2] [--runs 3] [--json OUT]

Makes a dynamic VHD (``qemu-img convert -O vpc -o subformat=dynamic`` from a
sparse raw file in which every other 2 MiB block holds random data), puts it
in account ``bench``'s container of a fresh data directory and then measures,
alternating the runs so that load changes hit both sides alike:

* import: ``vhdkit worker --once`` on a pending import task
  vs ``pigz -p 2 -1`` of the same VHD file                 (target ratio <= 1.3)
* export: ``vhdkit worker --once`` on a pending export task
  vs ``pigz -dc`` of the stored (gzipped) disk into a file
  followed by ``split -b 200M`` of that file                (target ratio <= 1.3)
  (the peer writes into an empty directory, the export into an empty
  container: each run's output is removed before the next, untimed)
* the worker's peak RSS (``/usr/bin/time -v``, "Maximum resident set size"),
  target < 200 MiB.

Medians are reported with the load average before and after.  Everything is
made under a temporary directory in /tmp and removed at the end.  Standalone:
the bench harness may import :func:`run` and get the result dict.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 2 << 20
ACCOUNT = "bench"
ROLES = "cloudImages:admin"


def make_vhd(dirpath: Path, size: int) -> Path:
    raw, vhd = dirpath / "src.raw", dirpath / "src.vhd"
    with open(raw, "wb") as f:
        f.truncate(size)
        for off in range(0, size, 2 * BLOCK):  # half of the 2 MiB blocks: random data
            f.seek(off)
            f.write(os.urandom(BLOCK))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic",
                    str(raw), str(vhd)], check=True)
    raw.unlink()
    return vhd


def _env(home: Path) -> dict:
    env = dict(os.environ, VHDKIT_HOME=str(home), PYTHONPATH=str(ROOT))
    env.pop("VHDKIT_STORE", None)
    return env


def _timed(cmd, env=None, shell=False) -> tuple:
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, shell=shell, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{cmd!r} failed ({p.returncode}): {p.stderr[-2000:]}")
    return dt, p


def _worker(home: Path) -> tuple:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "vhdkit", "worker", "--once", "--data", str(home)]
    dt, p = _timed(cmd, env=_env(home))
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    return dt, (int(m.group(1)) / 1024 if m else float("nan"))


def _task(reg, caller, kind: str, inp: dict):
    return reg.create_task(caller, kind, inp).id


def _finished(reg, caller, task_id: str):
    t = reg.show_task(caller, task_id)
    if t.status != "success":
        raise RuntimeError(f"task {task_id} ended {t.status}: {t.message}")
    return t


def run(size_gib: float = 2.0, runs: int = 3, keep: bool = False, export_runs: Optional[int] = None) -> dict:
    sys.path[:0] = [str(ROOT), str(ROOT / "fixtures")]
    from shared import put_file
    from vhdkit.tasks.pipeline import PipelineConfig
    from vhdkit.registry import Caller, Registry

    for tool in ("qemu-img", "pigz", "split", "/usr/bin/time"):
        if shutil.which(tool) is None:
            raise SystemExit(f"missing peer: {tool}")
    top = Path(tempfile.mkdtemp(prefix="vhdkit-pipebench-", dir="/tmp"))
    out = {"size_bytes": int(size_gib * (1 << 30)), "runs": runs, "loadavg_before": os.getloadavg(),
           "cpus": len(os.sched_getaffinity(0))}
    try:
        vhd = make_vhd(top, out["size_bytes"])
        out["vhd_file_size"] = vhd.stat().st_size
        home = top / "home"
        cfg = PipelineConfig.from_env(home)
        reg = Registry(str(home))
        caller = Caller.parse(ACCOUNT, ROLES)
        store = cfg.store(ACCOUNT)
        put_file(store, "images", "src.vhd", vhd, also=["exports"])
        imp_inp = {"import_from": "images/src.vhd", "import_from_format": "vhd",
                   "image_properties": {"name": "bench"}}
        gz = top / "peer.gz"
        t_imp, t_pigz, rss = [], [], []
        image_id = None
        for i in range(runs):
            dt, _ = _timed(f"pigz -p 2 -1 -c {vhd} > {gz}", shell=True)
            t_pigz.append(dt)
            gz.unlink()
            tid = _task(reg, caller, "import", imp_inp)
            dt, r = _worker(home)
            t_imp.append(dt)
            rss.append(r)
            new_id = _finished(reg, caller, tid).result["image_id"]
            if image_id is not None:
                reg.delete_image(caller, image_id)
            image_id = new_id
        # the stored disk, gzipped, as the export's peer starts from it
        data = reg.open_data(caller, image_id)
        stored = top / "stored.vhd.gz"
        with tarfile.open(data.path) as tar:
            m = next(m for m in tar.getmembers() if m.name.endswith(".vhd") or m.name.endswith(".vhd.gz"))
            with tar.extractfile(m) as src, open(stored, "wb") as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
        out["stored_ova_size"] = data.size
        t_exp, t_peer, t_peer_sync, stages = [], [], [], []
        exp_inp = {"image_uuid": image_id, "receiving_swift_container": "exports"}
        peer_dir = top / "peer"
        for i in range(export_runs or runs):
            peer_dir.mkdir()
            dt, _ = _timed(f"pigz -dc {stored} > {peer_dir}/disk.vhd && "
                           f"cd {peer_dir} && split -b 200M disk.vhd disk.vhd-", shell=True)
            t_peer.append(dt)
            shutil.rmtree(peer_dir)
            # the same, made durable as the object store makes each segment (fsync): a reference row
            peer_dir.mkdir()
            dt, _ = _timed(f"pigz -dc {stored} > {peer_dir}/disk.vhd && "
                           f"cd {peer_dir} && split -b 200M disk.vhd disk.vhd- && sync", shell=True)
            t_peer_sync.append(dt)
            shutil.rmtree(peer_dir)
            # the peer writes into a fresh directory; so does the export: the previous
            # run's segments are removed here, outside the timing (as the peer's rm -r is)
            for o in store.list("exports"):
                store.delete("exports", o.name)
            tid = _task(reg, caller, "export", exp_inp)
            dt, r = _worker(home)
            t_exp.append(dt)
            rss.append(r)
            stages.append(_finished(reg, caller, tid).result.get("timings"))
        med = statistics.median
        out.update({
            "import_s": t_imp, "pigz_s": t_pigz, "export_s": t_exp, "pigz_dc_split_s": t_peer,
            "worker_peak_rss_mib": rss,
            "import_median_s": med(t_imp), "pigz_median_s": med(t_pigz),
            "import_ratio": med(t_imp) / med(t_pigz),
            "export_median_s": med(t_exp), "peer_export_median_s": med(t_peer),
            "export_ratio": med(t_exp) / med(t_peer),
            "pigz_dc_split_sync_s": t_peer_sync, "peer_export_sync_median_s": med(t_peer_sync),
            "export_ratio_vs_sync": med(t_exp) / med(t_peer_sync), "export_stage_timings": stages,
            "worker_peak_rss_max_mib": max(rss),
            "loadavg_after": os.getloadavg(),
        })
        return out
    finally:
        if not keep:
            shutil.rmtree(top, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--export-runs", type=int, default=None, help="export runs (default: --runs)")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (debugging)")
    a = ap.parse_args()
    res = run(a.size_gib, a.runs, a.keep, a.export_runs)
    print(f"load average before {res['loadavg_before']}, after {res['loadavg_after']} on {res['cpus']} cpus")
    print(f"VHD {res['vhd_file_size']} bytes (virtual {res['size_bytes']}), stored OVA {res['stored_ova_size']}")
    print(f"import   median {res['import_median_s']:.2f} s  vs pigz -p 2 -1 {res['pigz_median_s']:.2f} s"
          f"  ratio {res['import_ratio']:.2f}  (runs {[round(x, 2) for x in res['import_s']]}"
          f" vs {[round(x, 2) for x in res['pigz_s']]})")
    print(f"export   median {res['export_median_s']:.2f} s  vs pigz -dc + split {res['peer_export_median_s']:.2f} s"
          f"  ratio {res['export_ratio']:.2f}  (runs {[round(x, 2) for x in res['export_s']]}"
          f" vs {[round(x, 2) for x in res['pigz_dc_split_s']]})")
    print(f"export   vs pigz -dc + split + sync {res['peer_export_sync_median_s']:.2f} s"
          f"  ratio {res['export_ratio_vs_sync']:.2f}  (runs {[round(x, 2) for x in res['pigz_dc_split_sync_s']]});"
          f" export stages {res['export_stage_timings']}")
    print(f"worker peak RSS max {res['worker_peak_rss_max_mib']:.1f} MiB "
          f"(runs {[round(x, 1) for x in res['worker_peak_rss_mib']]})")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
