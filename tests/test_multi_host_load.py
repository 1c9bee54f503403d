"""Three `vhdkit serve` hosts and three `vhdkit worker` processes on one
registry database (PostgreSQL, helpers_pg) and one
Swift all-in-one, 60 s of mixed traffic from several client threads, one API
host and one worker killed with SIGKILL half-way.  Then: no lost or doubled
update, every task ran to success or to a clean failure (its attempts
recorded), every download byte-identical to its upload, and after `vhdkit
cleanup` no object in Swift that no image refers to.  Prints the counts."""
from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import re
import signal
import threading
import time
import uuid

import httpx
import pytest

from helpers_hosts import LEASE, MiB, Hosts, database_env
from vhdkit.store.swift import SwiftConfig, SwiftStore

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("VHDKIT_TEST_LOAD_SECONDS", "60"))
CLIENTS = 6
ACCOUNT = "load" + uuid.uuid4().hex[:8]        # every client's own images, and the shared counter image
PARTNER = "part" + uuid.uuid4().hex[:8]        # the account images are shared with
FAST = {"VHDKIT_LEASE_SECONDS": "3", "VHDKIT_HEARTBEAT_SECONDS": "0.5"}
PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}


class Unknown(Exception):
    """The request may or may not have taken effect (the connection was lost mid-way)."""


class Cluster:
    def __init__(self, hosts: Hosts) -> None:
        self.hosts = hosts
        self.servers = [hosts.server(f"api{i}") for i in range(3)]
        self.workers = []
        self.down = set()           # indexes of killed servers
        self.counts = collections.Counter()
        self.lock = threading.Lock()

    def count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def request(self, who: str, method: str, path: str, **kw) -> httpx.Response:
        """One request through a random live host; a host that refuses the
        connection (killed) is marked down and another one is tried (the
        request never reached it).  A connection lost mid-request: Unknown."""
        while True:
            live = [i for i in range(3) if i not in self.down]
            i = random.choice(live)
            try:
                with httpx.Client(base_url=self.servers[i].url, timeout=120,
                                  headers={"X-Auth-Token": f"{who}:admin"}) as c:
                    r = c.request(method, path, **kw)
            except httpx.ConnectError:
                self.down.add(i)
                continue
            except httpx.TransportError as e:
                self.count("unknown outcome")
                raise Unknown(str(e)) from None
            if r.status_code >= 500:
                self.count(f"HTTP {r.status_code}")
                if r.status_code == 500:
                    raise AssertionError(f"{method} {path}: 500 {r.text}")
                raise Unknown(r.text)
            return r


