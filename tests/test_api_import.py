"""Interoperable image import (Images API 2.6) against a real `vhdkit serve`:
``GET /v2/info/import``, staging, ``glance-direct`` and ``web-download``
(with its URL filter), through plain HTTP, python-glanceclient's CLI and
openstacksdk; and a server killed during a web-download leaves no image
stuck in ``importing``."""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from helpers_api import ROOT, ApiServer, api_server, free_port  # noqa: F401
from test_api_glance import table

ADMIN = "acct-a:admin"
OTHER = "acct-b:admin"
OBSERVER = "acct-a:observer"
OCTET = {"Content-Type": "application/octet-stream"}
DATA = os.urandom(300_000) + b"end"
EMPTY_STORE_FIELDS = {"os_glance_importing_to_stores": "", "os_glance_failed_import": ""}


class _Handler(http.server.BaseHTTPRequestHandler):
    """/disk: DATA; /redirect?to=URL: 302 there; /slow: part of DATA, then
    silence until the test lets it go; anything else 404."""

    release = threading.Event()
    slow_started = threading.Event()

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/disk":
            self.send_response(200)
            self.send_header("Content-Length", str(len(DATA)))
            self.end_headers()
            self.wfile.write(DATA)
        elif self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path[len("/redirect?to="):])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/short":   # declares all of DATA, sends a part, hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(DATA)))
            self.end_headers()
            self.wfile.write(DATA[:1000])
            self.close_connection = True
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", str(len(DATA)))
            self.end_headers()
            self.wfile.write(DATA[:1000])
            self.wfile.flush()
            self.slow_started.set()
            self.release.wait(60)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web():
    """A local HTTP server with the image data (on 127.0.0.1: refused unless allowed)."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    _Handler.release.set()
    srv.shutdown()
    srv.server_close()


def allowing(web_url: str) -> dict:
    """Server environment that lets web-download reach the local server, explicitly."""
    return {"VHDKIT_IMPORT_ALLOWED_HOSTS": "127.0.0.1", "VHDKIT_IMPORT_ALLOWED_PORTS": web_url.rsplit(":", 1)[1]}


@pytest.fixture(scope="module")
def server(tmp_path_factory, web):
    with ApiServer(tmp_path_factory.mktemp("import"), env=allowing(web)) as s:
        yield s


def new_image(c, **fields):
    r = c.post("/v2/images", json={"name": "imp", "disk_format": "raw", "container_format": "bare", **fields})
    assert r.status_code == 201, r.text
    return r.json()


def do_import(c, image, method, **extra):
    body = {"method": {"name": method, **({"uri": extra.pop("uri")} if "uri" in extra else {})}, **extra}
    return c.post(f"{image['self']}/import", json=body)


def wait_status(c, image, statuses, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        img = c.get(image["self"]).json()
        if img["status"] in statuses or time.monotonic() > deadline:
            return img
        time.sleep(0.1)


def test_info_import_lists_both_methods(server):
    with server.http(OBSERVER) as c:
        r = c.get("/v2/info/import")
    assert r.status_code == 200
    assert r.json()["import-methods"]["type"] == "array"
    assert sorted(r.json()["import-methods"]["value"]) == ["glance-direct", "web-download"]
    with server.http() as c:
        assert c.get("/v2/info/import").status_code == 401


def test_glance_direct_stages_then_imports(server):
    with server.http(ADMIN) as c:
        img = new_image(c)
        assert do_import(c, img, "glance-direct").status_code == 409     # nothing staged yet
        assert c.put(f"{img['self']}/stage", content=DATA, headers=OCTET).status_code == 204
        staged = c.get(img["self"]).json()
        assert staged["status"] == "uploading"
        assert c.get(img["file"]).status_code == 204                     # no data to download yet
        assert c.put(img["file"], content=b"x", headers=OCTET).status_code == 409
        assert c.put(f"{img['self']}/stage", content=b"x", headers=OCTET).status_code == 409
        r = do_import(c, img, "glance-direct")
        assert r.status_code == 202, r.text
        done = wait_status(c, img, ("active",))
        assert done["status"] == "active" and done["size"] == len(DATA)
        assert done["checksum"] == hashlib.md5(DATA).hexdigest()
        assert done["os_hash_value"] == hashlib.sha512(DATA).hexdigest()
        assert {k: v for k, v in done.items() if k.startswith("os_glance_")} == EMPTY_STORE_FIELDS
        assert c.get(img["file"]).content == DATA
        assert do_import(c, img, "glance-direct").status_code == 409     # active: no second import


def test_staging_and_importing_belong_to_the_owner(server):
    with server.http(ADMIN) as c:
        img = new_image(c, visibility="shared")
        assert c.post(f"{img['self']}/members", json={"member": "acct-b"}).status_code == 200
    with server.http(OTHER) as c:
        assert c.put(f"{img['self']}/stage", content=DATA, headers=OCTET).status_code == 403
        assert do_import(c, img, "glance-direct").status_code == 403
    with server.http(OBSERVER) as c:
        assert c.put(f"{img['self']}/stage", content=DATA, headers=OCTET).status_code == 403
    with server.http("acct-c:admin") as c:
        assert do_import(c, img, "glance-direct").status_code == 404


@pytest.mark.parametrize("body", [{}, {"method": "glance-direct"}, {"method": {"name": "copy-image"}},
                                  {"method": {"name": "glance-direct"}, "all_stores_must_succeed": "yes"},
                                  {"method": {"name": "glance-direct"}, "all_stores_must_succeed": False}])
def test_malformed_import_requests_are_400(server, body):
    with server.http(ADMIN) as c:
        img = new_image(c)
        r = c.post(f"{img['self']}/import", json=body)
    assert r.status_code == 400, r.text


def test_an_import_needs_the_formats_set(server):
    with server.http(ADMIN) as c:
        r = c.post("/v2/images", json={"name": "bare-minimum"})
        img = r.json()
        assert c.put(f"{img['self']}/stage", content=DATA, headers=OCTET).status_code == 409


def test_web_download_fetches_an_allowed_url(server, web):
    with server.http(ADMIN) as c:
        img = new_image(c)
        r = do_import(c, img, "web-download", uri=f"{web}/disk")
        assert r.status_code == 202, r.text
        done = wait_status(c, img, ("active", "queued"))
        assert done["status"] == "active", done
        assert done["checksum"] == hashlib.md5(DATA).hexdigest()
        # the import lock is gone; the per-store fields stay empty, as on a single-store Glance
        assert {k: v for k, v in done.items() if k.startswith("os_glance_")} == EMPTY_STORE_FIELDS
        assert c.get(img["file"]).content == DATA
        assert do_import(c, img, "web-download", uri=f"{web}/disk").status_code == 409


def test_a_failed_web_download_returns_the_image_to_queued(server, web):
    with server.http(ADMIN) as c:
        for path in ("/missing", f"/redirect?to={web}/missing", "/short"):
            img = new_image(c)
            assert do_import(c, img, "web-download", uri=web + path).status_code == 202
            assert wait_status(c, img, ("queued", "active"))["status"] == "queued"


def test_redirects_to_refused_targets_are_not_followed(server, web):
    other_port = free_port()   # not among the allowed ports
    with server.http(ADMIN) as c:
        for target in (f"http://127.0.0.1:{other_port}/disk", f"http://127.0.0.2:{web.rsplit(':', 1)[1]}/disk",
                       "file:///etc/passwd"):
            img = new_image(c)
            assert do_import(c, img, "web-download", uri=f"{web}/redirect?to={target}").status_code == 202
            done = wait_status(c, img, ("queued", "active"))
            assert done["status"] == "queued" and done["size"] is None


def test_urls_outside_the_allow_lists_are_400(server, web):
    port = web.rsplit(":", 1)[1]
    with server.http(ADMIN) as c:
        img = new_image(c)
        for uri in (f"http://127.0.0.2:{port}/disk", f"{web[:-len(port)]}1/disk",
                    f"ftp://127.0.0.1:{port}/disk", "http://does-not.exist/no/possible/way", "not a url",
                    f"http://user:pw@127.0.0.1:{port}/disk", None):
            r = do_import(c, img, "web-download", uri=uri)
            assert r.status_code == 400, (uri, r.text)
            assert "does not pass filtering" in r.json()["error"]["message"]
        assert c.get(img["self"]).json()["status"] == "queued"


def test_by_default_loopback_and_private_addresses_are_refused(api_server, web):
    with api_server.http(ADMIN) as c:
        img = new_image(c)
        for uri in (f"{web}/disk", "http://localhost/disk", "http://10.1.2.3/disk", "http://169.254.169.254/latest",
                    "http://[::1]/disk", "http://0.0.0.0/disk", "http://192.168.1.1:443/x"):
            r = do_import(c, img, "web-download", uri=uri)
            assert r.status_code == 400, (uri, r.text)
        assert c.get(img["self"]).json()["status"] == "queued"


def test_glance_cli_creates_images_via_import(server, web, tmp_path):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(DATA)
    out = table(server.glance(ADMIN, "image-create-via-import", "--name", "direct", "--disk-format", "raw",
                              "--container-format", "bare", "--import-method", "glance-direct",
                              "--file", str(disk)).stdout)
    web_out = table(server.glance(ADMIN, "image-create-via-import", "--name", "web", "--disk-format", "raw",
                                  "--container-format", "bare", "--import-method", "web-download",
                                  "--uri", f"{web}/disk").stdout)
    with server.http(ADMIN) as c:
        for image_id in (out["id"], web_out["id"]):
            img = wait_status(c, {"self": f"/v2/images/{image_id}"}, ("active", "queued"))
            assert img["status"] == "active" and img["checksum"] == hashlib.md5(DATA).hexdigest()
    info = json.loads(table(server.glance(ADMIN, "import-info").stdout)["import-methods"])
    assert info["value"] == ["glance-direct", "web-download"]


def test_openstacksdk_creates_an_image_with_use_import(server, tmp_path):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(DATA)
    conn = server.sdk("acct-a", "admin")
    img = conn.image.create_image(name="sdk-import", filename=str(disk), disk_format="raw",
                                  container_format="bare", use_import=True, wait=True, timeout=60)
    with server.http(ADMIN) as c:
        done = wait_status(c, {"self": f"/v2/images/{img.id}"}, ("active", "queued"))
    assert done["status"] == "active" and done["checksum"] == hashlib.md5(DATA).hexdigest()


def start_stalled_import(s: ApiServer, web: str) -> dict:
    """An image whose web-download has begun and stalls (until _Handler.release)."""
    with s.http(ADMIN) as c:
        img = new_image(c)
        _Handler.slow_started.clear()
        _Handler.release.clear()
        assert do_import(c, img, "web-download", uri=f"{web}/slow").status_code == 202
        assert _Handler.slow_started.wait(30)
        importing = c.get(img["self"]).json()
    assert importing["status"] == "importing" and importing["os_glance_import_task"]
    return img


def left_on_disk(s: ApiServer, image_id: str):
    """(status, properties) of the image as the data directory holds it, and
    the temporary upload files left there (read without the cleanup that
    opening a registry runs)."""
    from vhdkit.registry import Caller, Registry

    reg = Registry(str(s.data), cleanup=False)
    try:
        img = reg.show_image(Caller.service("acct-a"), image_id)
    finally:
        reg.close()
    tmp = s.data / "blobs" / "tmp"
    return img.status, img.properties, sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


@pytest.mark.parametrize("settled_by", ["vhdkit cleanup", "the next start"])
def test_a_server_killed_during_a_web_download_leaves_no_image_importing(tmp_path, web, settled_by):
    s = ApiServer(tmp_path, env=allowing(web)).start()
    try:
        img = start_stalled_import(s, web)
        s.proc.kill()
        s.proc.wait()
        status, props, tmp = left_on_disk(s, img["id"])
        assert status == "importing" and "os_glance_import_task" in props and tmp   # what the kill left
        if settled_by == "vhdkit cleanup":
            subprocess.run([sys.executable, "-m", "vhdkit", "cleanup", "--data", str(s.data), "--grace", "0"],
                           env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True, capture_output=True, timeout=60)
        else:
            s.start()   # the registry's cleanup at start
            s.stop()
        status, props, tmp = left_on_disk(s, img["id"])
        assert status == "queued" and "os_glance_import_task" not in props and tmp == []
    finally:
        _Handler.release.set()
        s.stop()


@pytest.mark.parametrize("var,value", [("VHDKIT_IMPORT_ALLOWED_PORTS", "80,http"),
                                       ("VHDKIT_IMPORT_ALLOWED_SCHEMES", "http,ftp"),
                                       ("VHDKIT_IMPORT_SLOTS", "many")])
def test_serve_refuses_a_malformed_import_filter_before_it_starts(tmp_path, var, value):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{var: value})
    proc = subprocess.run([sys.executable, "-m", "vhdkit", "serve", "--port", str(free_port()),
                           "--data", str(tmp_path / "data")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and var in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_graceful_stop_aborts_running_web_downloads(tmp_path, web):
    """SIGTERM: the running download is aborted at once, its image back in
    queued and its temporary data gone, without waiting for a cleanup."""
    s = ApiServer(tmp_path, env=allowing(web)).start()
    try:
        img = start_stalled_import(s, web)
        s.proc.terminate()
        s.proc.wait(timeout=15)   # uvicorn re-raises SIGTERM after its graceful shutdown
        status, props, tmp = left_on_disk(s, img["id"])
        assert status == "queued" and "os_glance_import_task" not in props and tmp == []
    finally:
        _Handler.release.set()
        s.stop()


def test_imported_data_meets_the_upload_size_limit(tmp_path, web):
    """VHDKIT_API_MAX_IMAGE_SIZE holds for staged and downloaded data as for uploads."""
    with ApiServer(tmp_path, env={**allowing(web), "VHDKIT_API_MAX_IMAGE_SIZE": "100000"}) as s:
        with s.http(ADMIN) as c:
            img = new_image(c)
            assert c.put(f"{img['self']}/stage", content=DATA, headers=OCTET).status_code == 413
            assert c.get(img["self"]).json()["status"] == "queued"
            assert do_import(c, img, "web-download", uri=f"{web}/disk").status_code == 202
            done = wait_status(c, img, ("queued", "active"))
            assert done["status"] == "queued" and done["size"] is None
            assert "exceeds" in (s.log.read_text())   # the reason is in the server's log


def test_staged_and_downloaded_data_is_inspected_like_an_upload(server, web):
    """Data that claims to be a VHD but is not is refused on every way in: staging
    answers 400, a web-download ends with the image back in ``queued`` and no data."""
    with server.http(ADMIN) as c:
        img = new_image(c, disk_format="vhd")
        r = c.put(f"{img['self']}/stage", content=DATA, headers=OCTET)
        assert r.status_code == 400, r.text
        after = c.get(img["self"]).json()
        assert after["status"] == "queued" and after["size"] is None

        img = new_image(c, disk_format="vhd")
        assert do_import(c, img, "web-download", uri=f"{web}/disk").status_code == 202
        done = wait_status(c, img, ("queued", "active"))
        assert done["status"] == "queued" and done["size"] is None, done
