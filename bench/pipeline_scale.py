"""The import/export pipeline at the sizes customers use (issue 24, part 3).

    nice python -m bench.pipeline_scale [--sizes 1G,4G,16G] [--pair-size 1G] [--workdir DIR]

For each size, the suite's ``pipeline.import`` and ``pipeline.export`` workloads
(the same inputs, peers, verification and per-command RSS as ``python -m bench``:
a dynamic VHD half allocated, a quarter random and a quarter text-like blocks)
run once each, vhdkit first, the worker's output verified; the inputs of a size
are deleted before the next size is generated.  First, two import tasks of
``--pair-size`` images: one ``vhdkit worker --once`` after the other against two
workers at once on the machine's cores.  Prints a Markdown table (time, MB/s of
virtual disk, peak RSS of the largest process, i.e. the worker) and writes
``pipeline_scale-<date>.json|md`` under ``--results`` (default bench/results,
not in git).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path

from . import workloads
from .gen import parse_size
from .report import _fmt_t, _size
from .runner import Cmd, RunError, Variant, pair_ratios, run_variant, summarize
from .suite import REGISTRY, ROOT, Ctx, WorkloadDef, run_workload

WORKLOADS = ("pipeline.import", "pipeline.export")


def _rows(res: dict, size: int) -> list:
    out = []
    for v in res["variants"]:
        st = v.get("stats")
        if not st:
            out.append((res["name"], size, v["name"], None, None, None, v.get("status", ""), v.get("floor")))
            continue
        ratio = (res.get("ratios") or {}).get(v["name"])
        out.append((res["name"], size, v["name"], st["median"], st["mb_s"], st["maxrss_mib"],
                    f"{ratio['median']:.2f}" if ratio else "", v.get("floor")))
    if res["status"] != "ok":
        out.append((res["name"], size, f"({res['status']}: {res.get('reason', '')})", None, None, None, "", False))
    return out


def _vhdkit_alone(d: WorkloadDef) -> WorkloadDef:
    """``d`` with its peers left out."""
    def build(ctx: Ctx):
        w = d.build(ctx)
        w.variants = [v for v in w.variants if v.ours]
        return w
    return WorkloadDef(d.name, d.group, d.title, build, d.needs, d.issue, d.target)


def _two_workers(ctx: Ctx, size: int, rounds: int = 3) -> list:
    """Two import tasks: one worker doing them in turn vs two workers at once."""
    spec = workloads.mixed(ctx, size)
    src = ctx.inputs.dynamic(spec)
    home = ctx.workdir / "out" / "pair" / "home"
    vk = " ".join(ctx.vk(json=False))

    def setup() -> None:
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        for n in (1, 2):
            r = ctx.run_quiet(ctx.vk("object", "put", "--account", workloads.ACCT, "--store", str(home / "objects"),
                                     "incoming", f"disk{n}.vhd", str(src)))
            if r.returncode:
                raise RunError(f"object put: {r.stderr.strip()[-300:]}")
            r = ctx.run_quiet(ctx.vk("task", "create", "import", "--from", f"incoming/disk{n}.vhd", "--name", f"b{n}",
                                     "--data", str(home), "--account", workloads.ACCT, "--roles", "admin"))
            if r.returncode:
                raise RunError(f"task create: {r.stderr.strip()[-300:]}")

    def verify() -> str | None:
        r = ctx.run_quiet(ctx.vk("task", "list", "--data", str(home), "--account", workloads.ACCT,
                                 "--roles", "admin"))
        tasks = json.loads(r.stdout or "{}").get("tasks", [])
        bad = [t for t in tasks if t.get("status") != "success"]
        return None if len(tasks) == 2 and not bad else f"tasks not all successful: {r.stdout[-500:]}"

    one = f"{vk} worker --data {home} --once >/dev/null"
    variants = [Variant(name, [Cmd.sh(script)], ours=True, setup=setup)
                for name, script in (("one worker, in turn", f"set -e; {one}; {one}"),
                                     ("two workers at once", f"set -e; {one} & a=$!; {one} & b=$!; wait $a; wait $b"))]
    runs: dict = {v.name: [] for v in variants}
    problems: dict = {}
    for _ in range(rounds):            # alternating, as the suite does: load changes hit both alike
        for v in variants:
            runs[v.name].append(run_variant(v, str(ROOT), ctx.env, str(ctx.workdir / "last-stderr.pair.txt")))
            problems[v.name] = problems.get(v.name) or verify()
    rows = []
    for v in variants:
        st = summarize(runs[v.name], 2 * size)
        problem = problems[v.name]
        ratio = pair_ratios(runs[v.name], runs[variants[0].name]) if v is variants[1] else None
        rows.append(("pipeline.import ×2", size, v.name + (f" (WRONG: {problem})" if problem else ""),
                     st["median"], st["mb_s"], st["maxrss_mib"],
                     f"at once / in turn {ratio['median']:.2f}" if ratio else "", False))
    shutil.rmtree(home.parent, ignore_errors=True)
    return rows


def markdown(rows: list, meta: dict) -> str:
    lines = [f"Load average {meta['load_before'][0]:.2f} before, {meta['load_after'][0]:.2f} after; "
             f"{meta['nproc']} cores; one run per contender at each size (verified), three alternating rounds of the two-worker row; half-allocated dynamic VHDs "
             "(a quarter random, a quarter text-like).", "",
             "| workload | virtual | tool | s | MB/s | peak RSS MiB | vhdkit / peer |",
             "|---|---|---|---:|---:|---:|---:|"]
    for w, size, tool, sec, mbs, rss, ratio, floor in rows:
        lines.append(f"| {w} | {_size(size)} | {tool}{' (floor)' if floor else ''} | {_fmt_t(sec)} | "
                     f"{'' if mbs is None else f'{mbs:.0f}'} | {'' if rss is None else f'{rss:.0f}'} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pipeline_scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1G,4G,16G", help="virtual sizes, comma-separated (default 1G,4G,16G; '' none)")
    ap.add_argument("--peers-up-to", default=None, metavar="SIZE",
                    help="above this size run vhdkit alone (its time and RSS; the peers' cost grows the same way)")
    ap.add_argument("--pair-size", default="1G", help="size of each of the two images of the two-worker row "
                                                       "(0: skip that row)")
    ap.add_argument("--workdir", default=str(ROOT / "bench" / "work" / "pipeline-scale"),
                    help="inputs and scratch; removed at the end (default bench/work/pipeline-scale)")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    workdir = Path(args.workdir).resolve()
    defs = [d for d in REGISTRY if d.name in WORKLOADS]
    meta = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "nproc": os.cpu_count(),
            "load_before": os.getloadavg(), "argv": sys.argv[1:] if argv is None else argv}
    rows: list = []
    docs: list = []
    try:
        pair = parse_size(args.pair_size)
        if pair:
            ctx = Ctx(workdir, pair, quick=True, log=log)
            log(f"[two workers] 2 × {_size(pair)}")
            rows += _two_workers(ctx, pair)
            shutil.rmtree(workdir / "inputs", ignore_errors=True)
        for size in (parse_size(s) for s in args.sizes.split(",") if s):
            ctx = Ctx(workdir, size, quick=True, log=log)
            alone = args.peers_up_to is not None and size > parse_size(args.peers_up_to)
            for d in (_vhdkit_alone(d) for d in defs) if alone else defs:
                log(f"[{d.name}] {_size(size)}")
                res = run_workload(d, ctx, repeat=1, warmup=False)
                docs.append(res)
                rows += _rows(res, size)
                log(markdown(rows[-len(res['variants']):], {**meta, "load_after": os.getloadavg()}))
            shutil.rmtree(workdir / "inputs", ignore_errors=True)   # the next size needs the space
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    meta["load_after"] = os.getloadavg()
    text = markdown(rows, meta)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"pipeline_scale-{meta['date'].replace(':', '-')}"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "workloads": docs, "rows": rows}, indent=1,
                                                 default=str) + "\n")
    (out / f"{stem}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
