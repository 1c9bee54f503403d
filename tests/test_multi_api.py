"""Several API hosts, one registry: `vhdkit serve --registry URL` processes
(each with its own empty data directory, standing for other hosts) in front of
one registry host (`vhdkit serve` with the SQLite registry), image data in the
real Swift.  Every call made on any host is seen by every other; errors pass
through unchanged; an upload holds the image with a lease its API host renews,
so an API host killed mid-upload leaves nothing behind once the lease runs out.
The HTTP and python-glanceclient suites run again against a forwarding host."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest

from conftest import ROOT
from helpers_api import ApiServer
from vhdkit.swiftstore import SwiftConfig, SwiftStore

MiB = 1 << 20
TOKEN = "s3cret-" + uuid.uuid4().hex
LEASE = 3   # seconds: a forwarding host renews every second


@pytest.fixture(scope="module")
def reghost(swift_env, tmp_path_factory):
    """The registry host: the only process that opens the registry."""
    env = dict(swift_env, VHDKIT_BLOB_STORE="swift", VHDKIT_BLOB_ACCOUNT="ma" + uuid.uuid4().hex[:10],
               VHDKIT_BLOB_SEGMENT_SIZE=str(MiB), VHDKIT_SERVICE_TOKEN=TOKEN)
    with ApiServer(tmp_path_factory.mktemp("reghost"), env=env) as server:
        server.env = env
        yield server


def _front(reghost, workdir, **extra) -> ApiServer:
    env = dict(reghost.env, VHDKIT_REGISTRY_URL=reghost.url, VHDKIT_API_UPLOAD_LEASE=str(LEASE), **extra)
    server = ApiServer(workdir, env=env)
    server.env = env
    return server


@pytest.fixture(scope="module")
def front_a(reghost, tmp_path_factory):
    with _front(reghost, tmp_path_factory.mktemp("front-a"), VHDKIT_API_MAX_IMAGE_SIZE=str(64 * MiB)) as s:
        yield s


@pytest.fixture(scope="module")
def front_b(reghost, tmp_path_factory):
    with _front(reghost, tmp_path_factory.mktemp("front-b")) as s:
        yield s


def _blob_objects(reghost, image_id: str) -> list:
    st = SwiftStore(SwiftConfig.from_env(reghost.env), reghost.env["VHDKIT_BLOB_ACCOUNT"])
    try:
        return [o.name for o in st.list("images", image_id)]
    except Exception:  # noqa: BLE001 - no container yet
        return []


def _new_image(c, **fields) -> dict:
    r = c.post("/v2/images", json={"name": "m", "disk_format": "raw", "container_format": "bare", **fields})
    assert r.status_code == 201, r.text
    return r.json()


def _put(c, image_id: str, data, **kw):
    return c.put(f"/v2/images/{image_id}/file", content=data,
                 headers={"Content-Type": "application/octet-stream"}, **kw)


def test_every_host_sees_every_other_hosts_calls(reghost, front_a, front_b):
    owner, member = "own" + uuid.uuid4().hex[:8], "mem" + uuid.uuid4().hex[:8]
    data = os.urandom(3 * MiB + 12345)   # four segments of 1 MiB in Swift
    with front_a.http(f"{owner}:admin") as a, front_b.http(f"{owner}:admin") as b, \
            reghost.http(f"{owner}:admin") as r, front_b.http(f"{member}:admin") as mb:
        img = _new_image(a, name="shared-one", visibility="shared", os_distro="ubuntu")
        iid = img["id"]
        assert _put(b, iid, data).status_code == 204
        shown = r.get(f"/v2/images/{iid}").json()
        assert shown["status"] == "active" and shown["size"] == len(data)
        assert shown["checksum"] == hashlib.md5(data).hexdigest()
        assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
        assert a.get(f"/v2/images/{iid}").json() == shown == b.get(f"/v2/images/{iid}").json()
        # the bytes are in Swift, not on any API host's disk
        assert len([n for n in _blob_objects(reghost, iid) if "-0000" in n]) == 4
        assert not [p for p in front_a.data.rglob("*") if p.is_file() and p.stat().st_size]
        assert not [p for p in front_b.data.rglob("*") if p.is_file() and p.stat().st_size]
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
        with reghost.http(f"{member}:admin") as mr:
            assert iid in [i["id"] for i in mr.get("/v2/images").json()["images"]]
        members = b.get(f"/v2/images/{iid}/members").json()["members"]
        assert [(m["member_id"], m["status"]) for m in members] == [(member, "accepted")]
        # deactivate on one host, download refused on another; reactivate; delete
        assert b.post(f"/v2/images/{iid}/actions/deactivate").status_code == 204
        assert mb.get(f"/v2/images/{iid}/file").status_code == 403
        assert a.post(f"/v2/images/{iid}/actions/reactivate").status_code == 204
        assert b.delete(f"/v2/images/{iid}").status_code == 204
        assert a.get(f"/v2/images/{iid}").status_code == 404
        assert _blob_objects(reghost, iid) == []                      # its data left Swift with it
        # tasks created on a forwarding host are the registry host's tasks
        t = a.post("/v2/tasks", json={"type": "import", "input": {"import_from": "nowhere/x.vhd"}})
        assert t.status_code == 201, t.text
        assert r.get(f"/v2/tasks/{t.json()['id']}").json()["status"] == "pending"
        assert t.json()["id"] in [x["id"] for x in b.get("/v2/tasks").json()["tasks"]]


@pytest.mark.parametrize("method, path, body, headers, who", [
    ("GET", "/v2/images/{missing}", None, {}, "owner"),
    ("GET", "/v2/images/{iid}", None, {}, "stranger"),
    ("PATCH", "/v2/images/{iid}", [{"op": "add", "path": "/com.rackspace__1__x", "value": "1"}],
     {"Content-Type": "application/openstack-images-v2.1-json-patch"}, "owner"),
    ("PATCH", "/v2/images/{iid}", [{"op": "remove", "path": "/nothing_here"}],
     {"Content-Type": "application/openstack-images-v2.1-json-patch"}, "owner"),
    ("DELETE", "/v2/images/{iid}", None, {}, "observer"),
    ("GET", "/v2/images?sort_key=bogus", None, {}, "owner"),
    ("GET", "/v2/images?marker={missing}", None, {}, "owner"),
    ("POST", "/v2/images/{iid}/members", {"member": "someone"}, {}, "owner"),   # a private image has no members
    ("GET", "/v2/images/{iid}/file", None, {}, "owner"),                        # no data: 204
])
def test_errors_pass_through_unchanged(reghost, front_b, method, path, body, headers, who):
    """The same request answers the same status and body on the registry host and on a forwarding host
    (requests that change nothing, so that both answers are to the same state)."""
    owner = "err" + uuid.uuid4().hex[:8]
    tokens = {"owner": f"{owner}:admin", "observer": f"{owner}:observer", "stranger": "other:admin"}
    with reghost.http(f"{owner}:admin") as c:
        iid = _new_image(c, visibility="private")["id"]
    url = path.format(iid=iid, missing=str(uuid.uuid4()))
    answers = []
    for server in (reghost, front_b):
        with server.http(tokens[who], headers=headers) as c:
            kw = {"content": json.dumps(body)} if body is not None else {}
            if body is not None and "Content-Type" not in headers:
                kw["headers"] = {"Content-Type": "application/json"}
            r = c.request(method, url, **kw)
            answers.append((r.status_code, r.content))
    assert answers[0] == answers[1]
    assert answers[0][0] in (204, 400, 403, 404, 409), answers[0]


def _slow(data: bytes, piece: int, pause: float, gate: threading.Event = None):
    """An upload body that trickles: ``piece`` bytes, then a pause."""
    for i in range(0, len(data), piece):
        if gate is not None and i >= piece * 2:
            gate.set()
        yield data[i:i + piece]
        time.sleep(pause)


def test_a_second_upload_during_an_upload_is_409_on_any_host(reghost, front_a, front_b):
    owner = "up" + uuid.uuid4().hex[:8]
    first, second = os.urandom(2 * MiB + 7), os.urandom(MiB)
    with front_a.http(f"{owner}:admin", timeout=120) as a, front_b.http(f"{owner}:admin") as b:
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


def test_a_forwarding_host_killed_mid_upload_leaves_nothing_after_its_lease(reghost, front_a, tmp_path):
    owner = "kill" + uuid.uuid4().hex[:8]
    doomed = _front(reghost, tmp_path / "doomed").start()
    data = os.urandom(8 * MiB)   # trickled over ~10 s: still flowing when it is killed
    try:
        with front_a.http(f"{owner}:admin") as a:
            iid = _new_image(a)["id"]
        started = threading.Event()

        def up():
            try:
                with doomed.http(f"{owner}:admin", timeout=60) as d:
                    _put(d, iid, _slow(data, 256 << 10, 0.3, started))
            except httpx.HTTPError:
                pass   # the server died under it

        t = threading.Thread(target=up, daemon=True)
        t.start()
        assert started.wait(30)
        deadline = time.monotonic() + 30   # wait for segments in Swift
        while len(_blob_objects(reghost, iid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_blob_objects(reghost, iid)) >= 2
        # a cleanup while the upload is alive leaves it alone
        assert _cleanup(reghost)["reset_uploads"] == 0
        doomed.proc.send_signal(signal.SIGKILL)
        doomed.proc.wait()
    finally:
        doomed.stop()
    with front_a.http(f"{owner}:admin") as a:
        assert a.get(f"/v2/images/{iid}").json()["status"] == "saving"
        time.sleep(LEASE + 1)
        report = _cleanup(reghost)
        assert report["reset_uploads"] == 1, report
        assert a.get(f"/v2/images/{iid}").json()["status"] == "queued"
        assert _blob_objects(reghost, iid) == []
        # and the image takes a new upload, through any host
        assert _put(a, iid, data).status_code == 204
        assert a.get(f"/v2/images/{iid}/file").content == data


def test_the_next_upload_takes_over_an_upload_whose_lease_ran_out(reghost, front_a):
    """Without a cleanup run: the lapsed upload is reset (and its data removed) by the next upload."""
    owner = "lapse" + uuid.uuid4().hex[:8]
    with front_a.http(f"{owner}:admin") as a:
        iid = _new_image(a)["id"]
    caller = {"account": owner, "roles": ["admin"], "service": False}
    with httpx.Client(base_url=reghost.url, headers={"X-Service-Token": TOKEN}, timeout=10) as svc:
        r = svc.post("/internal/v1/begin_upload", json={"caller": caller, "image_id": iid, "lease_seconds": 1})
        assert r.status_code == 200, r.text
        token = r.json()["token"]
        assert r.json()["blob"] == f"swift/{iid}.{token}"
        st = SwiftStore(SwiftConfig.from_env(reghost.env), reghost.env["VHDKIT_BLOB_ACCOUNT"])
        st.create_container("images")
        st.put("images", f"{iid}.{token}-00001", _Bytes(b"x" * 100))   # what the dead host had stored
        r = svc.post("/internal/v1/begin_upload", json={"caller": caller, "image_id": iid, "lease_seconds": 5})
        assert r.status_code == 409, r.text     # its lease still runs: refused
    time.sleep(1.5)
    with front_a.http(f"{owner}:admin") as a:
        data = os.urandom(MiB + 1)
        assert _put(a, iid, data).status_code == 204
        assert a.get(f"/v2/images/{iid}/file").content == data
    names = _blob_objects(reghost, iid)
    assert names and not [n for n in names if token in n], names
    with httpx.Client(base_url=reghost.url, headers={"X-Service-Token": TOKEN}, timeout=10) as svc:
        r = svc.post("/internal/v1/renew_upload", json={"image_id": iid, "token": token, "lease_seconds": 5})
        assert r.status_code == 409 and r.json()["error"]["kind"] == "upload_lost"
        r = svc.post("/internal/v1/begin_upload", json={"caller": caller, "image_id": iid, "lease_seconds": 1e9})
        assert r.status_code == 400 and "lease_seconds" in r.json()["error"]["message"]


class _Bytes:
    def __init__(self, b: bytes) -> None:
        self.b = b

    def read(self, n: int = -1) -> bytes:
        out, self.b = (self.b, b"") if n is None or n < 0 else (self.b[:n], self.b[n:])
        return out


def test_an_upload_over_the_forwarding_hosts_limit_is_413_and_leaves_nothing(reghost, front_a):
    owner = "cap" + uuid.uuid4().hex[:8]
    with front_a.http(f"{owner}:admin", timeout=60) as a:
        iid = _new_image(a)["id"]
        r = _put(a, iid, (b"\0" * MiB for _ in range(65)))   # chunked, no declared length: 65 MiB > 64 MiB
        assert r.status_code == 413, r.text
        assert a.get(f"/v2/images/{iid}").json()["status"] == "queued"
    assert _blob_objects(reghost, iid) == []


def test_internal_routes_of_a_forwarding_host_point_at_the_registry_host(reghost, front_b):
    with httpx.Client(base_url=front_b.url, headers={"X-Service-Token": TOKEN}, timeout=10) as c:
        r = c.post("/internal/v1/claim", json={"worker_id": "w", "lease_seconds": 5})
    assert r.status_code == 421 and reghost.url in r.json()["error"]["message"]


def test_an_unreachable_registry_host_is_503_json_without_its_address(reghost, tmp_path):
    from helpers_api import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    with ApiServer(tmp_path / "orphan", env=dict(reghost.env, VHDKIT_REGISTRY_URL=dead)) as lonely:
        with lonely.http("someone:admin") as c:
            for r in (c.get("/v2/images"), c.get(f"/v2/images/{uuid.uuid4()}"),
                      c.post("/v2/images", json={"name": "x"})):
                assert r.status_code == 503, r.text
                msg = r.json()["error"]["message"]
                assert "registry host did not answer" in msg and dead not in msg
            assert c.get("/versions").status_code == 200   # what needs no registry still works


def test_serve_refuses_to_forward_without_token_or_swift(reghost, tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith("VHDKIT_")}
    base["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "vhdkit", "serve", "--registry", reghost.url, "--data", str(tmp_path)]
    r = subprocess.run(cmd, env=dict(base, VHDKIT_BLOB_STORE="swift"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "VHDKIT_SERVICE_TOKEN" in r.stderr
    r = subprocess.run(cmd, env=dict(base, VHDKIT_SERVICE_TOKEN=TOKEN), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "VHDKIT_BLOB_STORE=swift" in r.stderr
    for bad in ("0", "1e9", "soon"):
        r = subprocess.run(cmd, env=dict(base, VHDKIT_SERVICE_TOKEN=TOKEN, VHDKIT_BLOB_STORE="swift",
                                          VHDKIT_API_UPLOAD_LEASE=bad), capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "VHDKIT_API_UPLOAD_LEASE" in r.stderr, r.stderr


def _cleanup(reghost) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **reghost.env)
    r = subprocess.run([sys.executable, "-m", "vhdkit", "cleanup", "--data", str(reghost.data), "--grace", "0",
                        "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)["registry"]


# ---- the HTTP and glanceclient suites, through a forwarding host --------------------
# (imported test functions run here with this module's `api_server`: front_a)
from test_api_http import *  # noqa: E402,F401,F403
from test_api_glance import *  # noqa: E402,F401,F403
from test_api_glance import test_cli_download_detects_corrupted_data as _corrupt  # noqa: E402

del _corrupt   # it alters the blob file on the server's disk; a forwarding host has none
del test_cli_download_detects_corrupted_data  # noqa: F821
# a forwarding host has no database of its own to check
del test_server_runs_on_the_engine_of_its_database_url  # noqa: F821


@pytest.fixture(scope="module")
def api_server(front_a):  # noqa: F811 - replaces the star-imported one: these suites run through front_a
    """For the suites re-run here: the forwarding host stands in for `vhdkit serve`."""
    return front_a


@pytest.mark.parametrize("op, body", [
    ("list_images", {"params": "x"}),
    ("list_images", {"params": [["limit", 5]]}),
    ("list_images", {"params": [["sort_key", "bogus"]]}),
    ("update_image", {"image_id": "{iid}", "changes": [1, "x"]}),
    ("update_image", {"image_id": "{iid}", "changes": {"op": "add"}}),
    ("add_tag", {"image_id": "{iid}", "tag": "a/b"}),
    ("update_member", {"image_id": "{iid}", "member_id": "m", "status": "maybe"}),
    ("create_task", {"type": "import", "input": []}),
    ("create_task", {"type": "bogus", "input": {}}),
    ("begin_upload", {"image_id": "{iid}", "lease_seconds": "10"}),
    ("begin_upload", {"image_id": "not-a-uuid", "lease_seconds": 10}),
    ("renew_upload", {"image_id": "{iid}", "token": "f" * 32, "lease_seconds": 10}),
    ("commit_upload", {"image_id": "{iid}", "token": "../../x", "size": 1, "md5": "0" * 32, "sha512": "0" * 128}),
    ("commit_upload", {"image_id": "{iid}", "token": "f" * 32, "size": -1, "md5": "0" * 32, "sha512": "0" * 128}),
    ("commit_upload", {"image_id": "{iid}", "token": "f" * 32, "size": True, "md5": "x", "sha512": None}),
    ("abort_upload", {"image_id": "{iid}"}),
    ("show_member", {"image_id": "{iid}"}),
])
def test_malformed_forwarded_calls_are_4xx_json(reghost, op, body):
    """The registry host checks what a forwarding host sends as it checks a customer's request."""
    owner = "bad" + uuid.uuid4().hex[:8]
    with reghost.http(f"{owner}:admin") as c:
        iid = _new_image(c, visibility="private")["id"]
    body = {k: (v.format(iid=iid) if isinstance(v, str) else v) for k, v in body.items()}
    body["caller"] = {"account": owner, "roles": ["admin"], "service": False}
    with httpx.Client(base_url=reghost.url, headers={"X-Service-Token": TOKEN}, timeout=10) as svc:
        r = svc.post(f"/internal/v1/{op}", json=body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.json()["error"]["code"] == r.status_code
    with reghost.http(f"{owner}:admin") as c:
        assert c.get(f"/v2/images/{iid}").json()["status"] == "queued"   # nothing changed
