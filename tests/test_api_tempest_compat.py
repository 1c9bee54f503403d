"""What Tempest's ``tempest.api.image.v2`` tests (and Glance's API reference)
expect of the Images API beyond the basics, against a real `vhdkit serve`:
both JSON-patch dialects, the reserved ``os_glance_`` namespace, list filters
on base attributes, 404 for an empty image id, hidden images (2.7) and the
versions advertised."""
from __future__ import annotations

import json

import pytest

from helpers_api import api_server  # noqa: F401

ADMIN = "acct-a:admin"
OTHER = "acct-b:admin"
PATCH_20 = "application/openstack-images-v2.0-json-patch"
PATCH_21 = "application/openstack-images-v2.1-json-patch"


def new_image(c, **fields):
    body = {"name": "img", "disk_format": "raw", "container_format": "bare", **fields}
    r = c.post("/v2/images", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def patch(c, image, ops, dialect=PATCH_20):
    return c.patch(image["self"], content=json.dumps(ops), headers={"Content-Type": dialect})


def listed(c, **params):
    r = c.get("/v2/images", params=params)
    assert r.status_code == 200, r.text
    return {i["id"] for i in r.json()["images"]}


# ---- JSON-patch dialects ---------------------------------------------------------------

def test_the_2_0_patch_dialect_adds_replaces_and_removes(api_server):
    with api_server.http(ADMIN) as c:
        img = new_image(c)
        r = patch(c, img, [{"replace": "/name", "value": "renamed"}, {"add": "/os_distro", "value": "debian"},
                           {"add": "/min_ram", "value": 512}])
        assert r.status_code == 200, r.text
        assert (r.json()["name"], r.json()["os_distro"], r.json()["min_ram"]) == ("renamed", "debian", 512)
        r = patch(c, img, [{"remove": "/os_distro"}])
        assert r.status_code == 200 and "os_distro" not in r.json()
        # the 2.1 dialect goes on working
        r = patch(c, img, [{"op": "replace", "path": "/name", "value": "again"}], PATCH_21)
        assert r.status_code == 200 and r.json()["name"] == "again"


@pytest.mark.parametrize("op", [{"op": "replace", "path": "/name", "value": "x"},      # the 2.1 form
                                {"replace": "/name", "add": "/name", "value": "x"},    # two operations
                                {"value": "x"}])
def test_a_2_0_operation_names_exactly_one_operation(api_server, op):
    with api_server.http(ADMIN) as c:
        img = new_image(c)
        r = patch(c, img, [op])
    assert r.status_code == 400, r.text
    assert "exactly one member" in r.json()["error"]["message"]


def test_an_unknown_patch_type_is_415_naming_both_dialects_in_accept_patch(api_server):
    with api_server.http(ADMIN) as c:
        img = new_image(c)
        r = c.patch(img["self"], json=[{"op": "replace", "path": "/name", "value": "x"}])
    assert r.status_code == 415
    assert set(r.headers["accept-patch"].split(", ")) == {PATCH_20, PATCH_21}


# ---- os_glance_ namespace --------------------------------------------------------------

def test_properties_in_the_os_glance_namespace_are_refused(api_server):
    with api_server.http(ADMIN) as c:
        r = c.post("/v2/images", json={"name": "x", "os_glance_foo": "bar"})
        assert r.status_code == 403 and "os_glance_foo" in r.json()["error"]["message"]
        img = new_image(c)
        for dialect, ops in ((PATCH_20, [{"add": "/os_glance_foo", "value": "bar"}]),
                             (PATCH_21, [{"op": "add", "path": "/os_glance_import_task", "value": "x"}]),
                             (PATCH_21, [{"op": "remove", "path": "/os_glance_failed_import"}])):
            r = patch(c, img, ops, dialect)
            assert r.status_code == 403, r.text
        assert not [k for k in c.get(img["self"]).json() if k.startswith("os_glance_")]


# ---- list filters on base attributes ------------------------------------------------------

def test_lists_filter_on_base_attributes_as_glance_does(api_server):
    with api_server.http(ADMIN) as c:
        small = new_image(c, min_ram=128, min_disk=1)
        big = new_image(c, min_ram=1024, min_disk=20, protected=True)
        assert c.put(small["file"], content=b"x" * 100,
                     headers={"Content-Type": "application/octet-stream"}).status_code == 204
        assert c.put(big["file"], content=b"y" * 5000,
                     headers={"Content-Type": "application/octet-stream"}).status_code == 204
        assert listed(c, size=100) == {small["id"]}
        assert listed(c, size_min=50, size_max=150) == {small["id"]}
        assert listed(c, size_min=1000) == {big["id"]}
        assert listed(c, min_ram=1024) == {big["id"]}
        assert listed(c, min_disk=1) == {small["id"]}
        assert listed(c, protected="true") == {big["id"]}
        assert small["id"] in listed(c, protected="false") and big["id"] not in listed(c, protected="false")
        assert listed(c, virtual_size=12345) == set()
        for bad in ({"size": "big"}, {"min_ram": "-1"}, {"protected": "maybe"}, {"changes-since": "2020-01-01"}):
            r = c.get("/v2/images", params=bad)
            assert r.status_code == 400, (bad, r.text)
        c.patch(big["self"], content=json.dumps([{"replace": "/protected", "value": False}]),
                headers={"Content-Type": PATCH_20})


# ---- empty image id -----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_an_empty_image_id_is_not_found_not_a_redirect(api_server, method):
    with api_server.http(ADMIN, follow_redirects=False) as c:
        r = c.request(method, "/v2/images/")
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == 404


# ---- hidden images (2.7) --------------------------------------------------------------------

def test_hidden_images_are_left_out_of_lists_unless_asked_for(api_server):
    with api_server.http(ADMIN) as c:
        hidden = new_image(c, os_hidden=True)
        plain = new_image(c)
        assert hidden["os_hidden"] is True and plain["os_hidden"] is False
        assert hidden["id"] not in listed(c) and plain["id"] in listed(c)
        assert listed(c, os_hidden="true") >= {hidden["id"]} and plain["id"] not in listed(c, os_hidden="true")
        assert c.get(hidden["self"]).json()["os_hidden"] is True       # shown by id
        r = patch(c, plain, [{"replace": "/os_hidden", "value": True}])
        assert r.status_code == 200 and r.json()["os_hidden"] is True
        assert plain["id"] not in listed(c)
        assert patch(c, plain, [{"replace": "/os_hidden", "value": "yes"}]).status_code == 400
    with api_server.http(OTHER) as c:
        assert patch(c, hidden, [{"replace": "/os_hidden", "value": False}]).status_code == 404


def test_versions_advertise_the_highest_implemented_as_current(api_server):
    with api_server.http() as c:
        for path, status in (("/", 300), ("/versions", 200)):
            r = c.get(path)
            assert r.status_code == status
            ids = {v["id"]: v["status"] for v in r.json()["versions"]}
            assert ids["v2.7"] == "CURRENT" and ids["v2.6"] == "SUPPORTED" and ids["v2.0"] == "SUPPORTED"
            assert [v for v, s in ids.items() if s == "CURRENT"] == ["v2.7"]


def test_the_image_schema_knows_os_hidden_and_the_uploading_status(api_server):
    with api_server.http(ADMIN) as c:
        props = c.get("/v2/schemas/image").json()["properties"]
    assert props["os_hidden"]["type"] == "boolean"
    assert "uploading" in props["status"]["enum"] and "importing" in props["status"]["enum"]


def test_glance_cli_hides_lists_and_unhides_images(api_server):
    from test_api_glance import listing, table

    out = table(api_server.glance(ADMIN, "image-create", "--name", "cli-hidden", "--disk-format", "raw",
                                  "--container-format", "bare", "--hidden", "True").stdout)
    assert out["os_hidden"] == "True"
    names = lambda *args: {r["Name"] for r in listing(api_server.glance(ADMIN, "image-list", *args).stdout)}
    assert "cli-hidden" not in names() and "cli-hidden" in names("--hidden", "true")
    assert table(api_server.glance(ADMIN, "image-update", out["id"], "--hidden", "False").stdout)["os_hidden"] == "False"
    assert "cli-hidden" in names()
