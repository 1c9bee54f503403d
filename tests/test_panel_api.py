"""The control panel's server side, driven over HTTP as a browser and an
attacker would: static files and security headers, the session cookie and
its CSRF defence, Keystone sign-in against a stub Keystone, and the
customer object-store API (/store/v1) with hostile names and other accounts.
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from helpers_api import LOOPBACK, ApiServer, api_server, raw_request  # noqa: F401
from vhdkit.pack import segments
from vhdkit.store import LocalStore

A, B = "acct-a", "acct-b"
ADMIN_A = f"{A}:cloudImages:admin"
HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
CSRF = "X-Vhdkit-CSRF"


def store(server, account):
    return LocalStore(server.data / "objects", account)


def sign_in(server, account=A, roles="cloudImages:admin") -> httpx.Client:
    c = httpx.Client(base_url=server.url, timeout=30)
    r = httpx.post(server.url + "/panel/api/session", json={"account": account, "roles": roles},
                   headers={CSRF: "sign-in"})
    c.cookies = r.cookies
    assert r.status_code == 200, r.text
    c.headers[CSRF] = r.json()["csrf"]
    return c


# ---- static files and headers --------------------------------------------------------

def test_root_serves_the_panel_to_browsers_and_versions_to_api_clients(api_server):
    with api_server.http() as c:
        page = c.get("/", headers={"Accept": HTML})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/panel/app.js">' in page.text
        for accept in ("application/json", None):
            r = c.get("/", headers={"Accept": accept} if accept else {})
            assert r.status_code == 300 and "versions" in r.json()


@pytest.mark.parametrize("path", ["/", "/panel/app.js", "/panel/panel.css", "/v2/images", "/store/v1/containers",
                                  "/panel/nope.js"])
def test_every_response_carries_the_security_headers(api_server, path):
    with api_server.http(ADMIN_A) as c:
        r = c.get(path, headers={"Accept": HTML})
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "default-src 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"


def test_static_files_have_their_types_and_no_inline_code(api_server):
    with api_server.http() as c:
        assert c.get("/panel/app.js").headers["content-type"].startswith("text/javascript")
        assert c.get("/panel/panel.css").headers["content-type"].startswith("text/css")
        html = c.get("/panel/").text
    assert "<script>" not in html and " style=" not in html and " on" + "click" not in html


@pytest.mark.parametrize("target", ["/panel/../vhdkit/api/panel.py", "/panel/%2e%2e%2fpanel.py", "/panel/..%2f..%2fsetup.py",
                                    "/panel/.hidden", "/panel//etc/passwd", "/panel/%2fetc%2fpasswd"])
def test_static_files_never_follow_a_path(api_server, target):
    status, headers, body = raw_request(api_server, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 404, (target, status, body[:200])
    assert b"import" not in body and b"root:" not in body


# ---- sessions and CSRF -----------------------------------------------------------------

def test_sign_in_sets_an_httponly_strict_cookie_and_needs_the_csrf_header(api_server):
    with httpx.Client(base_url=api_server.url) as c:
        refused = c.post("/panel/api/session", json={"account": A, "roles": "cloudImages:admin"})
        assert refused.status_code == 403 and "cookie" not in {k.lower() for k in refused.headers}
        r = c.post("/panel/api/session", json={"account": A, "roles": "cloudImages:admin"}, headers={CSRF: "x"})
        assert r.status_code == 200
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/" in cookie
        me = c.get("/panel/api/session").json()
        assert me["account"] == A and me["roles"] == ["cloudImages:admin"]
        assert me["can"]["delete_image"] and me["can"]["delete_object"] and me["csrf"] == r.json()["csrf"]


@pytest.mark.parametrize("body", [{"account": "../x", "roles": "admin"}, {"account": "a:b", "roles": "admin"},
                                  {"account": A, "roles": "vhdkit:service"}, {"account": "x" * 300, "roles": ""},
                                  {"account": A, "roles": "<img src=x>"}, {"roles": "admin"}, ["not", "an", "object"]])
def test_sign_in_refuses_bad_identities(api_server, body):
    with httpx.Client(base_url=api_server.url) as c:
        r = c.post("/panel/api/session", json=body, headers={CSRF: "x"})
        assert r.status_code in (400, 403), r.text
        assert "set-cookie" not in r.headers


def test_cookie_requests_that_change_state_need_the_sessions_csrf_token(api_server):
    c = sign_in(api_server)
    good = c.headers.pop(CSRF)
    with c:
        assert c.get("/v2/images").status_code == 200                       # reads need no token
        assert c.post("/v2/images", json={"name": "x"}).status_code == 403
        assert c.post("/v2/images", json={"name": "x"}, headers={CSRF: "1"}).status_code == 403
        other = sign_in(api_server, B).headers[CSRF]   # another session's token
        assert c.post("/v2/images", json={"name": "x"}, headers={CSRF: other}).status_code == 403
        r = c.post("/v2/images", json={"name": "x"}, headers={CSRF: good})
        assert r.status_code == 201 and r.json()["owner"] == A
        # the CSRF answer is the API's JSON error shape
        err = c.delete(f"/v2/images/{r.json()['id']}")
        assert err.status_code == 403 and "X-Vhdkit-CSRF" in err.json()["error"]["message"]
        assert c.delete("/panel/api/session").status_code == 403           # signing out too
        assert c.delete("/panel/api/session", headers={CSRF: good}).status_code == 204


def test_identity_headers_win_over_the_cookie(api_server):
    c = sign_in(api_server, A)
    with c:
        r = c.get("/panel/api/session", headers={"X-Auth-Token": f"{B}:observer"})
        assert r.json()["account"] == B and r.json()["csrf"] is None


def test_a_forged_cookie_is_judged_like_a_forged_token(api_server):
    with httpx.Client(base_url=api_server.url, cookies={"vhdkit_session": "acct-a:vhdkit:service"}) as c:
        assert c.get("/v2/images").status_code == 403
    with httpx.Client(base_url=api_server.url, cookies={"vhdkit_session": "no-colon"}) as c:
        assert c.get("/v2/images").status_code == 401


# ---- Keystone sign-in (server-side token request against a stub Keystone) ---------------------

class _Keystone(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Keystone.seen.append((self.path, body))
        user = body["auth"]["identity"]["password"]["user"]
        if user["name"] == "alice" and user["password"] == "s3cret":
            out = json.dumps({"token": {"expires_at": "2999-01-01T00:00:00.000000Z",
                                        "project": {"id": "proj-a", "name": "images"}}}).encode()
            self.send_response(201)
            self.send_header("X-Subject-Token", "gAAAAAB-stub-token")
        else:
            out = b'{"error": {"code": 401, "message": "The request you have made requires authentication."}}'
            self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


#: keystone identity needs a service user to validate tokens (never asked here: the
#: sign-in only exchanges a password for a token)
_SERVICE_USER = {"VHDKIT_KEYSTONE_USER": "vhdkit", "VHDKIT_KEYSTONE_PASSWORD": "unused"}


@pytest.fixture(scope="module")
def keystone_panel(tmp_path_factory):
    ks = ThreadingHTTPServer((LOOPBACK, 0), _Keystone)
    threading.Thread(target=ks.serve_forever, daemon=True).start()
    env = {"VHDKIT_AUTH": "keystone", "VHDKIT_KEYSTONE_URL": f"http://{LOOPBACK}:{ks.server_port}/v3", **_SERVICE_USER}
    try:
        with ApiServer(tmp_path_factory.mktemp("ks"), env=env) as server:
            yield server
    finally:
        ks.shutdown()


def test_keystone_sign_in_exchanges_a_password_for_a_token_in_an_httponly_cookie(keystone_panel):
    with httpx.Client(base_url=keystone_panel.url) as c:
        assert c.get("/panel/api/config").json()["auth"] == "keystone"
        r = c.post("/panel/api/session", headers={CSRF: "x"},
                   json={"username": "alice", "password": "s3cret", "project": "images"})
        assert r.status_code == 200, r.text
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("vhdkit_session=gAAAAAB-stub-token;") and "HttpOnly" in cookie and "Max-Age=" in cookie
        assert "s3cret" not in r.text and "gAAAA" not in r.text
    path, body = _Keystone.seen[-1]
    assert path == "/v3/auth/tokens"
    assert body["auth"]["identity"]["methods"] == ["password"]
    assert body["auth"]["scope"]["project"] == {"name": "images", "domain": {"name": "Default"}}


def test_keystone_sign_in_refusals_say_nothing_about_the_server(keystone_panel, tmp_path):
    with httpx.Client(base_url=keystone_panel.url) as c:
        bad = c.post("/panel/api/session", headers={CSRF: "x"},
                     json={"username": "alice", "password": "wrong", "project": "images"})
        assert bad.status_code == 401 and "set-cookie" not in bad.headers
        assert c.post("/panel/api/session", headers={CSRF: "x"}, json={"username": "alice"}).status_code == 400
    env = {"VHDKIT_AUTH": "keystone", "VHDKIT_KEYSTONE_URL": "http://127.0.0.1:9/v3",   # nothing listens there
           **_SERVICE_USER}
    with ApiServer(tmp_path, env=env) as down, httpx.Client(base_url=down.url) as c:
        r = c.post("/panel/api/session", headers={CSRF: "x"},
                   json={"username": "alice", "password": "s3cret", "project": "images"})
        assert r.status_code == 503 and "127.0.0.1" not in r.text and ":9" not in r.text


# ---- the object-store API ----------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(api_server):
    """acct-a's container 'exports' with a large object of three segments and a plain object."""
    st = store(api_server, A)
    data = bytes(range(256)) * 40   # 10240 bytes
    import io
    segments.split(st, "exports", "img.vhd", io.BytesIO(data), segment_size=4096)
    st.put_bytes("exports", "notes/readme.txt", b"hello")
    return data


