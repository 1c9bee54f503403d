"""`vhdkit serve --auth keystone` against a real Keystone (scripts/keystone_aio.py):
python-glanceclient, openstacksdk and python-openstackclient authenticate with
a password, get a token and the catalog from Keystone and find vhdkit as the
image endpoint; vhdkit validates their tokens.  Also: invalid and revoked
tokens (401 with WWW-Authenticate naming Keystone), the role map, the
operator role and the unclaimable service role."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from helpers_api import glance_executable
from helpers_keystone import keystone_server

#: the test server trusts a validated token this long (the revocation test waits it out)
CACHE_SECONDS = 2.0


@pytest.fixture(scope="module")
def server(keystone, tmp_path_factory):
    srv = keystone_server(keystone, tmp_path_factory.mktemp("api-keystone"),
                          VHDKIT_KEYSTONE_CACHE_SECONDS=str(CACHE_SECONDS))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def member(keystone):
    return keystone.user(["member"])


def _cli(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; run scripts/setup")
    return found


def _run(user, *cmd: str, home: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(user.os_env(), HOME=str(home))
    proc = subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:3])} … exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _disk(tmp_path: Path, size: int = 1 << 20) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(size))
    return path


# ---- the real clients, password auth through the catalog ------------------------------------

def test_openstacksdk_password_auth(server, member, tmp_path):
    conn = member.sdk()
    assert conn.image.get_endpoint() .rstrip("/").startswith(server.url)
    path = _disk(tmp_path)
    img = conn.image.create_image(name="ks-sdk", filename=str(path), disk_format="raw",
                                  container_format="bare", wait=True)
    got = conn.image.get_image(img)
    assert got.status == "active" and got.owner == member.project_id
    assert got.checksum == hashlib.md5(path.read_bytes()).hexdigest()
    assert img.id in [i.id for i in conn.image.images()]
    conn.image.delete_image(img)
    assert img.id not in [i.id for i in conn.image.images()]


def test_glanceclient_password_auth(server, member, tmp_path):
    glance = glance_executable()
    path = _disk(tmp_path)
    out = _run(member, glance, "image-create", "--name", "ks-glance", "--disk-format", "raw",
               "--container-format", "bare", "--file", str(path), home=tmp_path)
    image_id = next(line.split("|")[2].strip() for line in out.stdout.splitlines() if "| id " in line)
    assert image_id in _run(member, glance, "image-list", home=tmp_path).stdout
    back = tmp_path / "back.raw"
    _run(member, glance, "image-download", "--file", str(back), image_id, home=tmp_path)
    assert back.read_bytes() == path.read_bytes()
    _run(member, glance, "image-delete", image_id, home=tmp_path)


def test_openstackclient_image_commands(server, member, tmp_path):
    osc = _cli("openstack")
    path = _disk(tmp_path)
    made = json.loads(_run(member, osc, "image", "create", "--disk-format", "raw", "--container-format", "bare",
                           "--file", str(path), "--property", "os_distro=debian", "-f", "json", "ks-osc",
                           home=tmp_path).stdout)
    assert made["owner"] == member.project_id
    listed = json.loads(_run(member, osc, "image", "list", "-f", "json", home=tmp_path).stdout)
    assert made["id"] in [i["ID"] for i in listed]
    _run(member, osc, "image", "set", "--property", "flavour=sweet", "--min-ram", "128", made["id"], home=tmp_path)
    shown = json.loads(_run(member, osc, "image", "show", "-f", "json", made["id"], home=tmp_path).stdout)
    assert shown["min_ram"] == 128 and shown["status"] == "active" and shown["size"] == path.stat().st_size
    assert shown["properties"]["flavour"] == "sweet" and shown["properties"]["os_distro"] == "debian"
    _run(member, osc, "image", "delete", made["id"], home=tmp_path)
    gone = _run(member, osc, "image", "show", made["id"], home=tmp_path, check=False)
    assert gone.returncode != 0 and "No Image found" in gone.stderr + gone.stdout


# ---- tokens ------------------------------------------------------------------------------------

def _challenge(keystone) -> str:
    return f'Keystone uri="{keystone.auth_url}"'


@pytest.mark.parametrize("headers", [
    {},
    {"X-Auth-Token": "not-a-token"},
    {"X-Auth-Token": "gAAAAABn" + "A" * 180},
    {"X-Auth-Token": "acct-a:admin"},                                 # header identity is not honoured
    {"X-Tenant-Id": "acct-a", "X-Roles": "admin"},
    {"X-Auth-Token": "x" * 9000},
])
def test_bad_or_missing_token_is_401_naming_keystone(server, keystone, headers):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.get("/v2/images", headers=headers)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == _challenge(keystone)
    assert r.json()["error"]["code"] == 401
    assert "127.0.0.1" not in r.json()["error"]["message"]


def test_identity_headers_beside_a_token_are_ignored(server, member, keystone):
    other = keystone.user(["member"])
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post("/v2/images", json={"name": "mine"},
                   headers={"X-Auth-Token": member.token(), "X-Tenant-Id": other.project_id, "X-Roles": "admin"})
    assert r.status_code == 201, r.text
    assert r.json()["owner"] == member.project_id


def test_a_token_sent_twice_is_400(server, member):
    token = member.token()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.get("/v2/images", headers=[("X-Auth-Token", token), ("X-Auth-Token", token)])
    assert r.status_code == 400 and "more than once" in r.json()["error"]["message"]


def _revoke(keystone, token: str) -> None:
    admin = keystone.admin.session
    r = admin.delete(keystone.auth_url + "/auth/tokens", headers={"X-Subject-Token": token}, raise_exc=False)
    assert r.status_code == 204, r.text


def test_revoked_token_is_refused_once_the_cache_bound_passes(server, member, keystone):
    never_used = member.token()
    used = member.sdk().session.get_token()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/v2/images", headers={"X-Auth-Token": used}).status_code == 200
        _revoke(keystone, used)
        _revoke(keystone, never_used)
        r = c.get("/v2/images", headers={"X-Auth-Token": never_used})
        assert r.status_code == 401 and r.headers["www-authenticate"] == _challenge(keystone)
        time.sleep(CACHE_SECONDS + 0.5)   # the validated token is trusted no longer than this
        r = c.get("/v2/images", headers={"X-Auth-Token": used})
        assert r.status_code == 401 and r.headers["www-authenticate"] == _challenge(keystone)


def test_unscoped_token_is_401(server, keystone):
    # a user without a default project gets an unscoped token: it names no account
    name, password = "unscoped-" + os.urandom(4).hex(), os.urandom(12).hex()
    keystone.admin.identity.create_user(name=name, password=password, domain_id="default")
    r = httpx.post(keystone.auth_url + "/auth/tokens", timeout=30, json={"auth": {"identity": {
        "methods": ["password"], "password": {"user": {"name": name, "domain": {"id": "default"},
                                                       "password": password}}}}})
    assert r.status_code == 201 and "project" not in r.json()["token"]
    got = httpx.get(server.url + "/v2/images", headers={"X-Auth-Token": r.headers["x-subject-token"]}, timeout=30)
    assert got.status_code == 401 and "project" in got.json()["error"]["message"]


# ---- roles ----------------------------------------------------------------------------------------

def _api(server, user) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"X-Auth-Token": user.token()}, timeout=30)


def test_role_map_reader_reads_only(server, keystone, member):
    reader = keystone.user(["reader"])
    with _api(server, reader) as c:
        assert c.get("/v2/images").status_code == 200
        assert c.post("/v2/images", json={"name": "no"}).status_code == 403


def test_role_map_member_is_cloud_images_admin(server, member):
    with _api(server, member) as c:
        made = c.post("/v2/images", json={"name": "m"})
        assert made.status_code == 201
        assert c.patch(f"/v2/images/{made.json()['id']}", content=b'[{"op":"add","path":"/x","value":"1"}]',
                       headers={"Content-Type": "application/openstack-images-v2.1-json-patch"}).status_code == 200
        assert c.delete(f"/v2/images/{made.json()['id']}").status_code == 204


def test_product_roles_held_in_keystone_as_they_are(server, keystone):
    creator = keystone.user(["cloudImages:creator"])
    with _api(server, creator) as c:
        made = c.post("/v2/images", json={"name": "c"})
        assert made.status_code == 201
        assert c.delete(f"/v2/images/{made.json()['id']}").status_code == 403   # RBAC.md: creator cannot delete
    observer = keystone.user(["cloudImages:observer"])
    with _api(server, observer) as c:
        assert c.get("/v2/images").status_code == 200
        assert c.post("/v2/images", json={"name": "o"}).status_code == 403


def test_operator_role_on_admin_project(server, keystone, member):
    admin = keystone.user(["admin"], project="admin")
    with _api(server, member) as c:
        private = c.post("/v2/images", json={"name": "private-of-member"}).json()
        assert c.post("/v2/images", json={"name": "p", "visibility": "public"}).status_code == 403
    with _api(server, admin) as c:
        public = c.post("/v2/images", json={"name": "op-public", "visibility": "public"})
        assert public.status_code == 201, public.text
        ids = {i["id"] for i in c.get("/v2/images", params={"limit": 1000}).json()["images"]}
        assert private["id"] in ids                                       # sees every account's images
        assert c.delete(f"/v2/images/{public.json()['id']}").status_code == 204


def test_service_role_from_keystone_grants_nothing(server, keystone):
    sneaky = keystone.user(["member", "vhdkit:service"])
    with _api(server, sneaky) as c:
        assert c.post("/v2/images", json={"name": "s", "visibility": "public"}).status_code == 403
        assert c.post("/v2/images", json={"name": "s"}).status_code == 201   # still a member


@pytest.mark.parametrize("args, env, says", [
    (["--auth", "keystone"], {}, "needs VHDKIT_KEYSTONE_URL, VHDKIT_KEYSTONE_USER, VHDKIT_KEYSTONE_PASSWORD"),
    (["--auth", "keystone", "--keystone-url", "http://127.0.0.1:9/v3", "--keystone-user", "u",
      "--keystone-role-map", "member=vhdkit:service"], {"VHDKIT_KEYSTONE_PASSWORD": "p"}, "role map entry"),
])
def test_serve_refuses_incomplete_keystone_settings(args, env, says, tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VHDKIT_")}
    proc = subprocess.run([sys.executable, "-m", "vhdkit", "serve", "--port", "1", "--data", str(tmp_path), *args],
                          env=dict(clean, **env), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
