#!/usr/bin/env python3
"""The registry's list page and show at 1k and 100k images, on SQLite and on
PostgreSQL, in one run (issue 21: a page costs about the same at 100,000
images as at 1,000 on either engine).

  python bench/registry_engines.py [--small 1000] [--large 100000] [--reps 200]

PostgreSQL is a throw-away server started here as in the tests
(fixtures/pgserver.py: initdb in a temporary directory, a free loopback port;
fsync off, as there).  The registries are populated in bulk with SQL
(registry_scale.populate: 100 images per account, 10 % shared, 5 % public,
2 % community, tags, members) and ANALYZEd.  Timed, interleaved across the
four registries, as a random account: the default list page of 25, and show
of a random image by its owner (the median of --reps calls of the Python
API, in process, registry open excluded).  Prints the table and the
100k/1k ratio per engine; writes bench/results/registry_engines.json.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "fixtures"), str(ROOT / "bench")]

from pgserver import PgServer  # noqa: E402
from registry_scale import populate  # noqa: E402
from vhdkit.registry import Caller, Registry  # noqa: E402

OPS = ("list_page", "show")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--large", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=200)
    a = ap.parse_args()
    pg = PgServer()
    work = Path(tempfile.mkdtemp(prefix="vhdkit-bench-engines-"))
    regs = {}
    try:
        for engine in ("sqlite", "postgresql"):
            for n in (a.small, a.large):
                url = pg.new_database() if engine == "postgresql" else None
                reg = Registry(str(work / f"{engine}-{n}"), database_url=url)
                t0 = time.perf_counter()
                accounts, ids = populate(reg, n, 100)
                print(f"populated {engine} {n}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
                owners = dict(reg._conn().execute("SELECT id, owner FROM images").fetchall())
                regs[(engine, n)] = (reg, accounts, ids, owners)
        rnd = random.Random(7)
        times = {k: {op: [] for op in OPS} for k in regs}
        for _ in range(a.reps):
            for k, (reg, accounts, ids, owners) in regs.items():
                who = Caller(rnd.choice(accounts), frozenset({"observer"}))
                t0 = time.perf_counter()
                reg.list_images(who, {"limit": "25"})
                times[k]["list_page"].append(time.perf_counter() - t0)
                iid = rnd.choice(ids)
                owner = Caller(owners[iid], frozenset({"observer"}))
                t0 = time.perf_counter()
                reg.show_image(owner, iid)
                times[k]["show"].append(time.perf_counter() - t0)
        out: dict = {"small": a.small, "large": a.large, "reps": a.reps, "ms": {}, "ratio": {}}
        for (engine, n), t in times.items():
            out["ms"].setdefault(engine, {})[str(n)] = {op: statistics.median(v) * 1e3 for op, v in t.items()}
        for engine in ("sqlite", "postgresql"):
            ms = out["ms"][engine]
            out["ratio"][engine] = {op: ms[str(a.large)][op] / ms[str(a.small)][op] for op in OPS}
        print(f"| engine | op | {a.small} images (ms) | {a.large} images (ms) | ratio |")
        print("|---|---|---:|---:|---:|")
        for engine in ("sqlite", "postgresql"):
            ms = out["ms"][engine]
            for op in OPS:
                print(f"| {engine} | {op} | {ms[str(a.small)][op]:.2f} | {ms[str(a.large)][op]:.2f} | "
                      f"{out['ratio'][engine][op]:.2f} |")
        res = ROOT / "bench" / "results"
        res.mkdir(exist_ok=True)
        (res / "registry_engines.json").write_text(json.dumps(out, indent=1) + "\n")
    finally:
        for reg, *_ in regs.values():
            reg.close()
        pg.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
