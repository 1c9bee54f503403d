"""Several API hosts, one registry: `vhdkit serve` processes that each open
the same registry database and keep image data in the same real Swift (see
helpers_hosts).  Every call made on any host is seen by every other; an
upload holds its image with a lease in the database that its host renews,
so a host killed mid-upload leaves nothing behind once the lease runs out,
and a host paused past its lease cannot commit over the upload that took
over.  A Swift that does not answer is 503 with a JSON body naming no host.
The HTTP and python-glanceclient suites run again against one of the hosts;
workers on other hosts are in test_multi_worker.py."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import threading
import time
import uuid

import httpx
import pytest

from helpers_api import ApiServer, free_port
from helpers_hosts import LEASE, MiB, hosts  # noqa: F401 - the fixture


@pytest.fixture(scope="module")
def host_a(hosts):
    with hosts.server("a", VHDKIT_API_MAX_IMAGE_SIZE=str(64 * MiB)) as s:
        yield s


@pytest.fixture(scope="module")
def host_b(hosts):
    with hosts.server("b") as s:
        yield s


@pytest.fixture(scope="module")
def host_c(hosts):
    with hosts.server("c") as s:
        yield s


def _new_image(c, **fields) -> dict:
    r = c.post("/v2/images", json={"name": "m", "disk_format": "raw", "container_format": "bare", **fields})
    assert r.status_code == 201, r.text
    return r.json()


def _put(c, image_id: str, data, **kw):
    return c.put(f"/v2/images/{image_id}/file", content=data,
                 headers={"Content-Type": "application/octet-stream"}, **kw)


def test_every_host_sees_every_other_hosts_calls(hosts, host_a, host_b, host_c):
    owner, member = "own" + uuid.uuid4().hex[:8], "mem" + uuid.uuid4().hex[:8]
    data = os.urandom(3 * MiB + 12345)   # four segments of 1 MiB in Swift
    with host_a.http(f"{owner}:admin") as a, host_b.http(f"{owner}:admin") as b, \
            host_c.http(f"{owner}:admin") as r, host_b.http(f"{member}:admin") as mb:
        img = _new_image(a, name="shared-one", visibility="shared", os_distro="ubuntu")
        iid = img["id"]
        assert _put(b, iid, data).status_code == 204
        shown = r.get(f"/v2/images/{iid}").json()
        assert shown["status"] == "active" and shown["size"] == len(data)
        assert shown["checksum"] == hashlib.md5(data).hexdigest()
        assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
        assert a.get(f"/v2/images/{iid}").json() == shown == b.get(f"/v2/images/{iid}").json()
        # the bytes are in Swift, not on any API host's disk
        assert len([n for n in hosts.blob_objects(iid) if "-0000" in n]) == 4
        assert not [p for p in host_b.data.rglob("blobs/**/*") if p.is_file() and p.stat().st_size]
        # downloads and ranges from any host, across segment boundaries
        got = a.get(f"/v2/images/{iid}/file")
        assert got.status_code == 200 and got.content == data
        assert got.headers["content-md5"] == hashlib.md5(data).hexdigest()
        part = b.get(f"/v2/images/{iid}/file", headers={"Range": f"bytes={MiB - 10}-{2 * MiB + 9}"})
        assert part.status_code == 206 and part.content == data[MiB - 10:2 * MiB + 10]
        # tags and properties on one host, filters on another
        assert a.put(f"/v2/images/{iid}/tags/gold").status_code == 204
        patch = b.patch(f"/v2/images/{iid}", content=json.dumps([{"op": "add", "path": "/os_version",
                                                                  "value": "24.04"}]),
                        headers={"Content-Type": "application/openstack-images-v2.1-json-patch"})
        assert patch.status_code == 200, patch.text
        listed = r.get("/v2/images", params={"tag": "gold", "os_version": "24.04"}).json()["images"]
        assert [i["id"] for i in listed] == [iid]
        # sharing: added on one host, accepted on another, listed on a third
        assert a.post(f"/v2/images/{iid}/members", json={"member": member}).status_code == 200
        assert mb.get(f"/v2/images/{iid}").status_code == 200          # visible to the member ...
        assert iid not in [i["id"] for i in mb.get("/v2/images").json()["images"]]  # ... but not listed yet
        r2 = mb.put(f"/v2/images/{iid}/members/{member}", json={"status": "accepted"})
        assert r2.status_code == 200 and r2.json()["status"] == "accepted"
        with host_c.http(f"{member}:admin") as mr:
            assert iid in [i["id"] for i in mr.get("/v2/images").json()["images"]]
        members = b.get(f"/v2/images/{iid}/members").json()["members"]
        assert [(m["member_id"], m["status"]) for m in members] == [(member, "accepted")]
        # deactivate on one host, download refused on another; reactivate; delete
        assert b.post(f"/v2/images/{iid}/actions/deactivate").status_code == 204
        assert mb.get(f"/v2/images/{iid}/file").status_code == 403
        assert a.post(f"/v2/images/{iid}/actions/reactivate").status_code == 204
        assert b.delete(f"/v2/images/{iid}").status_code == 204
        assert a.get(f"/v2/images/{iid}").status_code == 404
        assert hosts.blob_objects(iid) == []                      # its data left Swift with it
        # a task created on one host is every host's
        t = a.post("/v2/tasks", json={"type": "import", "input": {"import_from": "nowhere/x.vhd"}})
        assert t.status_code == 201, t.text
        assert r.get(f"/v2/tasks/{t.json()['id']}").json()["status"] == "pending"
        assert t.json()["id"] in [x["id"] for x in b.get("/v2/tasks").json()["tasks"]]


def _slow(data: bytes, piece: int, pause: float, gate: threading.Event = None):
    """An upload body that trickles: ``piece`` bytes, then a pause."""
    for i in range(0, len(data), piece):
        if gate is not None and i >= piece * 2:
            gate.set()
        yield data[i:i + piece]
        time.sleep(pause)


def test_a_second_upload_during_an_upload_is_409_on_any_host(host_a, host_b):
    owner = "up" + uuid.uuid4().hex[:8]
    first, second = os.urandom(2 * MiB + 7), os.urandom(MiB)
    with host_a.http(f"{owner}:admin", timeout=120) as a, host_b.http(f"{owner}:admin") as b:
        iid = _new_image(a)["id"]
        started, result = threading.Event(), {}

        def up():
            result["status"] = _put(a, iid, _slow(first, 256 << 10, 0.4, started)).status_code

        t = threading.Thread(target=up)
        t.start()
        assert started.wait(30)
        time.sleep(0.5)
        assert b.get(f"/v2/images/{iid}").json()["status"] == "saving"
        r = _put(b, iid, second)
        assert r.status_code == 409 and "saving" in r.json()["error"]["message"]
        t.join(120)
        assert result["status"] == 204   # the lease was renewed all along (the upload took > LEASE s)
        assert b.get(f"/v2/images/{iid}/file").content == first


def _start_slow_upload(server, owner, iid, data, result):
    """A trickled upload through ``server`` in a thread; returns (thread, started)."""
    started = threading.Event()

    def up():
        try:
            with server.http(f"{owner}:admin", timeout=120) as d:
                r = _put(d, iid, _slow(data, 256 << 10, 0.3, started))
                result["status"], result["body"] = r.status_code, r.text
        except httpx.HTTPError as e:
            result["error"] = e   # the server died under it

    t = threading.Thread(target=up, daemon=True)
    t.start()
    assert started.wait(30)
    return t


def _wait_for_segments(hosts, iid, n=2):
    deadline = time.monotonic() + 30
    while len(hosts.blob_objects(iid)) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(hosts.blob_objects(iid)) >= n


def test_a_host_killed_mid_upload_leaves_nothing_after_its_lease(hosts, host_a):
    owner = "kill" + uuid.uuid4().hex[:8]
    doomed = hosts.server("doomed").start()
    data = os.urandom(24 * MiB)   # trickled over ~30 s: still flowing when it is killed
    try:
        with host_a.http(f"{owner}:admin") as a:
            iid = _new_image(a)["id"]
        _start_slow_upload(doomed, owner, iid, data, {})
        _wait_for_segments(hosts, iid)
        time.sleep(LEASE)  # the lease has been renewed at least once
        # a cleanup while the upload is alive leaves it alone
        assert hosts.cleanup()["registry"]["reset_uploads"] == 0
        doomed.proc.send_signal(signal.SIGKILL)
        doomed.proc.wait()
    finally:
        doomed.stop()
    with host_a.http(f"{owner}:admin") as a:
        assert a.get(f"/v2/images/{iid}").json()["status"] == "saving"
        time.sleep(LEASE + 1)
        report = hosts.cleanup()["registry"]
        assert report["reset_uploads"] == 1, report
        assert a.get(f"/v2/images/{iid}").json()["status"] == "queued"
        assert hosts.blob_objects(iid) == []
        # and the image takes a new upload, through any host
        assert _put(a, iid, data).status_code == 204
        assert a.get(f"/v2/images/{iid}/file").content == data


def test_a_host_paused_past_its_lease_cannot_commit_over_the_upload_that_took_over(hosts, host_a):
    """SIGSTOP a host mid-upload: once its lease runs out the next upload
    (through another host, no cleanup run) takes the image over; the paused
    host, resumed, meets the fence (409), removes only its own data, and the
    image keeps the newer upload's bytes."""
    owner = "pause" + uuid.uuid4().hex[:8]
    sleeper = hosts.server("sleeper").start()
    old, new = os.urandom(6 * MiB), os.urandom(MiB + 1)
    result = {}
    try:
        with host_a.http(f"{owner}:admin") as a:
            iid = _new_image(a)["id"]
        t = _start_slow_upload(sleeper, owner, iid, old, result)
        _wait_for_segments(hosts, iid)
        sleeper.proc.send_signal(signal.SIGSTOP)
        try:
            with host_a.http(f"{owner}:admin") as a:
                assert _put(a, iid, new).status_code == 409      # its lease still runs
                time.sleep(LEASE + 1)
                assert _put(a, iid, new).status_code == 204      # taken over
        finally:
            sleeper.proc.send_signal(signal.SIGCONT)
        t.join(120)
        assert result.get("status") == 409, result
        assert "deleted or reset" in result["body"] or "no longer current" in result["body"], result
    finally:
        sleeper.stop()
    with host_a.http(f"{owner}:admin") as a:
        img = a.get(f"/v2/images/{iid}").json()
        assert img["status"] == "active" and img["size"] == len(new)
        assert a.get(f"/v2/images/{iid}/file").content == new
    names = hosts.blob_objects(iid)
    assert len({re.match(r"[0-9a-f-]{36}\.([0-9a-f]{32})", n).group(1) for n in names}) == 1, names  # the newer's


