"""Hostile requests to the HTTP API (and so the registry under it): SQL
metacharacters in every filter, sort key, marker and id; path traversal in
image ids, tags, member ids and property names; over-long and deeply nested
JSON bodies, over-long headers.  Every case must answer 4xx with a JSON body
(or 2xx treating the text as plain data), leave the database passing
``PRAGMA integrity_check`` with its rows intact, and write nothing outside
the data directory.
"""
from __future__ import annotations

import json
import socket
import urllib.parse

import pytest
from starlette.testclient import TestClient

from helpers_hostile import tree_state
from vhdkit.api.app import create_app
from vhdkit.api.config import Settings
from vhdkit.registry import Caller, Registry

HDR = {"X-Tenant-Id": "acct-a", "X-Roles": "cloudImages:admin"}
SQLI = ["' OR '1'='1", "x'; DROP TABLE images; --", "\" OR \"\"=\"", "1 UNION SELECT name FROM sqlite_master",
        "%", "_", "\\", "*", "'", "')--", "x\u0000y", "in:a',b", "in:\"a\",\"b'", "gte:2000' OR 1=1 --",
        "\u202e\u0000", "a" * 5000]
FILTERS = ["name", "id", "status", "disk_format", "container_format", "owner", "checksum", "os_hash_value",
           "created_at", "updated_at", "visibility", "member_status", "protected", "size_min", "size_max",
           "tag", "limit", "marker", "sort", "sort_key", "sort_dir", "my_property", "os_hidden"]
COUNTS = {}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    data = root / "data"
    reg = Registry(str(data))
    me = Caller.parse("acct-a", "cloudImages:admin")
    ids = []
    for i in range(3):
        img = reg.create_image(me, name=f"img{i}", disk_format="raw", container_format="bare")
        reg.add_tag(me, img.id, f"t{i}")
        ids.append(img.id)
    app = create_app(Settings(data_dir=str(data)), registry=reg)
    with TestClient(app, raise_server_exceptions=False) as client:
        before = tree_state(root)
        yield client, reg, ids, root
        assert reg.integrity_check() == "ok"
        rows = reg._conn().execute("SELECT COUNT(*) FROM images").fetchone()[0]
        assert rows >= 3
        # nothing outside the data directory appeared
        after = {k: v for k, v in tree_state(root).items() if not k.startswith("data")}
        assert after == {k: v for k, v in before.items() if not k.startswith("data")}
    reg.close()


def _ok_or_4xx_json(r, *, allow_2xx=True):
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert r.status_code < 500
        assert r.headers.get("content-type", "").startswith("application/json"), r.headers
        assert isinstance(r.json(), dict)
    else:
        assert allow_2xx, (r.status_code, r.text[:300])
    return r


def _integrity(reg, n_min=3):
    assert reg.integrity_check() == "ok"
    assert reg._conn().execute("SELECT COUNT(*) FROM images").fetchone()[0] >= n_min


@pytest.mark.parametrize("key", FILTERS)
def test_sql_metacharacters_in_every_list_parameter(env, key):
    client, reg, ids, _ = env
    for v in SQLI:
        r = _ok_or_4xx_json(client.get("/v2/images", params={key: v}, headers=HDR))
        if r.status_code == 200 and key in ("name", "id", "owner", "checksum", "tag", "my_property"):
            # a metacharacter value matches literally: no image has it
            assert r.json()["images"] == [], (key, v)
    COUNTS[key] = len(SQLI)
    _integrity(reg)


@pytest.mark.parametrize("sort", ["name;DROP TABLE images", "name desc", "(SELECT 1)", "1", "name:asc;--",
                                  "rowid", "name:sideways", "name:asc,", ":asc", "i.name"])
def test_hostile_sort_keys_refused(env, sort):
    client, reg, _, _ = env
    for params in ({"sort": sort}, {"sort_key": sort}, {"sort_key": "name", "sort_dir": sort}):
        r = _ok_or_4xx_json(client.get("/v2/images", params=params, headers=HDR), allow_2xx=False)
        assert r.status_code == 400
    _integrity(reg)


TRAVERSAL = ["../../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e", "..\\..\\windows", "/etc/passwd",
             "' OR '1'='1", "00000000-0000-0000-0000-000000000000' OR 1=1 --", "%00", "a" * 3000, "%2e", "%2E%2E",
             "\u2024\u2024%2f"]   # bare "." / ".." are resolved by the client (RFC 3986), never sent