def test_containers_and_objects_are_listed_for_the_callers_own_account_only(api_server, exported):
    with api_server.http(f"{A}:cloudImages:observer") as c:
        assert c.get("/store/v1/containers").json() == {"containers": [{"name": "exports"}]}
        objs = {o["name"]: o for o in c.get("/store/v1/containers/exports/objects").json()["objects"]}
    assert set(objs) == {"img.vhd", "img.vhd-00001", "img.vhd-00002", "img.vhd-00003", "img.vhd.segments.json",
                         "notes/readme.txt"}
    assert objs["img.vhd"]["large_object"] == {"segments_prefix": "img.vhd-", "sidecar": "img.vhd.segments.json",
                                               "size": len(exported)}
    with api_server.http(f"{B}:cloudImages:admin") as c:
        assert c.get("/store/v1/containers").json() == {"containers": []}
        assert c.get("/store/v1/containers/exports/objects").status_code == 404
        assert c.get("/store/v1/containers/exports/objects/img.vhd").status_code == 404
        assert c.delete("/store/v1/containers/exports/objects/notes/readme.txt").status_code == 404
    assert store(api_server, A).exists("exports", "notes/readme.txt")


def test_paging_objects(api_server, exported):
    with api_server.http(ADMIN_A) as c:
        first = c.get("/store/v1/containers/exports/objects", params={"limit": 2}).json()
        assert len(first["objects"]) == 2 and first["next_marker"] == first["objects"][-1]["name"]
        rest = c.get("/store/v1/containers/exports/objects", params={"marker": first["next_marker"]}).json()
        assert len(rest["objects"]) == 4 and "next_marker" not in rest
        assert c.get("/store/v1/containers/exports/objects", params={"limit": 0}).status_code == 400


