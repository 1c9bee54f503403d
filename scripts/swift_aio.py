#!/usr/bin/env python3
"""A real OpenStack Swift all-in-one on loopback, for vhdkit's tests and benchmarks.

    python scripts/swift_aio.py start [--dir DIR]   # prints the env file path
    python scripts/swift_aio.py stop  [--dir DIR]
    python scripts/swift_aio.py status [--dir DIR]

It uses Debian's Swift packages (installed by scripts/setup): account,
container, object and proxy servers (workers = 0, single replica, part power 6)
on free 127.0.0.1 ports, storage under DIR/srv, memcached for tempauth.  The
servers run in the system Python (`/usr/bin/python3`, where Debian's `swift`
module lives) with `-v`, logging to DIR/log/.  Debian's /etc/swift/swift.conf
(hash prefix/suffix and storage policy 0) is what Swift 2.30 reads; if it is
missing, a minimal one is written (CI runs as root).

`start` writes DIR/env with VHDKIT_SWIFT_AUTH_URL, VHDKIT_SWIFT_USER,
VHDKIT_SWIFT_KEY (a reseller admin, so one Swift account per vhdkit account,
``AUTH_<account>``) and VHDKIT_STORE=swift+http://..., and exits when the proxy
answers its healthcheck (about 3 s).  Nothing listens beyond 127.0.0.1.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SYS_PY = "/usr/bin/python3"
DEFAULT_DIR = Path(os.environ.get("VHDKIT_SWIFT_DIR", "/tmp/vhdkit-swift"))
SWIFT_CONF = Path("/etc/swift/swift.conf")
USER, KEY = "admin:admin", "admin"

_SERVER_CONF = """[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
mount_check = false
devices = {dir}/srv
swift_dir = {dir}/etc
user = {user}
log_name = {name}

[pipeline:main]
pipeline = {name}

[app:{name}]
use = egg:swift#{egg}
"""

_PROXY_CONF = """[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
swift_dir = {dir}/etc
user = {user}
log_name = proxy-server

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempauth copy slo dlo versioned_writes proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

{filters}"""

#: the proxy pipeline's filters: (section, egg, options)
_FILTERS = (
    ("tempauth", "tempauth", "user_admin_admin = admin .admin .reseller_admin\nuser_test_tester = testing .admin"),
    ("cache", "memcache", "memcache_servers = 127.0.0.1:{memcached}"),
    *((name, name.replace("-", "_"), "") for name in ("catch_errors", "gatekeeper", "healthcheck", "proxy-logging",
                                                       "listing_formats", "bulk", "copy")),
    *((name, name, "rate_limit_segments_per_sec = 0") for name in ("slo", "dlo")),
    ("versioned_writes", "versioned_writes", ""),
)
_PROXY_CONF = _PROXY_CONF.replace("{filters}", "".join(
    f"[filter:{name}]\nuse = egg:swift#{egg}\n" + (f"{options}\n" if options else "")
    for name, egg, options in _FILTERS))

_MIN_SWIFT_CONF = """[swift-hash]
swift_hash_path_suffix = vhdkit-aio
swift_hash_path_prefix = vhdkit-aio

[storage-policy:0]
name = Policy-0
default = yes
"""

_RINGS = """
import sys
from swift.common.ring import RingBuilder
etc, ports = sys.argv[1], sys.argv[2:]
for kind, port in zip(("account", "container", "object"), ports):
    b = RingBuilder(6, 1, 1)
    b.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1", "port": int(port),
               "device": "d1", "weight": 100})
    b.rebalance()
    b.get_ring().save(f"{etc}/{kind}.ring.gz")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def stop(d: Path) -> None:
    state = d / "state.json"
    if not state.exists():
        return
    pids = json.loads(state.read_text())["pids"]
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    state.unlink()


def status(d: Path, name: str) -> None:
    """Print the ports and live processes of the servers started in ``d``;
    exit 1 unless every one is alive."""
    st = d / "state.json"
    if not st.exists():
        sys.exit(f"{name}: not running")
    s = json.loads(st.read_text())
    alive = [p for p in s["pids"] if _alive(p)]
    print(json.dumps({"ports": s["ports"], "alive": len(alive), "of": len(s["pids"])}))
    sys.exit(0 if len(alive) == len(s["pids"]) else 1)


