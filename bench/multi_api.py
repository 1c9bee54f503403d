#!/usr/bin/env python3
"""A forwarding API host (`vhdkit serve --registry URL`) against the registry
host it forwards to, and python-swiftclient, on a real local Swift.

    python bench/multi_api.py [--size 1G] [--runs 3] [--calls-seconds 5]

Starts the Swift all-in-one (scripts/swift_aio.py) unless VHDKIT_SWIFT_AUTH_URL
is set, a registry host (`vhdkit serve`, image data in Swift, 200 MiB
segments) and a forwarding host (`vhdkit serve --registry`), then measures,
alternating between them in each run:

- ``upload``: `curl -T FILE` of ``--size`` random bytes to
  ``PUT /v2/images/ID/file`` (hashing, segmenting into Swift, activation);
  peer: `swift upload --segment-size 200M` of the same file;
- ``download``: `curl -o /dev/null` of the image; peer: `swift download
  -o /dev/null` of the peer's large object;
- ``show``: `wrk` for ``--calls-seconds`` on ``GET /v2/images/ID`` (8
  connections): requests per second and latency, for the cost of one
  forwarded registry call;
- the forwarding host's peak RSS during its uploads and downloads.

Writes bench/results/multi_api.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from swift_export import swift_aio  # noqa: E402  (the same Swift all-in-one start/stop)

MiB = 1 << 20


def _size(s: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(s[:-1]) * units[s[-1].upper()]) if s[-1].upper() in units else int(s)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data: Path, env: dict, *extra: str) -> None:
        import httpx

        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(data.parent / f"{data.name}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "vhdkit", "serve", "--port", str(self.port), "--data",
                                      str(data), *extra], env=env, cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        for _ in range(300):
            try:
                if httpx.get(self.url + "/versions", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"vhdkit serve did not start: {data.parent / data.name}.log")

    def rss_peak_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


def _timed(cmd, **kw) -> float:
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    d = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {r.stderr[-2000:]}")
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--calls-seconds", type=float, default=5.0)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "multi_api")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vhdkit-multi-api-", dir=a.work))
    servers: list = []
    try:
        with swift_aio(work):
            try:
                _bench(a, work, servers)
            finally:
                for s in servers:
                    s.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _wrk(url: str, token: str, seconds: float) -> dict:
    r = subprocess.run(["wrk", "-t2", "-c8", f"-d{seconds:g}s", "--latency", "-H", f"X-Auth-Token: {token}", url],
                       capture_output=True, text=True, check=True)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", r.stdout).group(1))
    m = re.search(r"50%\s+([\d.]+)(us|ms|s)", r.stdout)
    p50 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", r.stdout)
    if non2xx:
        raise RuntimeError(f"wrk: {non2xx.group(1)} error answers from {url}")
    return {"rps": rps, "p50_ms": p50}


def _bench(a, work: Path, servers: list) -> None:
    import httpx

    from vhdkit.swiftstore import SwiftConfig, SwiftStore

    size = _size(a.size)
    src = work / "data.bin"
    with open(src, "wb") as f:
        block = os.urandom(64 * MiB)
        for off in range(0, size, len(block)):
            f.write(block[: min(len(block), size - off)])
    token_secret = uuid.uuid4().hex
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
    base.update(PYTHONPATH=str(ROOT), VHDKIT_BLOB_STORE="swift", VHDKIT_BLOB_ACCOUNT="bench-blobs",
                VHDKIT_SERVICE_TOKEN=token_secret, VHDKIT_API_MAX_IMAGE_SIZE=str(4 * size))
    reg = Server(work / "reghost", base)
    servers.append(reg)
    front = Server(work / "front", dict(base, VHDKIT_REGISTRY_URL=reg.url))
    servers.append(front)
    who = "bench:admin"
    hosts = {"registry host": reg, "forwarding host": front}

    sc = SwiftStore(SwiftConfig.from_env(), "bench")
    sc.create_container("peer")
    url, stoken = sc.storage_url, sc._connection().token
    swift = [sys.executable, "-m", "swiftclient.shell", "--os-storage-url", url, "--os-auth-token", stoken]

    def new_image(c) -> str:
        r = c.post("/v2/images", json={"name": "bench", "disk_format": "raw", "container_format": "bare"})
        r.raise_for_status()
        return r.json()["id"]

    curl = ["curl", "-sS", "--fail", "-H", f"X-Auth-Token: {who}"]
    runs = []
    kept = {}
    for i in range(a.runs):
        row = {"load_before": os.getloadavg()[0]}
        order = list(hosts.items()) if i % 2 == 0 else list(reversed(hosts.items()))
        for name, srv in order:
            with httpx.Client(base_url=srv.url, headers={"X-Auth-Token": who}, timeout=600) as c:
                iid = new_image(c)
                row[f"{name} upload_s"] = _timed(curl + ["-T", str(src), "-H", "Content-Type: application/octet-stream",
                                                         f"{srv.url}/v2/images/{iid}/file"])
                assert c.get(f"/v2/images/{iid}").json()["size"] == size
                row[f"{name} download_s"] = _timed(curl + ["-o", "/dev/null", f"{srv.url}/v2/images/{iid}/file"])
                old = kept.get(name)
                if old:
                    c.delete(f"/v2/images/{old}")
                kept[name] = iid
        row["swift upload_s"] = _timed(swift + ["upload", "--segment-size", "200M", "--object-name", "data.bin",
                                                "peer", str(src)], cwd=str(work), env=base)
        row["swift download_s"] = _timed(swift + ["download", "-o", "/dev/null", "peer", "data.bin"], env=base)
        runs.append(row)
        print(json.dumps(row), file=sys.stderr)
    calls = {}
    for rnd in range(2):
        for name, srv in (hosts.items() if rnd == 0 else reversed(hosts.items())):
            calls.setdefault(name, []).append(_wrk(f"{srv.url}/v2/images/{kept[name]}", who, a.calls_seconds))

    def med(k):
        return statistics.median(r[k] for r in runs)

    keys = [k for k in runs[0] if k.endswith("_s")]
    res = {"size": size, "runs": runs, "median_s": {k: med(k) for k in keys},
           "show": {n: {"rps": statistics.median(x["rps"] for x in v),
                        "p50_ms": statistics.median(x["p50_ms"] for x in v), "samples": v}
                    for n, v in calls.items()},
           "forwarding_host_peak_rss_mib": front.rss_peak_kib() / 1024,
           "registry_host_peak_rss_mib": reg.rss_peak_kib() / 1024, "cpus": os.cpu_count()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    gib = size / (1 << 30)
    m = res["median_s"]
    lines = [
        f"# A forwarding API host against the registry host, {gib:g} GiB of image data in a local Swift",
        "",
        f"{a.runs} runs (hosts alternating), medians; 200 MiB segments; {os.cpu_count()} cores shared by Swift, "
        "both API hosts and the clients.",
        "",
        "| what | registry host s | forwarding host s | forwarding / registry | python-swiftclient s |",
        "|---|---|---|---|---|",
        f"| upload (`curl -T`; peer `swift upload --segment-size 200M`) | {m['registry host upload_s']:.2f} | "
        f"{m['forwarding host upload_s']:.2f} | {m['forwarding host upload_s'] / m['registry host upload_s']:.2f} | "
        f"{m['swift upload_s']:.2f} |",
        f"| download (`curl -o /dev/null`; peer `swift download`) | {m['registry host download_s']:.2f} | "
        f"{m['forwarding host download_s']:.2f} | "
        f"{m['forwarding host download_s'] / m['registry host download_s']:.2f} | {m['swift download_s']:.2f} |",
        "",
        "| `GET /v2/images/ID`, wrk -t2 -c8 | requests/s | median latency ms |",
        "|---|---|---|",
    ] + [f"| {n} | {v['rps']:.0f} | {v['p50_ms']:.1f} |" for n, v in res["show"].items()] + [
        "",
        f"Peak RSS: forwarding host {res['forwarding_host_peak_rss_mib']:.0f} MiB, registry host "
        f"{res['registry_host_peak_rss_mib']:.0f} MiB (whole runs).",
        "",
        "| run | load before | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ] + [f"| {i + 1} | {r['load_before']:.1f} | " + " | ".join(f"{r[k]:.2f}" for k in keys) + " |"
         for i, r in enumerate(runs)]
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