def test_download_of_a_manifest_is_the_whole_verified_image(api_server, exported):
    with api_server.http(f"{A}:cloudImages:observer") as c:
        r = c.get("/store/v1/containers/exports/objects/img.vhd")
        assert r.status_code == 200 and r.content == exported
        assert r.headers["content-disposition"].startswith('attachment; filename="img.vhd"')
        plain = c.get("/store/v1/containers/exports/objects/notes/readme.txt")
        assert plain.content == b"hello" and 'filename="readme.txt"' in plain.headers["content-disposition"]


def test_verify_names_a_missing_or_altered_segment(api_server, tmp_path):
    import io
    st = store(api_server, A)
    data = b"\x01" * 9000
    segments.split(st, "v", "x.vhd", io.BytesIO(data), segment_size=4096)
    with api_server.http(ADMIN_A) as c:
        ok = c.get("/store/v1/containers/v/verify", params={"name": "x.vhd"}).json()
        assert ok == {"ok": True, "size": 9000, "sha256": hashlib.sha256(data).hexdigest(), "segments": 3}
        st.put_bytes("v", "x.vhd-00002", b"\x02" * 4096)            # altered, same size
        bad = c.get("/store/v1/containers/v/verify", params={"name": "x.vhd"}).json()
        assert bad["ok"] is False and bad["segment"] == "x.vhd-00002" and "altered" in bad["problem"]
        with pytest.raises(httpx.RemoteProtocolError):              # the download breaks off, never looks whole
            c.get("/store/v1/containers/v/objects/x.vhd")
        assert c.delete("/store/v1/containers/v/objects/x.vhd-00003").status_code == 204
        gone = c.get("/store/v1/containers/v/verify", params={"name": "x.vhd"}).json()
        assert gone["segment"] == "x.vhd-00003" and "missing" in gone["problem"]
        missing = c.get("/store/v1/containers/v/objects/x.vhd")    # found before any byte is sent
        assert missing.status_code == 409 and "x.vhd-00003 is missing" in missing.json()["error"]["message"]
        assert c.get("/store/v1/containers/v/verify", params={"name": "nothing"}).status_code == 404