#: What the Swift servers must not inherit: the sanitizer pass of scripts/test
#: preloads libasan into every process it starts, and Swift is not ours to check.
_SCRUB = ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS", "PYTHONPATH", "PYTHONHOME")


def server_env() -> dict:
    """The environment for Swift's servers, memcached and the ring builder."""
    return {k: v for k, v in os.environ.items() if k not in _SCRUB}


def start(d: Path) -> Path:
    for tool in (SYS_PY, "/usr/bin/swift-proxy-server", "/usr/bin/memcached"):
        if not os.path.exists(tool):
            sys.exit(f"swift_aio: {tool} is missing: run scripts/setup (Debian swift packages, memcached)")
    stop(d)
    if d.exists():
        shutil.rmtree(d)
    for sub in ("etc", "srv/d1", "log", "run"):
        (d / sub).mkdir(parents=True)
    if not SWIFT_CONF.exists():
        SWIFT_CONF.parent.mkdir(parents=True, exist_ok=True)
        SWIFT_CONF.write_text(_MIN_SWIFT_CONF)
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    ports = {k: _free_port() for k in ("account", "container", "object", "proxy", "memcached")}
    etc = d / "etc"
    for name, egg in (("account", "account"), ("container", "container"), ("object", "object")):
        (etc / f"{name}-server.conf").write_text(_SERVER_CONF.format(
            port=ports[name], dir=d, user=user, name=f"{name}-server", egg=egg))
    (etc / "proxy-server.conf").write_text(_PROXY_CONF.format(port=ports["proxy"], dir=d, user=user,
                                                              memcached=ports["memcached"]))
    subprocess.run([SYS_PY, "-c", _RINGS, str(etc), str(ports["account"]), str(ports["container"]),
                    str(ports["object"])], check=True, env=server_env())
    pids = []

    def spawn(name, argv):
        log = open(d / "log" / f"{name}.log", "wb")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, cwd="/", env=server_env())
        pids.append(p.pid)

    spawn("memcached", ["/usr/bin/memcached", "-l", "127.0.0.1", "-p", str(ports["memcached"]), "-U", "0",
                        "-u", user, "-m", "64"])
    for name in ("account", "container", "object", "proxy"):
        spawn(name, [SYS_PY, f"/usr/bin/swift-{name}-server", str(etc / f"{name}-server.conf"), "-v"])
    (d / "state.json").write_text(json.dumps({"pids": pids, "ports": ports}))
    url = f"http://127.0.0.1:{ports['proxy']}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthcheck", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or not all(_alive(p) for p in pids):
            logs = "".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in (d / "log").iterdir())
            stop(d)
            sys.exit(f"swift_aio: Swift did not come up\n{logs}")
        time.sleep(0.1)
    # the account servers need a moment after the proxy: wait for a real request
    auth = f"{url}/auth/v1.0"
    deadline = time.monotonic() + 30
    while True:
        try:
            req = urllib.request.Request(auth, headers={"X-Auth-User": USER, "X-Auth-Key": KEY})
            with urllib.request.urlopen(req, timeout=5) as r:
                token, storage = r.headers["X-Auth-Token"], r.headers["X-Storage-Url"]
            with urllib.request.urlopen(urllib.request.Request(storage, headers={"X-Auth-Token": token}),
                                        timeout=5) as r:
                if r.status in (200, 204):
                    break
        except OSError:
            if time.monotonic() > deadline:
                stop(d)
                sys.exit("swift_aio: Swift's auth or account server does not answer")
            time.sleep(0.2)
    env = d / "env"
    env.write_text(f"VHDKIT_SWIFT_AUTH_URL={auth}\nVHDKIT_SWIFT_USER={USER}\nVHDKIT_SWIFT_KEY={KEY}\n"
                   f"VHDKIT_STORE=swift+{url}\n")
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["start", "stop", "status"])
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    a = ap.parse_args()
    d = a.dir.resolve()
    if a.action == "start":
        t = time.monotonic()
        env = start(d)
        print(env)
        print(f"swift_aio: up in {time.monotonic() - t:.1f} s", file=sys.stderr)
    elif a.action == "stop":
        stop(d)
    else:
        status(d, "swift_aio")


if __name__ == "__main__":
    main()
