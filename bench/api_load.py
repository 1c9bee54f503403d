"""Load on the HTTP API over loopback.

Two parts, usable from the command line and from tests:

* :func:`run_mix` -- N concurrent clients (asyncio + httpx) mixing image-list,
  show, tag add/remove, property PATCHes and small uploads for a bounded time,
  keeping a ledger of what each client believes it wrote, so that a caller can
  check afterwards that no update was lost.
* ``python bench/api_load.py`` -- fills a registry with 10,000 images, starts
  ``vhdkit serve`` on a free loopback port and measures requests/s of a page of
  25 from ``GET /v2/images`` with ``wrk`` (Debian), beside ``GET /versions``
  through the same server (the framework's ceiling on this machine), then runs
  the mix; prints a table and writes bench/results/api_load.{json,md}.

Only loopback addresses are used.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import httpx

ROOT = Path(__file__).resolve().parent.parent
PATCH_TYPE = "application/openstack-images-v2.1-json-patch"


@dataclass
class MixResult:
    seconds: float
    statuses: Counter = field(default_factory=Counter)      # status code -> count
    ops: Counter = field(default_factory=Counter)           # operation -> count
    errors: List[str] = field(default_factory=list)         # unexpected answers (first few)
    #: image id -> tags the clients believe the image has
    expected_tags: Dict[str, set] = field(default_factory=dict)
    #: image id -> {property: value} the clients last wrote
    expected_props: Dict[str, Dict[str, str]] = field(default_factory=dict)
    uploads_verified: int = 0
    rss_samples: List[int] = field(default_factory=list)
    latency: Dict[str, List[float]] = field(default_factory=dict)  # operation -> seconds

    def median_ms(self) -> Dict[str, float]:
        return {op: round(statistics.median(v) * 1000, 1) for op, v in sorted(self.latency.items())}

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500)


async def _client(n: int, c: httpx.AsyncClient, shared: List[str], deadline: float,
                  res: MixResult, rng: random.Random) -> None:
    """One client: its own tag and property on every shared image, so the
    final state of each image is fully predictable from the ledger."""
    my_tag: Dict[str, Optional[str]] = {i: None for i in shared}
    counter = 0
    if True:
        async def req(op: str, method: str, path: str, ok=(200, 201, 204), **kw) -> httpx.Response:
            t0 = time.monotonic()
            r = await c.request(method, path, **kw)
            res.latency.setdefault(op, []).append(time.monotonic() - t0)
            res.statuses[r.status_code] += 1
            res.ops[op] += 1
            if r.status_code not in ok and len(res.errors) < 20:
                res.errors.append(f"{op} {method} {path} -> {r.status_code} {r.text[:200]}")
            return r

        while time.monotonic() < deadline:
            counter += 1
            image = rng.choice(shared)
            pick = rng.random()
            if pick < 0.35:
                await req("list", "GET", "/v2/images", params={"limit": 25, "sort": "name:asc"})
            elif pick < 0.55:
                await req("show", "GET", f"/v2/images/{image}")
            elif pick < 0.75:
                tag = f"c{n}-{counter}"
                r = await req("tag", "PUT", f"/v2/images/{image}/tags/{tag}")
                if r.status_code == 204:
                    old, my_tag[image] = my_tag[image], tag
                    if old is not None:
                        r = await req("untag", "DELETE", f"/v2/images/{image}/tags/{old}")
                        if r.status_code != 204:
                            my_tag[image] = None   # ledger unknown: the final check will show it
            elif pick < 0.9:
                value = str(counter)
                ops = [{"op": "add", "path": f"/client_{n}", "value": value}]
                r = await req("patch", "PATCH", f"/v2/images/{image}", content=json.dumps(ops),
                              headers={"Content-Type": PATCH_TYPE})
                if r.status_code == 200:
                    res.expected_props.setdefault(image, {})[f"client_{n}"] = value
            else:
                data = os.urandom(rng.randrange(1, 64 * 1024))
                r = await req("create", "POST", "/v2/images",
                              json={"name": f"up-{n}-{counter}", "disk_format": "raw", "container_format": "bare"})
                if r.status_code == 201:
                    iid = r.json()["id"]
                    r = await req("upload", "PUT", f"/v2/images/{iid}/file", content=data,
                                  headers={"Content-Type": "application/octet-stream"})
                    if r.status_code == 204:
                        r = await req("download", "GET", f"/v2/images/{iid}/file")
                        if r.status_code == 200 and r.content == data and \
                                r.headers.get("content-md5") == hashlib.md5(data).hexdigest():
                            res.uploads_verified += 1
                        elif len(res.errors) < 20:
                            res.errors.append(f"download of {iid} did not match the upload")
    for image, tag in my_tag.items():
        if tag is not None:
            res.expected_tags.setdefault(image, set()).add(tag)


async def _run_mix(url: str, token: str, shared: List[str], clients: int, seconds: float,
                   rss=None, seed: int = 1) -> MixResult:
    res = MixResult(seconds)
    # One connection pool with a connection per client (32 separate clients
    # would each build a TLS context, blocking the loop for seconds).
    async with httpx.AsyncClient(base_url=url, headers={"X-Auth-Token": token}, timeout=60.0,
                                 limits=httpx.Limits(max_connections=clients)) as c:
        deadline = time.monotonic() + seconds
        tasks = [asyncio.create_task(_client(n, c, shared, deadline, res, random.Random(seed + n)))
                 for n in range(clients)]
        if rss is not None:
            while not all(t.done() for t in tasks):
                res.rss_samples.append(rss())
                await asyncio.sleep(0.5)
        await asyncio.gather(*tasks)
    return res


def run_mix(url: str, token: str, shared: List[str], *, clients: int = 32, seconds: float = 15.0,
            rss=None, seed: int = 1) -> MixResult:
    """Run the mixed load; ``rss`` (a callable) is sampled every 0.5 s."""
    return asyncio.run(_run_mix(url, token, shared, clients, seconds, rss, seed))


def check_ledger(url: str, token: str, res: MixResult) -> List[str]:
    """Differences between the images' final state and the clients' ledger."""
    problems = []
    with httpx.Client(base_url=url, headers={"X-Auth-Token": token}, timeout=60.0) as c:
        for image in set(res.expected_tags) | set(res.expected_props):
            img = c.get(f"/v2/images/{image}").json()
            want = res.expected_tags.get(image, set())
            have = {t for t in img["tags"] if re.match(r"c\d+-\d+$", t)}
            if have != want:
                problems.append(f"{image}: tags {sorted(have ^ want)} differ from the ledger")
            for key, value in res.expected_props.get(image, {}).items():
                if img.get(key) != value:
                    problems.append(f"{image}: {key}={img.get(key)!r}, last written {value!r}")
    return problems


# ---- the benchmark ---------------------------------------------------------------------------

def _fill(data_dir: Path, count: int, account: str) -> None:
    sys.path.insert(0, str(ROOT))
    from vhdkit.registry import Caller, Registry
    me = Caller.parse(account, "admin")
    with Registry(str(data_dir)) as reg:
        for i in range(count):
            reg.create_image(me, name=f"img-{i:05d}", disk_format="vhd", container_format="bare",
                             tags=["bench"] if i % 10 == 0 else [])


def _in_process(data_dir: Path, path: str, account: str, repeat: int = 50) -> Optional[float]:
    """Median ms of the registry call behind ``path``, in this process (no HTTP)."""
    from urllib.parse import parse_qsl, urlsplit
    from vhdkit.registry import Caller, Registry
    parts = urlsplit(path)
    if not parts.path.startswith("/v2/images"):
        return None
    me = Caller.parse(account, "admin")
    with Registry(str(data_dir), cleanup=False) as reg:
        if parts.path == "/v2/images":
            fn = lambda: reg.list_images(me, parse_qsl(parts.query))  # noqa: E731
        else:
            fn = lambda: reg.show_image(me, parts.path.rsplit("/", 1)[1])  # noqa: E731
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 2)


class _Blocks(io.RawIOBase):
    """``count`` times the same 1 MiB block, as a readable stream."""

    def __init__(self, block: bytes, count: int):
        super().__init__()
        self.block, self.left = block, count

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.left == 0:
            return b""
        self.left -= 1
        return self.block


def _data_throughput(srv, data_dir: Path, token: str, account: str, mib: int, repeat: int = 3) -> dict:
    """MB/s of an upload and a download of ``mib`` MiB through HTTP and, side
    by side on the same data directory, through the registry in-process;
    plus the server's peak RSS growth during the HTTP transfers."""
    from vhdkit.registry import Caller, Registry
    block = os.urandom(1 << 20)
    me = Caller.parse(account, "admin")
    res: Dict[str, list] = {"http_upload": [], "http_download": [], "registry_upload": [], "registry_download": []}
    with srv.watch_rss() as rss:
        with srv.http(token, timeout=600.0) as c, Registry(str(data_dir), cleanup=False) as reg:
            for _ in range(repeat):
                img = c.post("/v2/images", json={"name": "data", "disk_format": "raw",
                                                 "container_format": "bare"}).json()
                t0 = time.perf_counter()
                r = c.put(img["file"], content=(block for _ in range(mib)),
                          headers={"Content-Type": "application/octet-stream"})
                assert r.status_code == 204, r.text
                res["http_upload"].append(mib / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                with c.stream("GET", img["file"]) as resp:
                    n = sum(len(b) for b in resp.iter_raw())
                assert n == mib << 20
                res["http_download"].append(mib / (time.perf_counter() - t0))
                img2 = reg.create_image(me, name="data", disk_format="raw", container_format="bare")
                t0 = time.perf_counter()
                reg.upload(me, img2.id, _Blocks(block, mib))
                res["registry_upload"].append(mib / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                _, it = reg.iter_data(me, img2.id)
                n = sum(len(b) for b in it)
                res["registry_download"].append(mib / (time.perf_counter() - t0))
    out = {k: round(statistics.median(v), 1) for k, v in res.items()}
    out["mib"] = mib
    out["server_rss_growth_mib"] = round(rss.growth / 2**20, 1)
    return out


def _wrk(url: str, token: str, seconds: int, connections: int, threads: int) -> dict:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed (Debian package wrk)")
    out = subprocess.run([wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency",
                          "-H", f"X-Auth-Token: {token}", url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p50": lat.get("50"), "p99": lat.get("99"),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0, "raw": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--seconds", type=int, default=10, help="per wrk run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--mix-seconds", type=float, default=15.0)
    ap.add_argument("--data-mib", type=int, default=256, help="size of the data transfer runs")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)

    from apiserver import ApiServer

    token = "bench-acct:admin"
    rows = []
    with tempfile.TemporaryDirectory(prefix="vhdkit-api-bench-") as tmp:
        data = Path(tmp) / "data"
        t0 = time.monotonic()
        _fill(data, args.images, "bench-acct")
        print(f"filled {args.images} images in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        for workers in args.workers:
            srv = ApiServer(Path(tmp) / f"srv{workers}", workers=workers)
            srv.data = data
            with srv:
                with srv.http(token) as c:
                    one = c.get("/v2/images?limit=1").json()["images"][0]["id"]
                for label, path in [("image-list, page of 25 (default sort)", "/v2/images?limit=25"),
                                    ("image-list, page of 25, sort=name:asc", "/v2/images?limit=25&sort=name:asc"),
                                    ("image-list, page of 25, tag=bench, sort=name:asc",
                                     "/v2/images?limit=25&tag=bench&sort=name:asc"),
                                    ("show one image", f"/v2/images/{one}"),
                                    ("/versions (same stack, no registry)", "/versions")]:
                    r = _wrk(srv.url + path, token, args.seconds, args.connections, 2)
                    inproc = _in_process(data, path, "bench-acct") if workers == args.workers[0] else None
                    rows.append({"workers": workers, "request": label, "registry_ms": inproc,
                                 **{k: v for k, v in r.items() if k != "raw"}})
                    print(f"workers={workers} {label}: {r['rps']:.0f} req/s p50 {r['p50']} p99 {r['p99']} "
                          f"non-2xx {r['non_2xx']} (registry call in-process: {inproc} ms)", file=sys.stderr)
                if workers == args.workers[0]:
                    with srv.http(token) as c:
                        shared = [c.post("/v2/images", json={"name": f"mix-{i}", "disk_format": "raw",
                                                             "container_format": "bare"}).json()["id"]
                                  for i in range(8)]
                    mix = run_mix(srv.url, token, shared, clients=32, seconds=args.mix_seconds, rss=srv.rss)
                    lost = check_ledger(srv.url, token, mix)
                    mix_row = {"clients": 32, "seconds": args.mix_seconds, "requests": mix.requests,
                               "rps": round(mix.requests / args.mix_seconds, 1), "server_errors": mix.server_errors,
                               "statuses": dict(mix.statuses), "ops": dict(mix.ops), "lost_updates": len(lost),
                               "uploads_verified": mix.uploads_verified,
                               "rss_mib_first": round(mix.rss_samples[2] / 2**20, 1) if len(mix.rss_samples) > 2 else None,
                               "rss_mib_max": round(max(mix.rss_samples) / 2**20, 1),
                               "rss_mib_last": round(mix.rss_samples[-1] / 2**20, 1)}
                    print(f"mix: {mix_row}", file=sys.stderr)
                    data_row = _data_throughput(srv, data, token, "bench-acct", args.data_mib)
                    print(f"data: {data_row}", file=sys.stderr)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"machine": os.uname().nodename, "cpus": os.cpu_count(), "images": args.images,
              "connections": args.connections, "seconds": args.seconds, "wrk": rows, "mix": mix_row, "data": data_row}
    (out / "api_load.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"wrk -t2 -c{args.connections} -d{args.seconds}s over loopback; {args.images} images in the registry; "
             "registry ms = the same call in-process without HTTP (median of 50).", "",
             "| workers | request | req/s | p50 | p99 | non-2xx | registry ms |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['request']} | {r['rps']:.0f} | {r['p50']} | {r['p99']} | {r['non_2xx']} "
              f"| {r['registry_ms'] if r['registry_ms'] is not None else ''} |" for r in rows]
    lines += ["", f"Mixed load, 32 clients, {args.mix_seconds:g} s: {mix_row['requests']} requests "
                  f"({mix_row['rps']} req/s), 5xx: {mix_row['server_errors']}, lost updates: {mix_row['lost_updates']}, "
                  f"uploads verified: {mix_row['uploads_verified']}, server RSS MiB first/max/last: "
                  f"{mix_row['rss_mib_first']}/{mix_row['rss_mib_max']}/{mix_row['rss_mib_last']}"]
    d = data_row
    lines += ["", f"Data, {d['mib']} MiB, MB/s (median of 3), HTTP vs the registry in-process in the same run: "
                  f"upload {d['http_upload']} vs {d['registry_upload']}, download {d['http_download']} vs "
                  f"{d['registry_download']}; server RSS growth during the HTTP transfers: {d['server_rss_growth_mib']} MiB"]
    (out / "api_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