class Client(threading.Thread):
    KINDS = ["create", "upload", "patch", "tag", "share", "accept", "import_", "export", "download"]

    def __init__(self, n: int, cl: Cluster, counter_id: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.n, self.cl, self.counter_id, self.stop_ev = n, cl, counter_id, stop
        self.rng = random.Random(n)
        self.queued, self.active = [], []        # image ids
        self.data = {}                           # image id -> sha256 of its confirmed upload
        self.patches, self.patch_unknown = 0, None
        self.tags_ok, self.tags_unknown = set(), set()
        self.shared = []                         # image ids shared with PARTNER, not accepted yet
        self.tasks = []                          # (task id, type, expectation)
        self.error = None

    def run(self) -> None:
        try:
            while not self.stop_ev.is_set():
                kind = self.rng.choice(self.KINDS)
                try:
                    getattr(self, kind)()
                except Unknown:
                    pass
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def _ok(self, kind: str, r: httpx.Response, *codes: int) -> bool:
        if r.status_code in codes:
            self.cl.count(kind)
            return True
        self.cl.count(f"{kind} refused {r.status_code}")
        return False

    def create(self) -> None:
        r = self.cl.request(ACCOUNT, "POST", "/v2/images", json={
            "name": f"c{self.n}", "disk_format": "raw", "container_format": "bare", "visibility": "shared"})
        if self._ok("create", r, 201):
            self.queued.append(r.json()["id"])

    def upload(self) -> None:
        if not self.queued:
            return self.create()
        iid = self.queued.pop()
        body = os.urandom(self.rng.randint(64 << 10, 3 * MiB))
        r = self.cl.request(ACCOUNT, "PUT", f"/v2/images/{iid}/file", content=body,
                            headers={"Content-Type": "application/octet-stream"})
        if self._ok("upload", r, 204):
            self.data[iid] = hashlib.sha256(body).hexdigest()
            self.active.append(iid)

    def patch(self) -> None:
        """Replace this client's property on the image every client patches:
        its final value must be the last patch that succeeded."""
        value = str(self.patches + 1)
        try:
            r = self.cl.request(ACCOUNT, "PATCH", f"/v2/images/{self.counter_id}", headers=PATCH,
                                content=json.dumps([{"op": "add", "path": f"/count_{self.n}", "value": value}]))
        except Unknown:
            self.patch_unknown = value
            raise
        if self._ok("patch", r, 200):
            self.patches += 1
            self.patch_unknown = None

    def tag(self) -> None:
        t = f"t{self.n}-{len(self.tags_ok) + len(self.tags_unknown)}"
        try:
            r = self.cl.request(ACCOUNT, "PUT", f"/v2/images/{self.counter_id}/tags/{t}")
        except Unknown:
            self.tags_unknown.add(t)
            raise
        if self._ok("tag", r, 204):
            self.tags_ok.add(t)

    def share(self) -> None:
        if not self.active:
            return self.upload()
        iid = self.rng.choice(self.active)
        r = self.cl.request(ACCOUNT, "POST", f"/v2/images/{iid}/members", json={"member": PARTNER})
        if self._ok("share", r, 200, 409):   # 409: shared already
            self.shared.append(iid)

    def accept(self) -> None:
        if not self.shared:
            return self.share()
        iid = self.shared.pop()
        r = self.cl.request(PARTNER, "PUT", f"/v2/images/{iid}/members/{PARTNER}", json={"status": "accepted"})
        self._ok("accept", r, 200)

    def import_(self) -> None:
        name = f"imp-{self.n}-{uuid.uuid4().hex[:8]}"
        r = self.cl.request(ACCOUNT, "POST", "/v2/tasks", json={"type": "import", "input": {
            "import_from": "images/d.vhd", "image_properties": {"name": name}}})
        if self._ok("import", r, 201):
            self.tasks.append((r.json()["id"], "import", name))

    def export(self) -> None:
        """Export an image one of this client's imports made (a VHD)."""
        imports = [t for t in self.tasks if t[1] == "import"]
        if not imports:
            return self.import_()
        r = self.cl.request(ACCOUNT, "GET", f"/v2/tasks/{self.rng.choice(imports)[0]}")
        if r.json()["status"] != "success":
            return self.download()
        iid = r.json()["result"]["image_id"]
        r = self.cl.request(ACCOUNT, "POST", "/v2/tasks", json={"type": "export", "input": {
            "image_uuid": iid, "receiving_swift_container": "exports"}})
        if self._ok("export", r, 201):
            self.tasks.append((r.json()["id"], "export", iid))

    def download(self) -> None:
        if not self.active:
            return self.upload()
        iid = self.rng.choice(self.active)
        r = self.cl.request(ACCOUNT, "GET", f"/v2/images/{iid}/file")
        if self._ok("download", r, 200):
            assert hashlib.sha256(r.content).hexdigest() == self.data[iid], f"download of {iid} differs"


@pytest.fixture
def cluster(pg_server, swift_env, tmp_path):
    hosts = Hosts(tmp_path, swift_env, database_env(pg_server))
    cl = Cluster(hosts)
    hosts.customer(ACCOUNT, tmp_path)
    try:
        for s in cl.servers:
            s.start()
        cl.workers = [hosts.worker(f"w{i}", "--poll", "0.2", **FAST) for i in range(3)]
        yield cl
    finally:
        for w in cl.workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in cl.workers:
            try:
                w.communicate(timeout=60)
            except Exception:  # noqa: BLE001
                w.kill()
                w.communicate()
        hosts.stop()


def _attempts(cl: Cluster, task_ids, monkeypatch) -> dict:
    """The attempts the registry recorded per task (not part of the Images API)."""
    from vhdkit.registry import Caller, Registry

    for k, v in cl.hosts.env.items():
        monkeypatch.setenv(k, v)
    reg = Registry(str(cl.hosts.data_for("auditor")), cleanup=False)
    try:
        return {tid: reg.show_task(Caller.service(ACCOUNT), tid).attempts for tid in task_ids}
    finally:
        reg.close()


def test_three_hosts_three_workers_mixed_traffic_with_kills(cluster, monkeypatch):
    cl = cluster
    engine = "postgresql" if cl.hosts.db_env else "sqlite (shared file)"
    r = cl.request(ACCOUNT, "POST", "/v2/images", json={"name": "counter", "disk_format": "raw",
                                                        "container_format": "bare"})
    counter_id = r.json()["id"]
    stop = threading.Event()
    clients = [Client(n, cl, counter_id, stop) for n in range(CLIENTS)]
    t0 = time.monotonic()
    for c in clients:
        c.start()
    time.sleep(SECONDS / 2)
    cl.servers[1].proc.send_signal(signal.SIGKILL)    # an API host ...
    cl.workers[1].send_signal(signal.SIGKILL)         # ... and a worker, mid-way
    cl.count("kills: serve")
    cl.count("kills: worker")
    time.sleep(max(0.0, SECONDS - (time.monotonic() - t0)))
    stop.set()
    for c in clients:
        c.join(180)
        assert not c.is_alive()
        if c.error is not None:
            raise c.error

    # every task reaches success or failure (the killed worker's task is retried by another)
    tasks = [t for c in clients for t in c.tasks]
    deadline = time.monotonic() + 300
    final = {}
    while time.monotonic() < deadline:
        for tid, _kind, _x in tasks:
            if tid not in final:
                t = cl.request(ACCOUNT, "GET", f"/v2/tasks/{tid}").json()
                if t["status"] in ("success", "failure"):
                    final[tid] = t
        if len(final) == len(tasks):
            break
        time.sleep(1)
    assert len(final) == len(tasks), [t for t in tasks if t[0] not in final]
    statuses = collections.Counter(f"{k} {final[tid]['status']}" for tid, k, _ in tasks)
    failures = collections.Counter(final[tid]["message"][:80] for tid, _, _ in tasks
                                   if final[tid]["status"] == "failure")
    for tid, kind, x in tasks:
        t = final[tid]
        if t["status"] == "failure":
            assert t["message"], t       # a clean failure says why
            continue
        if kind == "import":           # exactly one image, named as asked, made by this task
            img = cl.request(ACCOUNT, "GET", f"/v2/images/{t['result']['image_id']}").json()
            assert img["status"] == "active" and img["name"] == x, img
            same = cl.request(ACCOUNT, "GET", "/v2/images", params={"name": x}).json()["images"]
            assert [i["id"] for i in same] == [img["id"]], same
    st = SwiftStore(SwiftConfig.from_env(cl.hosts.env), ACCOUNT)
    exported = {o.name for o in st.list("exports")}
    for tid, kind, iid in tasks:
        if kind == "export" and final[tid]["status"] == "success":
            assert f"{iid}.vhd" in exported

    # no lost or doubled update
    img = cl.request(ACCOUNT, "GET", f"/v2/images/{counter_id}").json()
    for c in clients:
        want = {str(c.patches)} | ({c.patch_unknown} if c.patch_unknown else set())
        assert img.get(f"count_{c.n}", "0") in want | ({"0"} if c.patches == 0 else set()), (c.n, img)
        mine = {t for t in img["tags"] if t.startswith(f"t{c.n}-")}
        assert c.tags_ok <= mine <= c.tags_ok | c.tags_unknown, (c.n, mine, c.tags_ok)

    # downloads byte-identical, through every live host
    for c in clients:
        for iid, digest in c.data.items():
            got = cl.request(ACCOUNT, "GET", f"/v2/images/{iid}/file")
            assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == digest

    # after the leases of the killed host's uploads ran out, a cleanup leaves in
    # Swift only objects of images that exist and have data, one blob each
    time.sleep(LEASE + 1)
    report = cl.hosts.cleanup()
    assert report["errors"] == [], report
    bases = collections.defaultdict(set)
    for name in cl.hosts.blob_objects():
        m = re.match(r"([0-9a-f-]{36})\.([0-9a-f]{32})", name)
        assert m, name
        bases[m.group(1)].add(m.group(2))
    for image_id, tokens in bases.items():
        r = cl.request(ACCOUNT, "GET", f"/v2/images/{image_id}")
        assert r.status_code == 200 and r.json()["status"] in ("active", "deactivated"), (image_id, r.text)
        assert len(tokens) == 1, (image_id, tokens)

    attempts = _attempts(cl, [t[0] for t in tasks], monkeypatch)
    assert all(1 <= a <= 2 for a in attempts.values()), attempts   # a retry only after a lost lease
    summary = {"engine": engine, "seconds": SECONDS, "clients": CLIENTS,
               "requests": dict(sorted(cl.counts.items())), "tasks": dict(sorted(statuses.items())),
               "task attempts": dict(collections.Counter(attempts.values())), "task failures": dict(failures), "images with data": sum(len(c.data) for c in clients),
               "blobs in Swift after cleanup": len(bases), "cleanup": report.get("registry")}
    print("\nmulti-host load:", json.dumps(summary, indent=1))