@pytest.mark.parametrize("method,tmpl", [
    ("GET", "/v2/images/{x}"), ("DELETE", "/v2/images/{x}"), ("GET", "/v2/images/{x}/file"),
    ("PUT", "/v2/images/{x}/file"), ("GET", "/v2/images/{x}/members"), ("POST", "/v2/images/{x}/actions/deactivate"),
    ("GET", "/v2/tasks/{x}"), ("PUT", "/v2/images/{x}/tags/t"),
])
def test_traversal_and_sql_in_ids(env, method, tmpl):
    client, reg, _, _ = env
    for x in TRAVERSAL:
        path = tmpl.format(x=urllib.parse.quote(x, safe="%") if "%" not in x else x)
        kw = {}
        if method == "PUT" and path.endswith("/file"):
            kw = {"content": b"data", "headers": dict(HDR, **{"Content-Type": "application/octet-stream"})}
        r = client.request(method, path, headers=kw.pop("headers", HDR), **kw)
        _ok_or_4xx_json(r, allow_2xx=False)
    _integrity(reg)


@pytest.mark.parametrize("tag", ["../../../etc/x", "' OR 1=1 --", "x; DROP TABLE tags", "%2e%2e%2f", "\\..\\",
                                 "a" * 256, "tag with spaces", "\u00e9\u00e8"])
def test_hostile_tags(env, tag):
    """A tag is data: stored literally (2xx) or refused (4xx JSON); never a
    file name, never SQL."""
    client, reg, ids, _ = env
    url = f"/v2/images/{ids[0]}/tags/" + urllib.parse.quote(tag, safe="")
    r = _ok_or_4xx_json(client.put(url, headers=HDR))
    if r.status_code < 300:
        tags = client.get(f"/v2/images/{ids[0]}", headers=HDR).json()["tags"]
        assert tag in tags
        _ok_or_4xx_json(client.delete(url, headers=HDR))
    _integrity(reg)


@pytest.mark.parametrize("member", ["../../x", "' OR 1=1 --", "a" * 300, "%00", "x\"}"])
def test_hostile_member_ids(env, member):
    client, reg, ids, _ = env
    body = json.dumps({"member": member})
    _ok_or_4xx_json(client.post(f"/v2/images/{ids[1]}/members", content=body,
                                headers=dict(HDR, **{"Content-Type": "application/json"})))
    _ok_or_4xx_json(client.get(f"/v2/images/{ids[1]}/members/" + urllib.parse.quote(member, safe=""),
                               headers=HDR))
    _integrity(reg)


def _post_json(client, raw: bytes, ctype="application/json"):
    return client.post("/v2/images", content=raw, headers=dict(HDR, **{"Content-Type": ctype}))


BODIES = {
    "too-long": b'{"name": "' + b"x" * (128 * 1024) + b'"}',
    "deep-array": b'{"name": "a", "x": ' + b"[" * 10000 + b"]" * 10000 + b"}",
    "deep-object": b'{"a":' * 5000 + b"1" + b"}" * 5000,
    "just-deep-enough-plus-one": b'{"a":' * 17 + b"1" + b"}" * 17,
    "not-json": b"{'name': 'x'}",
    "truncated": b'{"name": "x"',
    "not-object": b'["name"]',
    "null": b"null",
    "huge-number": b'{"name": "x", "min_disk": 1' + b"0" * 5000 + b"}",
    "nan": b'{"name": "x", "min_disk": NaN}',
    "bad-utf8": b'{"name": "\xff\xfe"}',
    "lone-surrogate": b'{"name": "\\ud800"}',
    "nul-in-name": b'{"name": "a\\u0000b"}',
    "sql-property": b'{"name": "x", "k\'; DROP TABLE images; --": "v"}',
    "reserved-property": b'{"name": "x", "status": "active"}',
    "huge-property-name": b'{"name": "x", "' + b"k" * 1000 + b'": "v"}',
    "many-properties": json.dumps({f"p{i}": "v" for i in range(5000)}).encode()[:60000] + b"}",
}