def test_an_unreachable_swift_is_503_json_without_its_address(hosts, host_a, tmp_path):
    owner = "dark" + uuid.uuid4().hex[:8]
    dead = f"http://127.0.0.1:{free_port()}"
    with host_a.http(f"{owner}:admin") as a:
        iid = _new_image(a)["id"]
    lonely = hosts.server("lonely", VHDKIT_SWIFT_AUTH_URL=f"{dead}/auth/v1.0", VHDKIT_STORE=f"swift+{dead}")
    with lonely:
        with lonely.http(f"{owner}:admin") as c:
            r = _put(c, iid, os.urandom(MiB))
            assert r.status_code == 503, r.text
            assert r.headers["content-type"].startswith("application/json")
            msg = r.json()["error"]["message"]
            assert "unavailable" in msg and "127.0.0.1" not in msg and str(dead.rsplit(":", 1)[1]) not in msg
            assert c.get(f"/v2/images/{iid}").json()["status"] == "queued"    # nothing changed, nothing stuck
    with host_a.http(f"{owner}:admin") as a:
        data = os.urandom(MiB)
        assert _put(a, iid, data).status_code == 204
        assert a.get(f"/v2/images/{iid}/file").content == data


def test_an_upload_over_a_hosts_limit_is_413_and_leaves_nothing(hosts, host_a):
    owner = "cap" + uuid.uuid4().hex[:8]
    with host_a.http(f"{owner}:admin", timeout=60) as a:
        iid = _new_image(a)["id"]
        r = _put(a, iid, (b"\0" * MiB for _ in range(65)))   # chunked, no declared length: 65 MiB > 64 MiB
        assert r.status_code == 413, r.text
        assert a.get(f"/v2/images/{iid}").json()["status"] == "queued"
    assert hosts.blob_objects(iid) == []



