"""Workers on other hosts: `vhdkit worker` processes that open the registry's
database and Swift themselves (helpers_hosts), beside a `vhdkit serve` host.
They claim, heartbeat and finish tasks in the database and read and write the
bytes in Swift; a worker killed mid-task loses its lease and the task is
retried; one paused past its lease meets the fence and removes only its own
data."""
from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from helpers_hosts import MiB, hosts  # noqa: F401 - the fixture
from vhdkit.pack import segments

FAST = {"VHDKIT_LEASE_SECONDS": "1", "VHDKIT_HEARTBEAT_SECONDS": "0.2"}


@pytest.fixture(scope="module")
def api(hosts):
    with hosts.server("api") as s:
        yield s


@pytest.fixture
def customer(hosts, tmp_path):
    """A customer account with a VHD in its Swift container `images` and an empty `exports`."""
    acct = "c" + uuid.uuid4().hex[:12]
    st = hosts.customer(acct, tmp_path)
    return acct, st


def _run(hosts, name, *args, timeout=240, kill_at_stage="", **extra) -> subprocess.CompletedProcess:
    p = hosts.worker(name, *args, kill_at_stage=kill_at_stage, **extra)
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _create(api, acct, body):
    with api.http(f"{acct}:admin") as c:
        r = c.post("/v2/tasks", json=body)
        assert r.status_code == 201, r.text
        return r.json()["id"]


def _task(api, acct, tid):
    with api.http(f"{acct}:admin") as c:
        return c.get(f"/v2/tasks/{tid}").json()


def _bases(hosts, image_id):
    return {re.match(r"[0-9a-f-]{36}\.[0-9a-f]{32}", n).group(0) for n in hosts.blob_objects(image_id)}


def test_a_worker_elsewhere_imports_and_exports(hosts, api, customer, tmp_path):
    acct, st = customer
    tid = _create(api, acct, {"type": "import", "input": {"import_from": "images/d.vhd",
                                                          "image_properties": {"name": "elsewhere"}}})
    r = _run(hosts, "w1", "--until-idle")
    assert r.returncode == 0, r.stderr
    t = _task(api, acct, tid)
    assert t["status"] == "success", t
    image_id = t["result"]["image_id"]
    with api.http(f"{acct}:admin") as c:
        img = c.get(f"/v2/images/{image_id}").json()
        assert img["status"] == "active" and img["virtual_size"] == 12 * MiB
        data = c.get(f"/v2/images/{image_id}/file").content  # served by the API host from Swift
    assert len(data) == img["size"]
    assert hashlib.md5(data).hexdigest() == img["checksum"]  # the worker's hashes, checked independently
    assert hashlib.sha512(data).hexdigest() == img["os_hash_value"]

    tid = _create(api, acct, {"type": "export", "input": {"image_uuid": image_id,
                                                          "receiving_swift_container": "exports"}})
    r = _run(hosts, "w2", "--until-idle")
    assert r.returncode == 0, r.stderr
    assert _task(api, acct, tid)["status"] == "success"
    segments.join(st, "exports", f"{image_id}.vhd", tmp_path / "out.vhd")
    q = subprocess.run(["qemu-img", "compare", "-f", "vpc", "-F", "vpc", str(tmp_path / "d.vhd"),
                        str(tmp_path / "out.vhd")], capture_output=True, text=True)
    assert q.returncode == 0, q.stdout + q.stderr


def test_a_worker_killed_mid_task_loses_its_lease_and_the_task_is_retried(hosts, api, customer):
    acct, _ = customer
    tid = _create(api, acct, {"type": "import", "input": {"import_from": "images/d.vhd",
                                                          "image_properties": {"name": "k"}}})
    r = _run(hosts, "wa", "--once", kill_at_stage="store", **FAST)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    assert _task(api, acct, tid)["status"] == "processing"
    time.sleep(1.5)  # the dead worker's lease runs out
    r = _run(hosts, "wb", "--until-idle", **FAST)
    assert r.returncode == 0, r.stderr
    t = _task(api, acct, tid)
    assert t["status"] == "success", t
    image_id = t["result"]["image_id"]
    # what the killed worker stored in Swift is referenced by no image: the
    # cleanup removes it, and only the registered image's data is left
    assert hosts.cleanup()["errors"] == []
    assert len(_bases(hosts, image_id)) == 1
    with api.http(f"{acct}:admin") as c:
        got = c.get(f"/v2/images/{image_id}/file")
        assert got.status_code == 200
        assert hashlib.md5(got.content).hexdigest() == c.get(f"/v2/images/{image_id}").json()["checksum"]


def test_a_worker_paused_past_its_lease_then_resumed_leaves_the_newer_attempts_image(hosts, api, customer):
    acct, _ = customer
    tid = _create(api, acct, {"type": "import", "input": {"import_from": "images/d.vhd",
                                                          "image_properties": {"name": "paused"}}})
    a = hosts.worker("pa", "--once", kill_at_stage="store:stop", **FAST)
    try:
        deadline = time.monotonic() + 120
        while Path(f"/proc/{a.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            assert a.poll() is None and time.monotonic() < deadline, a.communicate()
            time.sleep(0.02)
        time.sleep(1.5)  # A's lease runs out
        r = _run(hosts, "pb", "--once", **FAST)
        assert r.returncode == 0, r.stderr
    finally:
        a.send_signal(signal.SIGCONT)
    _, err = a.communicate(timeout=120)
    assert a.returncode == 0, err
    assert "lease lost" in err, err  # A met the fence
    t = _task(api, acct, tid)
    assert t["status"] == "success", t
    image_id = t["result"]["image_id"]
    with api.http(f"{acct}:admin") as c:
        img = c.get(f"/v2/images/{image_id}").json()
        assert img["status"] == "active"
        data = c.get(f"/v2/images/{image_id}/file").content
    assert hashlib.md5(data).hexdigest() == img["checksum"] and len(data) == img["size"]
    assert len(_bases(hosts, image_id)) == 1  # B's registered data only: A removed its own