@pytest.mark.parametrize("label", sorted(BODIES))
def test_hostile_json_bodies(env, label):
    client, reg, _, _ = env
    n_before = reg._conn().execute("SELECT COUNT(*) FROM images").fetchone()[0]
    r = _ok_or_4xx_json(_post_json(client, BODIES[label]))
    if label in ("too-long", "deep-array", "deep-object", "not-json", "truncated", "not-object", "null",
                 "bad-utf8", "nan", "reserved-property", "huge-property-name", "lone-surrogate",
                 "just-deep-enough-plus-one"):
        assert r.status_code in (400, 403, 409, 413), (label, r.status_code, r.text[:200])
    if r.status_code >= 400:
        assert reg._conn().execute("SELECT COUNT(*) FROM images").fetchone()[0] == n_before
    elif label == "sql-property":   # a property name is data: stored and shown literally
        assert r.json()["k'; DROP TABLE images; --"] == "v"
    _integrity(reg)


@pytest.mark.parametrize("ops", [
    [{"op": "add", "path": "/../../etc", "value": "x"}],
    [{"op": "add", "path": "/k'; DROP TABLE images; --", "value": "x"}],
    [{"op": "replace", "path": "/status", "value": "active"}],
    [{"op": "add", "path": "/tags/-", "value": "' OR 1=1"}] * 200,
    [{"op": "move", "from": "/name", "path": "/x"}],
    [{"op": "add", "path": "", "value": {}}],
    [{"op": "add", "path": "/name/~1~0", "value": "x"}],
    {"op": "add"},
])
def test_hostile_json_patch(env, ops):
    client, reg, ids, _ = env
    r = client.patch(f"/v2/images/{ids[2]}", content=json.dumps(ops),
                     headers=dict(HDR, **{"Content-Type": "application/openstack-images-v2.1-json-patch"}))
    _ok_or_4xx_json(r)
    _integrity(reg)


def test_hostile_identity_headers(env):
    client, reg, _, _ = env
    for h in [{"X-Auth-Token": "' OR 1=1 --"}, {"X-Auth-Token": "a:" + "r," * 10000},
              {"X-Tenant-Id": "../../etc", "X-Roles": "admin"}, {"X-Tenant-Id": "", "X-Roles": "admin"},
              {"X-Tenant-Id": "a\u00e9", "X-Roles": "admin\u0000"}, {}]:
        try:
            r = client.get("/v2/images", headers=h)
        except (UnicodeEncodeError, ValueError):
            continue   # the client refuses to send it at all
        _ok_or_4xx_json(r)
    _integrity(reg)


def test_upload_body_larger_than_cap(tmp_path):
    """An upload past max_image_size stops with 413 JSON; no blob remains."""
    data = tmp_path / "data"
    reg = Registry(str(data))
    me = Caller.parse("acct-a", "cloudImages:admin")
    img = reg.create_image(me, name="x", disk_format="raw", container_format="bare")
    app = create_app(Settings(data_dir=str(data), max_image_size=1 << 20), registry=reg)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.put(f"/v2/images/{img.id}/file", content=b"x" * (2 << 20),
                       headers=dict(HDR, **{"Content-Type": "application/octet-stream"}))
        _ok_or_4xx_json(r, allow_2xx=False)
        assert r.status_code == 413
        assert client.get(f"/v2/images/{img.id}", headers=HDR).json()["status"] == "queued"
    import os
    blobs = [f for _, _, fs in os.walk(data / "blobs") for f in fs]
    assert blobs == []
    assert reg.integrity_check() == "ok"
    reg.close()


def test_over_long_headers_on_the_real_server(tmp_path):
    """Over-long header lines and too many headers against `vhdkit serve`:
    a 4xx, the server stays up and answers the next request."""
    from helpers_api import ApiServer
    srv = ApiServer(tmp_path).start()
    try:
        for req in [b"GET /v2/images HTTP/1.1\r\nHost: x\r\nX-Auth-Token: " + b"a" * (1 << 20) + b"\r\n\r\n",
                    b"GET /v2/images HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(20000))
                    + b"\r\n",
                    b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n"]:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as s:
                try:
                    s.sendall(req)
                    head = s.recv(4096)
                except (ConnectionResetError, BrokenPipeError):
                    head = b"HTTP/1.1 400 (connection closed)"
            status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 400
            assert 400 <= status < 500, head[:200]
        import httpx
        assert httpx.get(srv.url + "/versions", timeout=10).status_code == 200
    finally:
        srv.stop()
