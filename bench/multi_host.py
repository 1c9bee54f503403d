#!/usr/bin/env python3
"""`GET /v2/images/ID` requests per second through one `vhdkit serve` host and
through three, all opening the same registry database.

    python bench/multi_host.py [--seconds 10] [--rounds 2] [--engine postgresql|sqlite] [--database-url URL]

Starts three `vhdkit serve` processes on loopback (one uvicorn worker each)
on one registry: by default a PostgreSQL server of its own (the tests' one,
fixtures/pgserver.py: Debian's postgresql, initdb in a temporary directory), or the
database at ``--database-url``, each host with its own data directory; with
``--engine sqlite`` the embedded SQLite registry in one shared data
directory.  Creates one image, then alternates, ``--rounds`` times:

- ``one host``: `wrk -t2 -c12` on host 1;
- ``three hosts``: three `wrk -t1 -c4` at once, one per host (the sum of
  their requests per second; the median of their median latencies).

Writes bench/results/multi_host.{json,md}.
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
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures"))

from pgserver import PgServer  # noqa: E402
from shared import LOOPBACK, free_port  # noqa: E402

WHO = "bench:admin"


class Server:
    def __init__(self, data: Path, log: Path, env: dict) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "vhdkit", "serve", "--port", str(self.port), "--data",
                                      str(data)], env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(300):
            try:
                if httpx.get(self.url + "/versions", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"vhdkit serve did not start: {log}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


def _parse(out: str) -> dict:
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise RuntimeError(f"wrk: error answers:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    return {"rps": rps, "p50_ms": float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]}


def _wrk(urls: list, threads: int, conns: int, seconds: float) -> dict:
    procs = [subprocess.Popen(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "--latency",
                               "-H", f"X-Auth-Token: {WHO}", u], stdout=subprocess.PIPE, text=True) for u in urls]
    got = [_parse(p.communicate()[0]) for p in procs]
    return {"rps": sum(g["rps"] for g in got), "p50_ms": statistics.median(g["p50_ms"] for g in got),
            "per_host_rps": [g["rps"] for g in got]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--engine", choices=["postgresql", "sqlite"], default="postgresql")
    ap.add_argument("--database-url", default=None, help="a PostgreSQL database all hosts open (default: start one)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "multi_host")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vhdkit-multi-host-"))
    servers = []
    pg = None
    if a.engine == "postgresql" and not a.database_url:
        pg = PgServer()
        a.database_url = pg.new_database()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VHDKIT_")}
        env["PYTHONPATH"] = str(ROOT)
        if a.database_url:
            env["VHDKIT_DATABASE_URL"] = a.database_url
        for i in range(3):
            data = work / (f"host{i + 1}" if a.database_url else "shared")
            servers.append(Server(data, work / f"host{i + 1}.log", env))
        _bench(a, servers)
    finally:
        for s in servers:
            s.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)


def _bench(a, servers: list) -> None:
    import httpx

    with httpx.Client(base_url=servers[0].url, headers={"X-Auth-Token": WHO}) as c:
        r = c.post("/v2/images", json={"name": "bench", "disk_format": "raw", "container_format": "bare",
                                       "os_distro": "bench", "tags": ["a", "b"]})
        r.raise_for_status()
        iid = r.json()["id"]
    urls = [f"{s.url}/v2/images/{iid}" for s in servers]
    engine = a.engine
    for u in urls:    # every host answers (and has its connection open) before the clock starts
        httpx.get(u, headers={"X-Auth-Token": WHO}).raise_for_status()
    samples = {"one host": [], "three hosts": []}
    for rnd in range(a.rounds):
        order = ["one host", "three hosts"] if rnd % 2 == 0 else ["three hosts", "one host"]
        for name in order:
            load = os.getloadavg()[0]
            got = _wrk(urls[:1], 2, 12, a.seconds) if name == "one host" else _wrk(urls, 1, 4, a.seconds)
            got["load_before"] = load
            samples[name].append(got)
            print(name, json.dumps(got), file=sys.stderr)
    res = {"engine": engine, "seconds": a.seconds, "rounds": a.rounds, "cpus": os.cpu_count(),
           "when": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
           "show": {n: {"rps": statistics.median(x["rps"] for x in v),
                        "p50_ms": statistics.median(x["p50_ms"] for x in v), "samples": v}
                    for n, v in samples.items()}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    one, three = res["show"]["one host"], res["show"]["three hosts"]
    lines = [
        f"# `GET /v2/images/ID` through one and three `vhdkit serve` hosts on {engine}",
        "",
        f"{res['when']}, {a.rounds} rounds of {a.seconds:g} s (alternating), medians; {res['cpus']} cores shared by "
        "the database, the hosts and wrk.",
        "",
        "| engine | one host req/s | one host p50 ms | three hosts req/s | three hosts p50 ms | three / one |",
        "|---|---:|---:|---:|---:|---:|",
        f"| {engine} | {one['rps']:.0f} | {one['p50_ms']:.1f} | {three['rps']:.0f} | {three['p50_ms']:.1f} | "
        f"{three['rps'] / one['rps']:.2f} |",
    ]
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
