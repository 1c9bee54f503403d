"""python-glanceclient, CLI and library, unchanged, against a real `vhdkit
serve` subprocess: every command exits 0 and prints what a Glance server would
make it print, and the negative cases fail the way Glance makes them fail."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from helpers_api import api_server  # noqa: F401
from helpers_pg import ENGINES, engine_env

OWNER = "acct-owner:admin"
OWNER_OBSERVER = "acct-owner:observer"
OWNER_CREATOR = "acct-owner:cloudImages:creator"
MEMBER = "acct-member:cloudImages:admin"
STRANGER = "acct-stranger:admin"


@pytest.fixture(scope="module", params=ENGINES)
def api_engine(request):
    """Every test here on a server on SQLite, then on PostgreSQL."""
    yield from engine_env(request)


def table(stdout: str) -> dict:
    """glanceclient's `| Property | Value |` table as a dict."""
    rows, key = {}, None
    for line in stdout.splitlines():
        if line.startswith("|") and not line.startswith("| Property"):
            cells = [c.strip() for c in line.strip()[1:-1].split("|", 1)]
            if len(cells) != 2:
                continue
            if cells[0]:
                key = cells[0]
                rows[key] = cells[1]
            elif key is not None:   # a long value wrapped onto the next line
                rows[key] += cells[1]
    return rows


