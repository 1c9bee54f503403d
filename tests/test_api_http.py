"""The HTTP surface itself, spoken to with plain httpx against a real
`vhdkit serve` subprocess: discovery, schemas, identity, negotiation, errors,
links, streamed data with Content-MD5 and ranges."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from helpers_api import api_server  # noqa: F401
from helpers_pg import ENGINES, engine_env

ADMIN = "acct-a:admin"
UUID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
PATCH_TYPE = "application/openstack-images-v2.1-json-patch"


@pytest.fixture(scope="module", params=ENGINES)
def api_engine(request):
    """Every test here on a server on SQLite, then on PostgreSQL."""
    yield from engine_env(request)


def test_server_runs_on_the_engine_of_its_database_url(api_server, api_engine):
    with api_server.http() as c:
        assert c.get("/v2/images", headers={"X-Auth-Token": ADMIN}).status_code == 200
    assert (api_server.data / "registry.db").exists() == (api_engine is None)
    if api_engine is not None:
        import psycopg

        with psycopg.connect(api_engine) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0006"


def assert_json_error(resp, status):
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert err["code"] == status and isinstance(err["message"], str) and err["message"]
    return err["message"]


def new_image(c, **fields):
    body = {"name": "img", "disk_format": "vhd", "container_format": "bare", **fields}
    r = c.post("/v2/images", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_version_discovery_lists_v2_with_links_to_this_server(api_server):
    with api_server.http() as c:
        root = c.get("/")
        versions = c.get("/versions")
    assert root.status_code == 300 and versions.status_code == 200
    for doc in (root.json(), versions.json()):
        ids = {v["id"]: v for v in doc["versions"]}
        assert ids["v2.7"]["status"] == "CURRENT" and "v2.0" in ids
        assert ids["v2.7"]["links"][0]["href"] == api_server.url + "/v2/"


@pytest.mark.parametrize("name", ["image", "images", "member", "members", "task", "tasks"])
def test_schemas_are_served(api_server, name):
    with api_server.http(ADMIN) as c:
        r = c.get(f"/v2/schemas/{name}")
    assert r.status_code == 200 and r.json()["name"] == name


def test_image_schema_says_extra_properties_are_strings_and_lists_formats(api_server):
    with api_server.http(ADMIN) as c:
        schema = c.get("/v2/schemas/image").json()
    assert schema["additionalProperties"] == {"type": "string"}
    props = schema["properties"]
    assert "vhd" in props["disk_format"]["enum"] and "ova" in props["container_format"]["enum"]
    assert props["checksum"]["readOnly"] and props["tags"]["items"]["maxLength"] == 255


def test_schemas_need_a_role_of_the_matrix(api_server):
    with api_server.http("acct-a:nobody") as c:
        assert "may not" in assert_json_error(c.get("/v2/schemas/image"), 403)


def test_unknown_schema_is_404_json(api_server):
    with api_server.http(ADMIN) as c:
        assert_json_error(c.get("/v2/schemas/nope"), 404)


@pytest.mark.parametrize("headers", [
    {},
    {"X-Auth-Token": "no-colon"},
    {"X-Auth-Token": "a b:admin"},
    {"X-Auth-Token": "acct:adm in"},
    {"X-Auth-Token": "acct%00:admin"},
    {"X-Roles": "admin"},
])
def test_missing_or_malformed_identity_is_401(api_server, headers):
    with api_server.http(headers=headers) as c:
        r = c.get("/v2/images")
    assert_json_error(r, 401)
    assert "WWW-Authenticate" in r.headers


def test_identity_from_tenant_and_roles_headers(api_server):
    with api_server.http(headers={"X-Tenant-Id": "acct-t", "X-Roles": "cloudImages:admin"}) as c:
        img = new_image(c)
    assert img["owner"] == "acct-t"


def test_the_service_role_cannot_be_claimed_over_http(api_server):
    with api_server.http("acct-a:vhdkit:service") as c:
        assert_json_error(c.get("/v2/images"), 403)


@pytest.mark.parametrize("accept", ["application/xml", "text/html", "application/json;q=0, application/xml"])
def test_xml_only_clients_get_406(api_server, accept):
    with api_server.http(ADMIN, headers={"Accept": accept}) as c:
        assert_json_error(c.get("/v2/images"), 406)


@pytest.mark.parametrize("accept", ["application/json", "*/*", "application/*", "application/xml, application/json;q=0.5"])
def test_json_accepting_clients_are_served(api_server, accept):
    with api_server.http(ADMIN, headers={"Accept": accept}) as c:
        assert c.get("/v2/images").status_code == 200


def test_unknown_route_and_method_are_json_errors(api_server):
    with api_server.http(ADMIN) as c:
        assert_json_error(c.get("/v2/nothing"), 404)
        assert_json_error(c.post("/versions"), 405)


def test_create_answers_201_with_location_and_show_finds_it(api_server):
    with api_server.http(ADMIN) as c:
        r = c.post("/v2/images", json={"name": "loc", "disk_format": "vhd", "container_format": "bare",
                                       "os_type": "linux"})
        assert r.status_code == 201
        img = r.json()
        assert r.headers["location"].endswith(f"/v2/images/{img['id']}")
        assert img["status"] == "queued" and img["os_type"] == "linux"
        assert img["self"] == f"/v2/images/{img['id']}" and img["schema"] == "/v2/schemas/image"
        shown = c.get(img["self"]).json()
    assert shown == img


def test_non_uuid_image_id_is_404(api_server):
    with api_server.http(ADMIN) as c:
        assert_json_error(c.get("/v2/images/not-a-uuid"), 404)
        assert_json_error(c.get("/v2/images/..%2F..%2Fetc"), 404)


def test_list_links_keep_the_query(api_server):
    with api_server.http(ADMIN) as c:
        for i in range(3):
            new_image(c, name=f"link-{i}", tags=["linked"])
        r = c.get("/v2/images", params=[("tag", "linked"), ("sort", "name:asc"), ("limit", "2")])
        assert r.status_code == 200, r.text
        body = r.json()
        assert [i["name"] for i in body["images"]] == ["link-0", "link-1"]
        assert body["schema"] == "/v2/schemas/images"
        assert body["first"] == "/v2/images?tag=linked&sort=name%3Aasc&limit=2"
        assert body["next"].startswith(body["first"] + "&marker=")
        rest = c.get(body["next"]).json()
    assert [i["name"] for i in rest["images"]] == ["link-2"]
    assert "next" not in rest


def test_patch_needs_the_json_patch_media_type(api_server):
    with api_server.http(ADMIN) as c:
        img = new_image(c)
        ops = [{"op": "replace", "path": "/name", "value": "renamed"}]
        assert_json_error(c.patch(img["self"], json=ops), 415)
        # the 2.0 dialect is accepted, with its own operation form (see test_api_tempest_compat.py)
        assert_json_error(c.patch(img["self"], content=json.dumps(ops),
                                  headers={"Content-Type": "application/openstack-images-v2.0-json-patch"}), 400)
        r = c.patch(img["self"], content=json.dumps(ops), headers={"Content-Type": PATCH_TYPE})
    assert r.status_code == 200 and r.json()["name"] == "renamed"


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2", "\"\udcff\"".encode("utf-8", "surrogatepass")])
def test_malformed_json_is_400(api_server, body):
    with api_server.http(ADMIN, headers={"Content-Type": "application/json"}) as c:
        assert_json_error(c.post("/v2/images", content=body), 400)


def test_deeply_nested_json_is_400(api_server):
    body = b'{"name": "x", "deep": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    with api_server.http(ADMIN, headers={"Content-Type": "application/json"}) as c:
        assert "deeper" in assert_json_error(c.post("/v2/images", content=body), 400)


def test_oversized_json_body_is_413_declared_or_chunked(api_server):
    big = json.dumps({"name": "x", "pad": "a" * (128 * 1024)}).encode()
    with api_server.http(ADMIN, headers={"Content-Type": "application/json"}) as c:
        assert_json_error(c.post("/v2/images", content=big), 413)
        assert_json_error(c.post("/v2/images", content=iter([big[:1000], big[1000:]])), 413)
        assert c.get("/v2/images", params={"name": "x"}).json()["images"] == []


def test_upload_needs_octet_stream(api_server):
    with api_server.http(ADMIN) as c:
        img = new_image(c)
        assert_json_error(c.put(img["file"], content=b"abc", headers={"Content-Type": "text/plain"}), 415)
        assert c.get(img["self"]).json()["status"] == "queued"


def _upload(c, img, data, chunked):
    content = iter([data[i:i + 65536] for i in range(0, len(data), 65536)]) if chunked else data
    r = c.put(img["file"], content=content, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 204, r.text


@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "chunked"])
def test_upload_then_download_with_content_md5(api_server, chunked):
    data = os.urandom(3 * 65536 + 123)
    with api_server.http(ADMIN) as c:
        img = new_image(c, disk_format="raw")   # random bytes: a "vhd" upload must be a VHD
        _upload(c, img, data, chunked)
        shown = c.get(img["self"]).json()
        assert shown["status"] == "active" and shown["size"] == len(data)
        assert shown["checksum"] == hashlib.md5(data).hexdigest()
        assert shown["os_hash_algo"] == "sha512" and shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
        r = c.get(img["file"], headers={"Accept": "application/octet-stream"})
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-md5"] == hashlib.md5(data).hexdigest()
    assert r.headers["content-type"] == "application/octet-stream"


def test_download_ranges_206_and_416(api_server):
    data = os.urandom(10000)
    with api_server.http(ADMIN) as c:
        img = new_image(c, disk_format="raw")
        _upload(c, img, data, chunked=False)
        r = c.get(img["file"], headers={"Range": "bytes=100-199"})
        assert r.status_code == 206 and r.content == data[100:200]
        assert r.headers["content-range"] == "bytes 100-199/10000"
        r = c.get(img["file"], headers={"Range": "bytes=9990-"})
        assert r.status_code == 206 and r.content == data[9990:]
        r = c.get(img["file"], headers={"Range": "bytes=-5"})
        assert r.status_code == 206 and r.content == data[-5:]
        r = c.get(img["file"], headers={"Range": "bytes=9000-20000"})
        assert r.status_code == 206 and r.content == data[9000:]
        r = c.get(img["file"], headers={"Range": "bytes=10000-"})
        assert_json_error(r, 416)
        assert r.headers["content-range"] == "bytes */10000"


def test_download_of_an_image_without_data_is_204(api_server):
    with api_server.http(ADMIN) as c:
        img = new_image(c)
        assert c.get(img["file"]).status_code == 204
