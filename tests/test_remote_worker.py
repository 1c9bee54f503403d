"""Workers on a "second host": `vhdkit worker --api URL` with its own empty
VHDKIT_HOME, against a `vhdkit serve` subprocess (the registry host) and the
real Swift.  The worker claims, heartbeats and finishes tasks and registers
image data through the API's internal routes; the bytes go to and come from
Swift directly.  A missing or wrong service token is refused; a remote worker
killed mid-task loses its lease and the task is retried."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from conftest import ROOT
from helpers_api import ApiServer
from helpers_swift import make_test_vhd
from hooked import vhdkit_cmd
from vhdkit import segments
from vhdkit.swiftstore import SwiftConfig, SwiftStore

MiB = 1 << 20
TOKEN = "s3cret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def host(swift_env, tmp_path_factory):
    """The registry host: `vhdkit serve` with image data in Swift and a service token."""
    env = dict(swift_env, VHDKIT_BLOB_STORE="swift", VHDKIT_BLOB_ACCOUNT="rw" + uuid.uuid4().hex[:10],
               VHDKIT_BLOB_SEGMENT_SIZE=str(MiB), VHDKIT_SERVICE_TOKEN=TOKEN)
    with ApiServer(tmp_path_factory.mktemp("apihost"), env=env) as server:
        server.env = env
        yield server


@pytest.fixture
def customer(host, tmp_path):
    """A customer account with a VHD in its Swift container `images` and an empty `exports`."""
    acct = "c" + uuid.uuid4().hex[:12]
    st = SwiftStore(SwiftConfig.from_env(host.env), acct)
    st.create_container("images")
    st.create_container("exports")
    make_test_vhd(tmp_path / "d.vhd")
    with open(tmp_path / "d.vhd", "rb") as f:
        st.put("images", "d.vhd", f)
    return acct, st


def _worker(host, home, *args, token=TOKEN, env_extra=None, timeout=240, hook=""):
    """`vhdkit worker --api` as a process on another host: its own empty home, no
    registry; the Swift and blob settings and the service token only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VHDKIT_")}
    env.update({k: v for k, v in host.env.items() if k != "VHDKIT_SERVICE_TOKEN"})
    if token is not None:
        env["VHDKIT_SERVICE_TOKEN"] = token
    env.update(VHDKIT_SEGMENT_SIZE=str(MiB), PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run([*vhdkit_cmd(kill_at_stage=hook), "worker", "--api", host.url, "--data", str(home),
                           *args, "--json"], env=env, capture_output=True, text=True, timeout=timeout)


def _create(host, acct, body):
    with host.http(f"{acct}:admin") as c:
        r = c.post("/v2/tasks", json=body)
        assert r.status_code == 201, r.text
        return r.json()["id"]


def _task(host, acct, tid):
    with host.http(f"{acct}:admin") as c:
        return c.get(f"/v2/tasks/{tid}").json()


def test_remote_worker_imports_and_exports_through_the_api(host, customer, tmp_path):
    acct, st = customer
    home = tmp_path / "second-host"
    tid = _create(host, acct, {"type": "import", "input": {"import_from": "images/d.vhd",
                                                           "image_properties": {"name": "remote"}}})
    r = _worker(host, home, "--until-idle")
    assert r.returncode == 0, r.stderr
    t = _task(host, acct, tid)
    assert t["status"] == "success", t
    image_id = t["result"]["image_id"]
    with host.http(f"{acct}:admin") as c:
        img = c.get(f"/v2/images/{image_id}").json()
        assert img["status"] == "active" and img["virtual_size"] == 12 * MiB
        data = c.get(f"/v2/images/{image_id}/file").content  # served by the API host from Swift
    assert len(data) == img["size"]
    assert hashlib.md5(data).hexdigest() == img["checksum"]  # the worker's hashes, checked independently
    assert hashlib.sha512(data).hexdigest() == img["os_hash_value"]

    tid = _create(host, acct, {"type": "export", "input": {"image_uuid": image_id,
                                                           "receiving_swift_container": "exports"}})
    r = _worker(host, home, "--until-idle")
    assert r.returncode == 0, r.stderr
    t = _task(host, acct, tid)
    assert t["status"] == "success", t
    man = segments.join(st, "exports", f"{image_id}.vhd", tmp_path / "out.vhd")
    assert len(man.segments) > 1
    q = subprocess.run(["qemu-img", "compare", "-f", "vpc", "-F", "vpc", str(tmp_path / "d.vhd"),
                        str(tmp_path / "out.vhd")], capture_output=True, text=True)
    assert q.returncode == 0, q.stdout + q.stderr
    # the second host kept no registry and no image data
    assert not (home / "registry.db").exists()
    leftovers = [p for p in home.rglob("*") if p.is_file()]
    assert leftovers == [], leftovers


def test_internal_routes_refuse_missing_or_wrong_token(host, customer, tmp_path):
    acct, _ = customer
    body = {"worker_id": "intruder", "lease_seconds": 5}
    with httpx.Client(base_url=host.url, timeout=10) as c:
        r = c.post("/internal/v1/claim", json=body)
        assert r.status_code == 401 and r.json()["error"]["code"] == 401
        r = c.post("/internal/v1/claim", json=body, headers={"X-Service-Token": TOKEN + "x"})
        assert r.status_code == 403 and "wrong service token" in r.json()["error"]["message"]
        # a customer's identity headers do not open the internal routes
        r = c.post("/internal/v1/claim", json=body, headers={"X-Auth-Token": f"{acct}:admin"})
        assert r.status_code == 401
    tid = _create(host, acct, {"type": "import", "input": {"import_from": "images/d.vhd"}})
    r = _worker(host, tmp_path / "h", "--once", token="wrong")
    assert r.returncode == 1 and "wrong service token" in r.stderr
    r = _worker(host, tmp_path / "h", "--once", token=None)
    assert r.returncode == 1 and "VHDKIT_SERVICE_TOKEN" in r.stderr
    # a worker elsewhere cannot use directory stores: refused before it claims anything
    r = _worker(host, tmp_path / "h", "--once", env_extra={"VHDKIT_STORE": "dir:/nonexistent"})
    assert r.returncode == 1 and "VHDKIT_STORE=swift" in r.stderr
    r = _worker(host, tmp_path / "h", "--once", env_extra={"VHDKIT_BLOB_STORE": "local"})
    assert r.returncode == 1 and "VHDKIT_BLOB_STORE=swift" in r.stderr
    assert _task(host, acct, tid)["status"] == "pending"  # nothing was claimed
    with httpx.Client(base_url=host.url, timeout=10, headers={"X-Service-Token": TOKEN}) as c:
        r = c.post("/internal/v1/claim", json={"worker_id": "cleaner", "lease_seconds": 1})
        assert r.status_code == 200 and r.json()["task"]["id"] == tid  # take it out of the later tests' way
        r = c.post("/internal/v1/finish", json={"task_id": tid, "worker_id": "cleaner", "status": "failure",
                                                 "message": "test"})
        assert r.status_code == 200


def test_internal_routes_are_disabled_without_a_token_on_the_api_host(tmp_path, monkeypatch):
    from starlette.testclient import TestClient

    from vhdkit.api.app import create_app
    from vhdkit.registry import Registry

    monkeypatch.delenv("VHDKIT_SERVICE_TOKEN", raising=False)
    with TestClient(create_app(registry=Registry(str(tmp_path / "h")))) as c:
        r = c.post("/internal/v1/claim", json={"worker_id": "w"}, headers={"X-Service-Token": "anything"})
        assert r.status_code == 403 and "disabled" in r.json()["error"]["message"]


def test_remote_worker_killed_mid_task_loses_its_lease_and_the_task_is_retried(host, customer, tmp_path):
    acct, st = customer
    tid = _create(host, acct, {"type": "import", "input": {"import_from": "images/d.vhd",
                                                           "image_properties": {"name": "k"}}})
    fast = {"VHDKIT_LEASE_SECONDS": "1", "VHDKIT_HEARTBEAT_SECONDS": "0.2"}
    r = _worker(host, tmp_path / "a", "--once", hook="store", env_extra=fast)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    t = _task(host, acct, tid)
    assert t["status"] == "processing"
    time.sleep(1.5)  # the dead worker's lease runs out on the API host
    r = _worker(host, tmp_path / "b", "--until-idle", env_extra=fast)
    assert r.returncode == 0, r.stderr
    with httpx.Client(base_url=host.url, timeout=10, headers={"X-Service-Token": TOKEN}) as c:
        full = c.post("/internal/v1/show_task", json={"caller": {"account": acct, "service": True},
                                                      "task_id": tid}).json()["task"]
    assert full["status"] == "success" and full["attempts"] == 2, full
    image_id = full["result"]["image_id"]
    with host.http(f"{acct}:admin") as c:
        assert c.get(f"/v2/images/{image_id}").json()["status"] == "active"
    # what the killed worker stored in Swift has no registry row: the registry
    # host's cleanup removes it (grace 0 here; nothing else is in flight), and
    # only the registered image's data is left
    blobs = SwiftStore(SwiftConfig.from_env(host.env), host.env["VHDKIT_BLOB_ACCOUNT"])
    env = dict(os.environ, **host.env, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "vhdkit", "cleanup", "--data", str(host.data), "--grace", "0",
                        "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["errors"] == []
    names = [o["name"] for o in blobs.listing("images")]
    mine = [n for n in names if n.startswith(image_id)]
    bases = {re.match(r"[0-9a-f-]{36}\.[0-9a-f]{32}", n).group(0) for n in mine}
    assert len(bases) == 1, mine  # one blob of this image: the registered one
    with host.http(f"{acct}:admin") as c:
        data = c.get(f"/v2/images/{image_id}/file")
        assert data.status_code == 200 and hashlib.md5(data.content).hexdigest() == \
            c.get(f"/v2/images/{image_id}").json()["checksum"]


def test_a_remote_worker_paused_past_its_lease_then_resumed_leaves_the_newer_attempts_image(host, customer, tmp_path):
    """Fencing over the internal routes: worker A (paused mid-store with SIGSTOP)
    resumes after worker B finished the task; A's registration carries its
    stale lease and is refused, A removes only its own data in Swift."""
    acct, st = customer
    tid = _create(host, acct, {"type": "import", "input": {"import_from": "images/d.vhd",
                                                           "image_properties": {"name": "paused"}}})
    fast = {"VHDKIT_LEASE_SECONDS": "1", "VHDKIT_HEARTBEAT_SECONDS": "0.2"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("VHDKIT_")}
    env.update(host.env, VHDKIT_SEGMENT_SIZE=str(MiB), PYTHONPATH=str(ROOT), **fast)
    a = subprocess.Popen([*vhdkit_cmd(kill_at_stage="store:stop"), "worker", "--api", host.url, "--data", str(tmp_path / "a"),
                          "--once", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while Path(f"/proc/{a.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            assert a.poll() is None and time.monotonic() < deadline, a.communicate()
            time.sleep(0.02)
        time.sleep(1.5)  # A's lease runs out on the API host
        r = _worker(host, tmp_path / "b", "--once", env_extra=fast)
        assert r.returncode == 0, r.stderr
    finally:
        os.kill(a.pid, signal.SIGCONT)
    _, err = a.communicate(timeout=120)
    assert a.returncode == 0, err
    assert "lease lost" in err, err  # A met the fence
    t = _task(host, acct, tid)
    assert t["status"] == "success", t
    image_id = t["result"]["image_id"]
    with host.http(f"{acct}:admin") as c:
        img = c.get(f"/v2/images/{image_id}").json()
        assert img["status"] == "active"
        data = c.get(f"/v2/images/{image_id}/file").content
    assert hashlib.md5(data).hexdigest() == img["checksum"] and len(data) == img["size"]
    blobs = SwiftStore(SwiftConfig.from_env(host.env), host.env["VHDKIT_BLOB_ACCOUNT"])
    bases = {re.match(r"[0-9a-f-]{36}\.[0-9a-f]{32}", o["name"]).group(0)
             for o in blobs.listing("images") if o["name"].startswith(image_id)}
    assert len(bases) == 1, bases  # B's registered data only: A removed its own