def listing(stdout: str) -> list:
    """A glanceclient list table as a list of dicts keyed by its header."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("|")]
    if not lines:
        return []
    head = [c.strip() for c in lines[0].strip().strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in ln.strip().strip("|").split("|")))) for ln in lines[1:]]


#: The data these tests upload is random bytes: disk_format raw (a "vhd" upload
#: must be a real VHD, see test_security.py).
@pytest.fixture(scope="module")
def disk(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("glance-data") / "disk.raw"
    path.write_bytes(os.urandom(1 << 20) + b"tail")
    return path


def create(server, token, *args) -> dict:
    out = table(server.glance(token, "image-create", "--disk-format", "raw", "--container-format", "bare",
                              *args).stdout)
    assert out["id"], out
    return out


# ---- the happy path through the CLI ---------------------------------------------
# Set-up and checks go through the library where the CLI is not the point, so
# that each `glance` command (a new process) runs for what it proves.

def test_cli_create_with_properties_upload_download(api_server, disk, tmp_path):
    img = create(api_server, OWNER, "--name", "cli-one", "--property", "os_distro=ubuntu",
                 "--property", "build=42", "--min-ram", "512")
    assert img["name"] == "cli-one" and img["os_distro"] == "ubuntu" and img["build"] == "42"
    assert img["status"] == "queued" and img["owner"] == "acct-owner" and img["min_ram"] == "512"

    api_server.glance(OWNER, "image-upload", "--file", str(disk), img["id"])
    shown = api_server.glance_lib(OWNER).images.get(img["id"])
    data = disk.read_bytes()
    assert shown.status == "active" and shown.size == len(data)
    assert shown.checksum == hashlib.md5(data).hexdigest()
    assert shown.os_hash_value == hashlib.sha512(data).hexdigest()

    out = tmp_path / "back.raw"
    api_server.glance(OWNER, "image-download", "--file", str(out), img["id"])
    assert out.read_bytes() == data


def test_cli_create_with_file_uploads_in_one_command(api_server, disk):
    img = create(api_server, OWNER, "--name", "cli-file", "--file", str(disk))
    assert img["status"] == "active" and img["size"] == str(disk.stat().st_size)
    assert img["checksum"] == hashlib.md5(disk.read_bytes()).hexdigest()


def lib_image(server, token=OWNER, data: Path = None, **fields):
    gc = server.glance_lib(token)
    img = gc.images.create(**{"disk_format": "raw", "container_format": "bare", **fields})
    if data is not None:
        with open(data, "rb") as f:
            gc.images.upload(img.id, f)
    return img.id


def test_cli_download_detects_corrupted_data(api_server, disk, tmp_path):
    """glanceclient verifies the hash it was given; a blob altered on disk fails the download."""
    iid = lib_image(api_server, name="cli-corrupt", data=disk)
    blobs = [p for p in (api_server.data / "blobs").rglob(f"{iid}*") if p.is_file()]
    assert len(blobs) == 1
    raw = bytearray(blobs[0].read_bytes())
    raw[1000] ^= 0xFF
    blobs[0].write_bytes(bytes(raw))
    proc = api_server.glance(OWNER, "image-download", "--file", str(tmp_path / "bad"), iid, check=False)
    assert proc.returncode != 0 and "corrupt" in (proc.stderr + proc.stdout).lower()


def test_cli_list_with_property_filter_and_tags(api_server):
    gc = api_server.glance_lib(OWNER)
    a = lib_image(api_server, name="flt-a", flavor="mint")
    b = lib_image(api_server, name="flt-b", flavor="plain")
    api_server.glance(OWNER, "image-tag-update", a, "red")
    gc.image_tags.update(a, "blue")
    gc.image_tags.update(b, "red")

    ids = lambda *args: {r["ID"] for r in listing(api_server.glance(OWNER, "image-list", *args).stdout)}
    assert ids("--property-filter", "flavor=mint") == {a}
    assert ids("--tag", "red", "--tag", "blue") == {a}

    api_server.glance(OWNER, "image-tag-delete", a, "blue")
    assert ids("--tag", "red") >= {a, b} and ids("--tag", "red", "--tag", "blue") == set()
    assert gc.images.get(a).tags == ["red"]


def test_cli_update_adds_replaces_and_removes_properties(api_server):
    iid = lib_image(api_server, name="upd", keep="1", drop="2")
    out = table(api_server.glance(OWNER, "image-update", iid, "--name", "upd2",
                                  "--property", "keep=one", "--property", "added=3",
                                  "--remove-property", "drop").stdout)
    assert out["name"] == "upd2" and out["keep"] == "one" and out["added"] == "3" and "drop" not in out
    shown = api_server.glance_lib(OWNER).images.get(iid)
    assert shown["keep"] == "one" and shown["added"] == "3" and "drop" not in shown


def test_cli_sharing_pending_accept_reject(api_server):
    iid = lib_image(api_server, name="shared-one", visibility="shared")
    owner = api_server.glance_lib(OWNER)
    created = listing(api_server.glance(OWNER, "member-create", iid, "acct-member").stdout)
    assert [(r["Image ID"], r["Member ID"], r["Status"]) for r in created] == [(iid, "acct-member", "pending")]
    owner.image_members.create(iid, "acct-other")
    rows = listing(api_server.glance(OWNER, "member-list", "--image-id", iid).stdout)
    assert {(r["Image ID"], r["Member ID"], r["Status"]) for r in rows} == {
        (iid, "acct-member", "pending"), (iid, "acct-other", "pending")}

    member = api_server.glance_lib(MEMBER)
    mine = lambda **f: {i.id for i in member.images.list(filters=f)}
    assert iid not in mine()
    pending = listing(api_server.glance(MEMBER, "image-list", "--visibility", "shared",
                                        "--member-status", "pending").stdout)
    assert iid in {r["ID"] for r in pending}

    api_server.glance(MEMBER, "member-update", iid, "acct-member", "accepted")
    assert iid in {r["ID"] for r in listing(api_server.glance(MEMBER, "image-list").stdout)}
    assert iid not in mine(visibility="shared", member_status="pending")

    api_server.glance(MEMBER, "member-update", iid, "acct-member", "rejected")
    assert iid not in mine()
    assert iid in mine(visibility="shared", member_status="rejected")
    owner.image_members.delete(iid, "acct-other")
    assert [(m.member_id, m.status) for m in owner.image_members.list(iid)] == [("acct-member", "rejected")]


def test_cli_deactivate_reactivate_delete(api_server, disk, tmp_path):
    iid = lib_image(api_server, name="lifecycle", data=disk)
    gc = api_server.glance_lib(OWNER)
    api_server.glance(OWNER, "image-deactivate", iid)
    assert gc.images.get(iid).status == "deactivated"
    proc = api_server.glance(OWNER, "image-download", "--file", str(tmp_path / "x"), iid, check=False)
    assert proc.returncode != 0 and "HTTP 403 Forbidden" in proc.stderr
    api_server.glance(OWNER, "image-reactivate", iid)
    assert gc.images.get(iid).status == "active"
    api_server.glance(OWNER, "image-delete", iid)
    from glanceclient import exc
    with pytest.raises(exc.HTTPNotFound):
        gc.images.get(iid)


def test_cli_tasks_create_list_show(api_server):
    # the input is checked when the task is created (a Glance-style file:// URL is 400 here)
    task_input = {"import_from": "nowhere/disk.vhd", "import_from_format": "vhd",
                  "image_properties": {"name": "from-task"}}
    task = table(api_server.glance(OWNER, "task-create", "--type", "import",
                                   "--input", json.dumps(task_input)).stdout)
    assert task["type"] == "import" and task["status"] == "pending" and task["owner"] == "acct-owner"
    assert json.loads(task["input"]) == task_input
    rows = listing(api_server.glance(OWNER, "task-list").stdout)
    assert task["id"] in {r["ID"] for r in rows}
    shown = table(api_server.glance(OWNER, "task-show", task["id"]).stdout)
    assert shown["id"] == task["id"] and shown["type"] == "import" and shown["status"] == "pending"


# ---- negative cases through the CLI ----------------------------------------------

def test_cli_observer_cannot_delete(api_server):
    iid = lib_image(api_server, name="keep-me")
    proc = api_server.glance(OWNER_OBSERVER, "image-delete", iid, check=False)
    assert proc.returncode == 1 and f"You are not permitted to delete the image '{iid}'" in proc.stderr
    assert api_server.glance_lib(OWNER_OBSERVER).images.get(iid).name == "keep-me"


@pytest.mark.parametrize("token", [OWNER_CREATOR, OWNER])
def test_cli_cannot_set_com_rackspace_properties(api_server, token):
    iid = lib_image(api_server, name="rax")
    proc = api_server.glance(token, "image-update", iid, "--property", "com.rackspace__1__options=0", check=False)
    assert proc.returncode == 1 and "HTTP 403 Forbidden" in proc.stderr
    if token == OWNER:   # the creator is refused for its role before the property is looked at
        assert "com.rackspace__1__options" in proc.stderr
    assert "com.rackspace__1__options" not in api_server.glance_lib(OWNER).images.get(iid)


def test_cli_stranger_gets_404_for_a_private_image(api_server):
    iid = lib_image(api_server, name="private-one")
    proc = api_server.glance(STRANGER, "image-show", iid, check=False)
    assert proc.returncode == 1 and "HTTP 404 Not Found" in proc.stderr


def test_cli_tag_longer_than_255_is_400(api_server):
    iid = lib_image(api_server, name="tags")
    proc = api_server.glance(OWNER, "image-tag-update", iid, "x" * 256, check=False)
    assert proc.returncode == 1 and "HTTP 400 Bad Request" in proc.stderr
    gc = api_server.glance_lib(OWNER)
    gc.image_tags.update(iid, "y" * 255)
    assert gc.images.get(iid).tags == ["y" * 255]


# ---- the library ------------------------------------------------------------------

def test_library_round_trip(api_server, disk):
    from glanceclient import exc

    gc = api_server.glance_lib(OWNER)
    img = gc.images.create(name="lib", disk_format="raw", container_format="bare", colour="green")
    assert img.status == "queued" and img["colour"] == "green"
    with open(disk, "rb") as f:
        gc.images.upload(img.id, f)
    assert b"".join(gc.images.data(img.id)) == disk.read_bytes()
    gc.images.update(img.id, colour="blue", shape="round", remove_props=[])
    gc.images.update(img.id, remove_props=["shape"])
    got = gc.images.get(img.id)
    assert got["colour"] == "blue" and "shape" not in got
    gc.image_tags.update(img.id, "lib-tag")
    assert [i.id for i in gc.images.list(filters={"tag": ["lib-tag"]})] == [img.id]
    gc.image_tags.delete(img.id, "lib-tag")
    gc.images.deactivate(img.id)
    gc.images.reactivate(img.id)
    assert gc.images.get(img.id).status == "active"

    with pytest.raises(exc.HTTPNotFound):
        api_server.glance_lib(STRANGER).images.get(img.id)
    with pytest.raises(exc.HTTPForbidden):
        api_server.glance_lib(OWNER_OBSERVER).images.delete(img.id)
    gc.images.delete(img.id)
    with pytest.raises(exc.HTTPNotFound):
        gc.images.get(img.id)


def test_library_lists_all_pages(api_server):
    gc = api_server.glance_lib("acct-pages:admin")
    made = {gc.images.create(name=f"p{i:02d}").id for i in range(7)}
    assert {i.id for i in gc.images.list(page_size=3)} == made
    names = [i.name for i in gc.images.list(page_size=2, sort="name:desc")]
    assert names == sorted(names, reverse=True) and len(names) == 7


def test_library_sharing(api_server):
    owner, member = api_server.glance_lib(OWNER), api_server.glance_lib(MEMBER)
    img = owner.images.create(name="lib-shared", visibility="shared")
    owner.image_members.create(img.id, "acct-member")
    assert [m.status for m in owner.image_members.list(img.id)] == ["pending"]
    member.image_members.update(img.id, "acct-member", "accepted")
    assert img.id in {i.id for i in member.images.list()}


def test_library_malformed_json_and_bad_patch_paths_are_400(api_server):
    from glanceclient import exc

    gc = api_server.glance_lib(OWNER)
    img = gc.images.create(name="bad-bodies")
    http = gc.http_client
    with pytest.raises(exc.HTTPBadRequest):
        http.post("/v2/images", data="{not json", headers={"Content-Type": "application/json"})
    patch = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
    for ops in ([{"op": "add", "path": "/a/b", "value": "x"}],
                [{"op": "add", "path": "name", "value": "x"}],
                [{"op": "move", "path": "/name", "from": "/x"}],
                [{"op": "add", "path": "/name"}],
                {"op": "add"}):
        with pytest.raises(exc.HTTPBadRequest):
            http.patch(f"/v2/images/{img.id}", data=json.dumps(ops), headers=patch)
    with pytest.raises(exc.HTTPConflict):   # Glance: removing a missing property is 409
        http.patch(f"/v2/images/{img.id}", data=json.dumps([{"op": "remove", "path": "/not-there"}]),
                   headers=patch)
    assert gc.images.get(img.id).name == "bad-bodies"
