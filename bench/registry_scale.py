#!/usr/bin/env python3
"""Registry scale and data-path benchmark (issue 6, "Performance").

  python bench/registry_scale.py [--small 1000] [--large 100000] [--accounts-per 100]
                                 [--data-size 1G] [--skip-data] [--work DIR]

1. Query cost vs registry size: two registries, SMALL and LARGE images with 100
   images per account (so 10 and 1,000 accounts), 10% shared (3 members each,
   60% accepted), 5% public, 2% community, tags from a..h.  Times, in one run,
   the median of a filtered sorted page of 25
   (tag=a&tag=b&visibility=shared&member_status=accepted&sort=name:asc), the
   default list page (first and 5th), public images by size, tag=a by name,
   the service identity's page (first; 5th by status), and show-by-id, as a
   random account; prints the LARGE/SMALL ratios and the plan of each index
   walk of the filtered page.
   Rows are inserted in bulk with SQL into a Registry-created schema (the
   population is not what is measured).
2. Upload of a DATA-SIZE file through Registry.upload_file (size, md5, sha512,
   fsync, rename) vs `md5sum FILE` followed by `sha512sum FILE`.
3. Download into a file vs `cp` of the blob, alternating: through
   Registry.download in process (no start-up), and `vhdkit image download -o`
   (the CLI) with --no-sync (like cp) and with its default fsync.

Results: bench/results/registry_scale.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vhdkit.registry import Caller, Registry  # noqa: E402
from vhdkit.registry import db as _db  # noqa: E402
from vhdkit.registry.models import now_text  # noqa: E402

TAGS = "abcdefgh"
QUERY = [("tag", "a"), ("tag", "b"), ("visibility", "shared"), ("member_status", "accepted"),
         ("sort", "name:asc"), ("limit", "25")]


#: what bench_queries times (ms, median), each at both sizes
SHAPES = ("filtered_page", "default_page", "default_page_5", "public_by_size", "tag_a_by_name",
          "service_page", "service_status_page_5", "show")


def populate(reg: Registry, n_images: int, per_account: int, seed: int = 1) -> list:
    rnd = random.Random(seed)
    n_acc = max(1, n_images // per_account)
    accounts = [f"acct{k:05d}" for k in range(n_acc)]
    conn = reg._conn()
    images, tags, members, props = [], [], [], []
    ids = []
    for k in range(n_images):
        iid = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        owner = accounts[k % n_acc]
        r = rnd.random()
        vis = "shared" if r < 0.10 else "public" if r < 0.15 else "community" if r < 0.17 else "private"
        ts = now_text() if k % 7 else now_text()
        images.append((iid, f"img-{rnd.randrange(10**6):06d}", "active", vis, 0, owner, ts, ts,
                       rnd.randrange(1 << 30), "vhd", "ova"))
        for t in rnd.sample(TAGS, rnd.randrange(0, 4)):
            tags.append((iid, t))
        props.append((iid, "os_distro", rnd.choice(["ubuntu", "debian", "windows"])))
        if vis == "shared":
            for m in rnd.sample(accounts, min(3, n_acc)):
                if m != owner:
                    st = "accepted" if rnd.random() < 0.6 else rnd.choice(["pending", "rejected"])
                    members.append((iid, m, st, ts, ts))
        ids.append(iid)
    with _db.immediate(conn):
        _insert(conn, images, tags, props, members)
    conn.execute("ANALYZE")
    if conn.dialect is _db.SQLITE:
        # steady state: the bulk insert's pages moved from the WAL into the database
        # (a query right after it would read them through a 300 MB WAL)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return accounts, ids


def _insert(conn, images, tags, props, members) -> None:
    conn.executemany("INSERT INTO images (id, name, status, visibility, protected, owner, created_at, "
                     "updated_at, size, disk_format, container_format) VALUES (?,?,?,?,?,?,?,?,?,?,?)", images)
    conn.executemany("INSERT INTO image_tags (image_id, tag) VALUES (?,?)", tags)
    conn.executemany("INSERT INTO image_properties (image_id, name, value) VALUES (?,?,?)", props)
    conn.executemany("INSERT INTO image_members (image_id, member, status, created_at, updated_at) "
                     "VALUES (?,?,?,?,?)", members)


def timeit(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_queries(work: Path, small: int, large: int, per: int, reps: int) -> dict:
    out = {}
    regs = {}
    for label, n in (("small", small), ("large", large)):
        d = work / f"reg-{label}"
        shutil.rmtree(d, ignore_errors=True)
        reg = Registry(str(d))
        t0 = time.perf_counter()
        accounts, ids = populate(reg, n, per)
        print(f"populated {label}: {n} images / {len(accounts)} accounts in {time.perf_counter() - t0:.1f}s",
              file=sys.stderr)
        regs[label] = (reg, accounts, ids)
    rnd = random.Random(7)
    svc = Caller.service("bench")

    def deep(reg, who, params, pages=5):
        """The marker of page ``pages`` (or of the last page) of a list: 5, so
        that at 1,000 images (~165 visible to an account) it is a full page too."""
        m = None
        for _ in range(pages):
            page = reg.list_images(who, params + ([("marker", m)] if m else []))
            if page.next_marker is None:
                break
            m = page.next_marker
        return params + ([("marker", m)] if m else [])

    # measure interleaved so machine noise hits both alike
    res = {lab: {k: [] for k in SHAPES} for lab in regs}
    for _ in range(reps):
        for lab, (reg, accounts, ids) in regs.items():
            who = Caller(rnd.choice(accounts), frozenset({"observer"}))
            res[lab]["filtered_page"].append(timeit(lambda: reg.list_images(who, QUERY), 1))
            res[lab]["default_page"].append(timeit(lambda: reg.list_images(who, {"limit": "25"}), 1))
            p = deep(reg, who, [("limit", "25")])
            res[lab]["default_page_5"].append(timeit(lambda: reg.list_images(who, p), 1))
            q = [("visibility", "public"), ("sort", "size:desc"), ("limit", "25")]
            res[lab]["public_by_size"].append(timeit(lambda: reg.list_images(who, q), 1))
            q = [("tag", "a"), ("sort", "name:desc"), ("limit", "25")]
            res[lab]["tag_a_by_name"].append(timeit(lambda: reg.list_images(who, q), 1))
            res[lab]["service_page"].append(timeit(lambda: reg.list_images(svc, {"limit": "25"}), 1))
            p = deep(reg, svc, [("sort", "status:asc"), ("limit", "25")])
            res[lab]["service_status_page_5"].append(timeit(lambda: reg.list_images(svc, p), 1))
            iid = rnd.choice(ids)
            owner = reg._conn().execute("SELECT owner FROM images WHERE id=?", (iid,)).fetchone()[0]
            res[lab]["show"].append(timeit(lambda: reg.show_image(Caller(owner, frozenset({"observer"})), iid), 1))
    for lab in regs:
        out[lab] = {k: statistics.median(v) * 1e3 for k, v in res[lab].items()}
        out[lab]["images"] = small if lab == "small" else large
    out["ratio"] = {k: out["large"][k] / out["small"][k] for k in SHAPES}
    # the plan of each index walk of the query (no SCAN of a table)
    from vhdkit.registry.query import list_walks, parse_list_params
    reg, accounts, _ = regs["large"]
    walks, _ = list_walks(parse_list_params(QUERY), accounts[0], None)
    out["filtered_page_plan"] = [[r[3] for r in reg._conn().execute("EXPLAIN QUERY PLAN " + w, ps)]
                                 for w, ps in walks]
    for r, _, _ in regs.values():
        r.close()
    return out


def run(cmd, **kw) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t0


def bench_data(work: Path, size: int, reps: int) -> dict:
    src = work / "data.bin"
    if not src.exists() or src.stat().st_size != size:
        with open(src, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(size >> 20):
                f.write(chunk)
    subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
    d = work / "reg-data"
    shutil.rmtree(d, ignore_errors=True)
    reg = Registry(str(d))
    me = Caller("bench", frozenset({"admin"}))
    up, peer, down, cp = [], [], [], []

    up_cpu, peer_cpu = [], []

    def cpu(who: int) -> float:
        ru = resource.getrusage(who)
        return ru.ru_utime + ru.ru_stime

    def peer_once() -> float:
        subprocess.run(["sync"], check=True)   # same writeback state for each side
        c0 = cpu(resource.RUSAGE_CHILDREN)
        d = run(["md5sum", str(src)]) + run(["sha512sum", str(src)])
        peer_cpu.append(cpu(resource.RUSAGE_CHILDREN) - c0)
        return d

    dst = work / "out.bin"

    def ours_down(img_id: str) -> float:
        dst.unlink(missing_ok=True)
        subprocess.run(["sync"], check=True)
        t0 = time.perf_counter()
        with open(dst, "wb") as f:
            reg.download(me, img_id, f)
        d = time.perf_counter() - t0
        dst.unlink()
        return d

    env = dict(os.environ, VHDKIT_HOME=str(d), VHDKIT_ACCOUNT="bench", VHDKIT_ROLES="admin",
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    env.pop("PYTHONDONTWRITEBYTECODE", None)   # as installed: bytecode compiled once
    cli_down: dict = {"cli": [], "cli_fsync": []}

    def cli_once(img_id: str, *extra: str) -> float:
        dst.unlink(missing_ok=True)
        subprocess.run(["sync"], check=True)
        t = run([sys.executable, "-m", "vhdkit", "image", "download", img_id, "-o", str(dst), *extra], env=env)
        dst.unlink()
        return t

    def cp_once(blob: str) -> float:
        subprocess.run(["sync"], check=True)
        d = run(["cp", blob, str(dst)])
        dst.unlink()
        return d

    for _ in range(reps):               # ABBA order: drift in machine load hits both sides alike
        peer.append(peer_once())
        img = reg.create_image(me, name="big", disk_format="raw", container_format="bare")
        subprocess.run(["sync"], check=True)
        t0, c0 = time.perf_counter(), cpu(resource.RUSAGE_SELF)
        img = reg.upload_file(me, img.id, str(src))
        up.append(time.perf_counter() - t0)
        up_cpu.append(cpu(resource.RUSAGE_SELF) - c0)
        peer.append(peer_once())
        blob = reg.open_data(me, img.id).path
        cli_once(img.id, "--no-sync")   # warm-up: writes the .pyc files
        for _ in range(3):
            down.append(ours_down(img.id))
            cp.append(cp_once(blob))
            cli_down["cli"].append(cli_once(img.id, "--no-sync"))
            cli_down["cli_fsync"].append(cli_once(img.id))
            cli_down["cli_fsync"].append(cli_once(img.id))
            cli_down["cli"].append(cli_once(img.id, "--no-sync"))
            cp.append(cp_once(blob))
            down.append(ours_down(img.id))
        reg.delete_image(me, img.id)
    reg.close()
    m = statistics.median
    return {"bytes": size, "upload_samples_s": up, "peer_samples_s": peer, "download_samples_s": down,
            "cp_samples_s": cp, "upload_s": m(up), "md5sum_then_sha512sum_s": m(peer),
            "upload_ratio": m(up) / m(peer), "download_s": m(down), "cp_s": m(cp),
            "download_ratio": m(down) / m(cp), "runs": reps,
            "cli_download_samples_s": cli_down["cli"], "cli_download_fsync_samples_s": cli_down["cli_fsync"],
            "cli_download_s": m(cli_down["cli"]), "cli_download_ratio": m(cli_down["cli"]) / m(cp),
            "cli_download_fsync_s": m(cli_down["cli_fsync"]),
            "cli_download_fsync_ratio": m(cli_down["cli_fsync"]) / m(cp),
            "upload_cpu_s": m(up_cpu), "peer_cpu_s": m(peer_cpu)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--large", type=int, default=100_000)
    ap.add_argument("--accounts-per", type=int, default=100, help="images per account")
    ap.add_argument("--reps", type=int, default=31)
    ap.add_argument("--data-size", default="1G")
    ap.add_argument("--data-reps", type=int, default=3)
    ap.add_argument("--skip-data", action="store_true")
    ap.add_argument("--skip-queries", action="store_true")
    ap.add_argument("--work", default=None, help="Keep the work files here (default: a temp dir, removed).")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="vhdkit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    outdir = Path(__file__).resolve().parent / "results"
    outdir.mkdir(exist_ok=True)
    results: dict = {}
    prev = outdir / "registry_scale.json"
    if prev.exists():   # a partial run (--skip-*) keeps the other section's last figures
        results = json.loads(prev.read_text())
    if not a.skip_queries:
        results["queries_ms"] = bench_queries(work, a.small, a.large, a.accounts_per, a.reps)
        print(json.dumps(results["queries_ms"], indent=2))
    if not a.skip_data:
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        s = a.data_size.upper()
        size = int(s[:-1]) * mult[s[-1]] if s[-1] in mult else int(s)
        results["data"] = bench_data(work, size, a.data_reps)
        print(json.dumps(results["data"], indent=2))
    (outdir / "registry_scale.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["| measure | small | large | ratio |", "|---|---|---|---|"]
    q = results.get("queries_ms")
    if q:
        for k in SHAPES:
            lines.append(f"| {k} (ms, median) | {q['small'][k]:.3f} | {q['large'][k]:.3f} | {q['ratio'][k]:.2f} |")
    dd = results.get("data")
    if dd:
        lines += ["", "| data path | ours (s) | peer (s) | ratio |", "|---|---|---|---|",
                  f"| upload {dd['bytes']} B vs md5sum+sha512sum | {dd['upload_s']:.2f} | "
                  f"{dd['md5sum_then_sha512sum_s']:.2f} | {dd['upload_ratio']:.2f} |",
                  f"| download vs cp (in process) | {dd['download_s']:.2f} | {dd['cp_s']:.2f} | {dd['download_ratio']:.2f} |",
                  f"| `vhdkit image download -o --no-sync` vs cp | {dd['cli_download_s']:.2f} | {dd['cp_s']:.2f} | "
                  f"{dd['cli_download_ratio']:.2f} |",
                  f"| `vhdkit image download -o` (fsync, the default) vs cp | {dd['cli_download_fsync_s']:.2f} | {dd['cp_s']:.2f} | "
                  f"{dd['cli_download_fsync_ratio']:.2f} |",
                  f"| upload CPU (user+sys) vs peer CPU | {dd['upload_cpu_s']:.2f} | {dd['peer_cpu_s']:.2f} | "
                  f"{dd['upload_cpu_s'] / dd['peer_cpu_s']:.2f} |"]
    (outdir / "registry_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if a.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
