"""``python -m bench``: run the workloads side by side with their peers."""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import report, scaling, workloads  # noqa: F401  (workloads registers itself)
from .gen import parse_size
from .suite import REGISTRY, ROOT, Ctx, run_workload

DEFAULT_SIZE = "2G"
QUICK_SIZE = 16 << 20


def _git(*args: str) -> str:
    r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip()


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--size", default=None,
                    help="virtual size of the main inputs, or a comma list to sweep (default 2G; --quick: 16M)")
    ap.add_argument("--quick", action="store_true", help="tiny inputs, one timed round: a smoke test (seconds)")
    ap.add_argument("--only", default=None,
                    help="comma list of workload names or prefixes (e.g. convert,gzip.compress,scale)")
    ap.add_argument("--repeat", type=int, default=None, help="timed rounds after the warm-up (default 5; --quick 1)")
    ap.add_argument("--scaling", action="store_true",
                    help="also run the scaling sweep (convert, coalesce, check × sizes × allocation)")
    ap.add_argument("--workdir", default=str(ROOT / "bench" / "work"), help="inputs cache and scratch (default bench/work)")
    ap.add_argument("--results", default=None, help="where to write JSON/Markdown/PNG (default bench/results; "
                                                     "--quick: WORKDIR/results)")
    ap.add_argument("--list", action="store_true", help="list the workloads and exit")
    ap.add_argument("--update-readme", action="store_true",
                    help="replace the current table of bench/README.md (between its table markers) with this run's")
    args = ap.parse_args(argv)

    if args.list:
        for d in REGISTRY:
            print(f"{d.name:22} {d.title}")
        for d in scaling.defs(quick=False):
            print(f"{d.name:22} {d.title}")
        return 0
    repeat = args.repeat or (1 if args.quick else 5)
    sizes = [parse_size(s) for s in (args.size or ("16M" if args.quick else DEFAULT_SIZE)).split(",")]
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    results = Path(args.results) if args.results else (workdir / "results" if args.quick else ROOT / "bench" / "results")

    def selected(name: str) -> bool:
        return only is None or any(name == o or name.startswith(o + ".") or name.startswith(o) for o in only)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    meta = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": socket.gethostname(), "nproc": os.cpu_count(), "cpu": _cpu(),
        "python": sys.version.split()[0], "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "repeat": repeat, "quick": args.quick, "sizes": sizes, "argv": sys.argv[1:] if argv is None else argv,
        "load_before": os.getloadavg(),
    }
    doc = {"schema": 1, "meta": meta, "workloads": []}
    t_start = time.perf_counter()
    stem = f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H-%M-%SZ')}-{socket.gethostname()}"

    def checkpoint() -> None:
        """Save what is measured so far (a run cut short still leaves its figures)."""
        meta["load_after"] = os.getloadavg()
        meta["partial"] = True
        report.write_all(doc, results, stem, plot=False)
    for size in sizes:
        ctx = Ctx(workdir, size, args.quick, log=log)
        for d in REGISTRY:
            if not selected(d.name):
                continue
            log(f"[{d.name}] {d.title} — {report._size(size)}")
            res = run_workload(d, ctx, repeat, warmup=not args.quick)
            res["suite_size"] = size
            doc["workloads"].append(res)
            log("   " + _one_line(res))
            checkpoint()
    if args.scaling or (only and any(o.startswith("scale") for o in only)):
        ctx = Ctx(workdir, sizes[0], args.quick, log=log)
        for d in scaling.defs(args.quick):
            if only and not any(d.name.startswith(o) or o == "scale" or d.scaling.startswith(o) for o in only):
                continue
            log(f"[{d.name}] {d.title}")
            res = run_workload(d, ctx, max(1, min(repeat, 3)), warmup=not args.quick)
            res["scaling"] = d.scaling
            doc["workloads"].append(res)
            log("   " + _one_line(res))
            checkpoint()
        doc["scaling"] = {name: {tool: report.fit(pts) for tool, pts in tools.items()}
                          for name, tools in report.scaling_points(doc).items()}
    meta["load_after"] = os.getloadavg()
    meta["elapsed_s"] = time.perf_counter() - t_start
    meta["partial"] = False
    paths = report.write_all(doc, results, stem)
    print(report.markdown(doc))
    if args.update_readme:
        update_readme(doc, log)
    for k, p in paths.items():
        log(f"wrote {k}: {p}")
    return 0


#: bench/README.md's generated part lies between these lines.
TABLE_BEGIN = "<!-- current table: written by `python -m bench --update-readme`; do not edit -->"
TABLE_END = "<!-- end of the current table -->"


def update_readme(doc: dict, log, readme: Path = ROOT / "bench" / "README.md") -> None:
    """Replace the current table in ``readme`` with this run's (failed or
    unavailable workloads are left out, and named on stderr)."""
    text = readme.read_text()
    if TABLE_BEGIN not in text or TABLE_END not in text:
        raise SystemExit(f"{readme}: no table markers ({TABLE_BEGIN!r} ... {TABLE_END!r})")
    head, rest = text.split(TABLE_BEGIN, 1)
    tail = rest.split(TABLE_END, 1)[1]
    readme.write_text(head + TABLE_BEGIN + "\n\n" + report.markdown(doc, readme=True) + "\n" + TABLE_END + tail)
    left = [f"{w['name']} ({w['status']}: {w.get('reason', '')[:120]})" for w in doc["workloads"]
            if not w.get("scaling") and w["status"] != "ok"]
    if left:
        log("left out of the README table: " + "; ".join(left))
    log(f"updated {readme}")


def _one_line(res: dict) -> str:
    if res["status"] not in ("ok", "wrong-output"):
        return f"{res['status']}: {res.get('reason', '')}"
    parts = []
    for v in res["variants"]:
        st = v.get("stats")
        if st:
            parts.append(f"{v['name']} {st['median']:.4g}s {st['maxrss_mib']:.0f}MiB")
        else:
            parts.append(f"{v['name']} {v.get('status', '')}")
    ratios = ", ".join(f"/{k} {r['median']:.2f}" for k, r in res["ratios"].items() if r)
    return ("WRONG OUTPUT: " + res.get("reason", "") + " | " if res["status"] == "wrong-output" else "") + \
        "; ".join(parts) + (f" | vhdkit{ratios}" if ratios else "")