def test_an_unreachable_database_is_503_json_and_loses_nothing(swift_env, tmp_path):
    """PostgreSQL stopped under a running host: every call that needs the
    registry is 503 with a JSON body naming no host or port; what needs none
    still answers; started again, the host serves the same data, and the calls
    refused meanwhile changed nothing."""
    from helpers_hosts import Hosts, pg_start, pg_stop
    from pgserver import PgServer

    pg = PgServer()
    own = Hosts(tmp_path, swift_env, {"VHDKIT_DATABASE_URL": pg.new_database()})
    owner = "pgdown" + uuid.uuid4().hex[:8]
    data = os.urandom(MiB + 5)
    try:
        with own.server("h") as h, h.http(f"{owner}:admin") as c:
            iid = _new_image(c)["id"]
            assert _put(c, iid, data).status_code == 204
            args = pg_stop(pg)
            try:
                for r in (c.get("/v2/images"), c.get(f"/v2/images/{iid}"), c.post("/v2/images", json={"name": "x"}),
                          _put(c, _new_image_id_unused(), os.urandom(10)), c.get(f"/v2/images/{iid}/file"),
                          c.patch(f"/v2/images/{iid}", content=json.dumps([{"op": "add", "path": "/k", "value": "v"}]),
                                  headers={"Content-Type": "application/openstack-images-v2.1-json-patch"})):
                    assert r.status_code == 503, r.text
                    assert r.headers["content-type"].startswith("application/json")
                    msg = r.json()["error"]["message"]
                    assert "unavailable" in msg and "127.0.0.1" not in msg and str(pg.port) not in msg, msg
                assert c.get("/versions").status_code == 200   # what needs no registry still works
            finally:
                pg_start(pg, args)
            listed = c.get("/v2/images").json()["images"]
            assert [i["id"] for i in listed] == [iid]          # the refused create made nothing
            img = c.get(f"/v2/images/{iid}").json()
            assert img["status"] == "active" and "k" not in img
            assert c.get(f"/v2/images/{iid}/file").content == data
    finally:
        own.stop()
        pg.stop()


def _new_image_id_unused() -> str:
    return str(uuid.uuid4())


# ---- the HTTP and glanceclient suites, through one of several hosts --------------------
# (imported test functions run here with this module's `api_server`: host_a)
from test_api_http import *  # noqa: E402,F401,F403
from test_api_glance import *  # noqa: E402,F401,F403
from test_api_glance import test_cli_download_detects_corrupted_data as _corrupt  # noqa: E402

del _corrupt   # it alters the blob file on the server's disk; here the data is in Swift
del test_cli_download_detects_corrupted_data  # noqa: F821
# a forwarding host has no database of its own to check
del test_server_runs_on_the_engine_of_its_database_url  # noqa: F821


@pytest.fixture(scope="module")
def api_server(host_a):  # noqa: F811 - replaces the star-imported one: these suites run through host_a
    """For the suites re-run here: one of several hosts stands for `vhdkit serve`."""
    return host_a


@pytest.fixture(scope="module")
def api_engine(hosts):  # noqa: F811 - replaces the star-imported one (once, on the hosts' database)
    return hosts.db_env["VHDKIT_DATABASE_URL"]
