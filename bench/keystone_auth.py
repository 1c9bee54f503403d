"""Token-validation cost: requests/s of ``GET /v2/images/{id}`` with a cached
Keystone token against header identity, in the same run.

    python bench/keystone_auth.py [--seconds 10] [--rounds 2] [--connections 8]

Starts a real Keystone (scripts/keystone_aio.py) and two `vhdkit serve` (one
worker each) on one data directory: one with ``--auth keystone``, one with
``--auth headers``.  A member of a new project creates one image; then ``wrk
-t2 -cN -dS`` fetches it from each server in turn, ``--rounds`` times: the
Keystone server with the user's token (validated by Keystone on the first
request, then answered from the cache), the header server with
``X-Auth-Token: <project id>:cloudImages:admin`` (the same account and role).
Prints a table and writes bench/results/keystone_auth.{json,md}.  Only
loopback addresses are used.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench.api_load import _wrk  # noqa: E402  (importing bench puts fixtures/ on the path)
from apiserver import ApiServer  # noqa: E402
from keystone_aio import _call, _find_or_create, password_token, read_env  # noqa: E402


def _member(env: dict) -> tuple:
    """(project id, token) of a new user with the member role on a new project."""
    url = env["OS_AUTH_URL"]
    admin = password_token(url, env["OS_USERNAME"], env["OS_PASSWORD"], env["OS_PROJECT_NAME"])
    name, password = "bench-" + secrets.token_hex(4), secrets.token_urlsafe(12)
    project = _find_or_create(url, admin, "project", name, {"domain_id": "default"})
    user = _find_or_create(url, admin, "user", name, {"domain_id": "default", "password": password})
    role = _find_or_create(url, admin, "role", "member", {})
    _call(f"{url}/projects/{project}/users/{user}/roles/{role}", "PUT", token=admin)
    return project, password_token(url, name, password, name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10, help="per wrk run")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="wrk runs per identity mode, alternating")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    aio = [sys.executable, str(ROOT / "scripts" / "keystone_aio.py")]
    with tempfile.TemporaryDirectory(prefix="vhdkit-bench-ks-") as tmp:
        ks_dir = Path(tmp) / "keystone"
        subprocess.run(aio + ["start", "--dir", str(ks_dir)], check=True, stdout=subprocess.DEVNULL)
        servers = []
        try:
            env = read_env(ks_dir)
            project, token = _member(env)
            ks_env = {k: v for k, v in env.items() if k.startswith("VHDKIT_")}
            data = Path(tmp) / "shared"
            keystone = ApiServer(Path(tmp) / "k", env=ks_env)
            headers = ApiServer(Path(tmp) / "h", env={"VHDKIT_AUTH": "headers"})
            for srv in (keystone, headers):
                srv.data = data
                servers.append(srv.start())
            with keystone.http(token) as c:
                made = c.post("/v2/images", json={"name": "bench"})
                made.raise_for_status()
                image = made.json()["id"]
            modes = {"keystone token (cached)": (keystone, token),
                     "header identity": (headers, f"{project}:cloudImages:admin")}
            runs = {m: [] for m in modes}
            for _ in range(args.rounds):
                for mode, (srv, tok) in modes.items():
                    r = _wrk(f"{srv.url}/v2/images/{image}", tok, args.seconds, args.connections, 2)
                    if r["non_2xx"]:
                        raise SystemExit(f"{mode}: {r['non_2xx']} answers were not 2xx")
                    runs[mode].append(r)
        finally:
            for srv in servers:
                srv.stop()
            subprocess.run(aio + ["stop", "--dir", str(ks_dir)], stdout=subprocess.DEVNULL)
    rows = [{"mode": m, "rps": [r["rps"] for r in rs], "rps_median": statistics.median(r["rps"] for r in rs),
             "p50": [r["p50"] for r in rs], "p99": [r["p99"] for r in rs]} for m, rs in runs.items()]
    load = os.getloadavg()[0]
    meta = {"when": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()), "host": platform.node(), "cpus": os.cpu_count(),
            "load1_after": round(load, 1), "seconds": args.seconds, "connections": args.connections,
            "rounds": args.rounds}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "keystone_auth.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"`GET /v2/images/{{id}}`, wrk -t2 -c{args.connections} -d{args.seconds}s over loopback, one "
             f"`vhdkit serve` worker per mode, {args.rounds} alternating runs each; {meta['when']}, "
             f"{meta['cpus']} CPUs, load average {meta['load1_after']} after the run (a shared machine).", "",
             "| identity | requests/s (median) | each run | p50 | p99 |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['rps_median']:.0f} | {', '.join(f'{x:.0f}' for x in r['rps'])} | "
                     f"{', '.join(map(str, r['p50']))} | {', '.join(map(str, r['p99']))} |")
    text = "\n".join(lines) + "\n"
    (out / "keystone_auth.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