def test_deleting_needs_an_admin_role(api_server, exported):
    for roles in ("cloudImages:creator", "cloudImages:observer", "observer"):
        with api_server.http(f"{A}:{roles}") as c:
            r = c.delete("/store/v1/containers/exports/objects/notes/readme.txt")
            assert r.status_code == 403, roles
    with api_server.http(f"{A}:") as c:
        assert c.get("/store/v1/containers").status_code == 403
    with api_server.http() as c:
        assert c.get("/store/v1/containers").status_code == 401


@pytest.mark.parametrize("target", [
    "/store/v1/containers/../objects", "/store/v1/containers/%2e%2e/objects",
    "/store/v1/containers/exports/objects/..%2f..%2facct-b%2fexports%2fobjects%2fx",
    "/store/v1/containers/exports/objects/a/../../../etc/passwd",
    "/store/v1/containers/exports/objects/%2Fetc%2Fpasswd", "/store/v1/containers/exports/objects//etc/passwd",
    "/store/v1/containers/exports/objects/a%00b", "/store/v1/containers/exports/verify?name=/etc/passwd",
    "/store/v1/containers/exports/verify?name=..", "/store/v1/containers/" + "c" * 300 + "/objects",
    "/store/v1/containers/exports/objects/" + "n" * 1100, "/store/v1/containers/exports/verify?name=" + "n" * 1100,
    "/store/v1/containers/exports/objects?prefix=%00", "/store/v1/containers/exports/objects?limit=99999999999999999999",
])
def test_hostile_names_are_refused_without_touching_anything(api_server, exported, target):
    for method in ("GET", "DELETE"):
        head = f"{method} {target} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {ADMIN_A}\r\nConnection: close\r\n\r\n"
        status, headers, body = raw_request(api_server, head)
        assert status in (400, 404, 405), (method, target, status, body[:300])
        text = body.decode("utf-8", "replace")
        assert str(api_server.data) not in text and "root:" not in text
    st = store(api_server, A)
    assert st.exists("exports", "notes/readme.txt") and st.exists("exports", "img.vhd-00001")


def test_object_names_are_returned_as_data_not_markup(api_server):
    xss = '<img src=x onerror=alert(1)>'
    store(api_server, "acct-x").create_container("c")
    store(api_server, "acct-x").put_bytes("c", xss, b"x")
    with api_server.http("acct-x:admin") as c:
        r = c.get("/store/v1/containers/c/objects")
        assert r.headers["content-type"] == "application/json"
        assert r.json()["objects"][0]["name"] == xss
        d = c.get("/store/v1/containers/c/objects/" + httpx.URL(xss).raw_path.decode().lstrip("/"))
        assert d.status_code == 200 and "<" not in d.headers["content-disposition"].split("filename*=")[0]


def test_creating_a_container_is_for_creators_and_admins_of_the_own_account(api_server):
    with api_server.http(f"{B}:cloudImages:observer") as c:
        assert c.put("/store/v1/containers/mine").status_code == 403
    with api_server.http(f"{B}:cloudImages:creator") as c:
        assert c.put("/store/v1/containers/mine").status_code == 201
        assert c.put("/store/v1/containers/mine").status_code == 204
        for bad in ("..", "%2e%2e", "a%00b", "c" * 300):
            assert c.put(f"/store/v1/containers/{bad}").status_code in (400, 404), bad
        assert c.get("/store/v1/containers").json() == {"containers": [{"name": "mine"}]}
    assert not (api_server.data / "objects" / A / "mine").exists()
