"""Issue 17, from the attacker's side: a real ``vhdkit serve`` and real
``vhdkit worker`` processes on the embedded default, driven over HTTP (and the
``vhdkit`` CLI for the attacker's own files).

"Legacy" data -- bytes stored before uploads were inspected -- cannot be made
over HTTP any more; those tests store it with the registry's Python API (the
way it got there), then attack it over HTTP like the rest.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from helpers_api import ROOT, api_server, raw_request  # noqa: F401
from test_multi_api import host_a, hosts  # noqa: F401 - one of several hosts, image data in Swift
from test_pipeline_http import _worker

from vhdkit.pack import ova
from vhdkit.tasks.pipeline import PipelineConfig
from vhdkit.registry import Caller, Registry

pytestmark = pytest.mark.native   # hostile images and packages reach the core: the sanitizer pass runs these too

ATTACKER = "acct-evil:cloudImages:admin"
VICTIM = "acct-victim:cloudImages:admin"
MiB, GiB = 1 << 20, 1 << 30


def vhdkit_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "vhdkit", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def make_disk(tmp: Path, name: str, size: str = "8M", data: bytes = b"") -> Path:
    p = tmp / name
    assert vhdkit_cli("create", str(p), size, cwd=tmp).returncode == 0
    if data:
        import vhdkit
        with vhdkit.open(p, "r+") as w:
            w.write(data)
    return p


def snapshot(tmp: Path, parent: Path, child: str) -> Path:
    p = tmp / child
    r = vhdkit_cli("snapshot", str(parent), str(p), cwd=tmp)
    assert r.returncode == 0, r.stderr
    return p


def new_image(c, disk_format="vhd", container_format="bare", **kw) -> str:
    r = c.post("/v2/images", json={"name": "x", "disk_format": disk_format,
                                   "container_format": container_format, **kw})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def put_data(c, image_id: str, data: bytes):
    return c.put(f"/v2/images/{image_id}/file", content=data,
                 headers={"Content-Type": "application/octet-stream"})


def blob_files(data: Path, image_id: str) -> list:
    """Files under the data directory whose name holds the image id (blobs, parts)."""
    return [p for p in (data).rglob(f"*{image_id}*") if p.is_file()]


def plant_legacy(server, token: str, path: Path, disk_format="vhd", container_format="bare") -> str:
    """An image whose data was stored before uploads were inspected."""
    account, roles = token.split(":", 1)
    reg = Registry(str(server.data))
    who = Caller.parse(account, roles)
    img = reg.create_image(who, name="legacy", disk_format=disk_format, container_format=container_format)
    reg.upload_file(who, img.id, str(path))
    return img.id


def export(server, token: str, image_id: str, container: str = "exp") -> dict:
    account = token.split(":", 1)[0]
    store = PipelineConfig(home=server.data).store(account)
    if container not in store.list_containers():
        store.create_container(container)
    with server.http(token) as c:
        r = c.post("/v2/tasks", json={"type": "export", "input": {"image_uuid": image_id,
                                                                 "receiving_swift_container": container}})
        assert r.status_code == 201, r.text
        _worker(server.data)
        return c.get(f"/v2/tasks/{r.json()['id']}").json()


def container_objects(server, token: str, container: str = "exp") -> list:
    store = PipelineConfig(home=server.data).store(token.split(":", 1)[0])
    return [o.name for o in store.list(container)]


def assert_no_server_detail(server, text: str) -> None:
    import socket
    for secret in (str(server.data), str(server.workdir), "/tmp/", socket.gethostname()):
        assert secret not in text, (secret, text)


# ------------------------------------------------------------ the locator attack
@pytest.fixture(scope="module")
def victim_object(api_server, tmp_path_factory):
    """Another account's private object on the server: a VHD full of secrets."""
    tmp = tmp_path_factory.mktemp("victim")
    secret = make_disk(tmp, "secret.vhd", data=b"TOP SECRET " * 1000)
    store = PipelineConfig(home=api_server.data).store("acct-victim")
    store.create_container("private")
    with open(secret, "rb") as f:
        store.put("private", "secret.vhd", f)
    found = [p for p in (api_server.data / "objects").rglob("*") if p.is_file() and "secret" in p.name
             and p.read_bytes()[:8] != b"{"]
    assert found, "the victim's object is a file under the data directory"
    return found[0]


#: What every export of a stored differencing VHD reads, whatever its locators name
#: and whether or not that exists: nothing about the server's files.
REFUSED_721 = ("[721] the stored VHD is a differencing disk whose parent is not part of the image; "
               "coalesce it into a standalone VHD (or upload the whole chain as an OVA) first")


@pytest.mark.parametrize("where", ["another account's object", "a host path", "a missing host path"])
def test_export_never_follows_a_parent_locator(api_server, victim_object, tmp_path, where):
    if where == "another account's object":
        parent = victim_object
    else:
        parent = make_disk(tmp_path, "host-file.vhd", data=b"HOST FILE " * 1000)
    evil = snapshot(tmp_path, parent, "evil.vhd")
    if where == "a missing host path":
        parent.unlink()
    # the upload itself is refused now: a differencing disk names files by path
    with api_server.http(ATTACKER) as c:
        iid = new_image(c)
        r = put_data(c, iid, evil.read_bytes())
        assert r.status_code == 400 and "differencing" in r.json()["error"]["message"]
        assert_no_server_detail(api_server, r.text)
        assert c.get(f"/v2/images/{iid}").json()["status"] == "queued"
    # the same bytes stored before uploads were inspected: export refuses them
    legacy = plant_legacy(api_server, ATTACKER, evil)
    t = export(api_server, ATTACKER, legacy)
    assert t["status"] == "failure" and t["message"] == REFUSED_721, t
    assert container_objects(api_server, ATTACKER) == []


def test_export_of_a_chain_reads_only_the_package(api_server, victim_object, tmp_path):
    """An OVA chain whose leaf's locators name the victim's file, but whose
    package parent has the victim's UUID... cannot exist: the package's own
    parent must carry the UUID.  A chain whose base is itself differencing
    (its parent outside the package) is [721]; nothing read from outside."""
    mid = snapshot(tmp_path, victim_object, "mid.vhd")
    leaf = snapshot(tmp_path, mid, "leaf.vhd")
    pkg = tmp_path / "chain.ova"
    # pack by hand: `ova pack` itself refuses a chain whose base has a parent
    _pack_raw(pkg, [("0.vhd", leaf.read_bytes()), ("1.vhd", mid.read_bytes())], capacity=8 * MiB)
    legacy = plant_legacy(api_server, ATTACKER, pkg, container_format="ova")
    t = export(api_server, ATTACKER, legacy)
    assert t["status"] == "failure" and t["message"].startswith("[721] "), t
    assert_no_server_detail(api_server, t["message"])
    assert container_objects(api_server, ATTACKER) == []


# ----------------------------------------------------------------- upload inspection
def _pack_raw(out: Path, disks, capacity: int, names=None, gz: bool = True, extra=()) -> None:
    """An OVA with the given disk members (gzip unless told), descriptor and manifest."""
    members = []
    descs = []
    for name, data in disks:
        body = gzip.compress(data, 1) if gz and isinstance(data, bytes) else data
        members.append((name, body))
        descs.append({"href": name, "size": len(body), "capacity": capacity,
                      "compression": "gzip" if gz else None})
    desc = ova.build_descriptor("pkg", [dict(d) for d in descs]) if names is None else names
    _write_tar(out, desc, members, extra)


def _write_tar(out: Path, desc: bytes, members, extra=()) -> None:
    mf = "".join(f"SHA256({n})= {hashlib.sha256(b).hexdigest()}\n" for n, b in [("pkg.ovf", desc), *members])
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, body in [("pkg.ovf", desc), ("pkg.mf", mf.encode()), *members, *extra]:
            ti = tarfile.TarInfo(name)
            ti.size = len(body)
            tar.addfile(ti, io.BytesIO(body))


def test_build_descriptor_accepts_what_pack_raw_gives(tmp_path):
    d = make_disk(tmp_path, "d.vhd")
    p = tmp_path / "ok.ova"
    _pack_raw(p, [("0.vhd", d.read_bytes())], capacity=8 * MiB)
    assert ova.verify(p).ok, ova.verify(p).problems


def _upload_refused(server, data: bytes, words: str, **formats) -> None:
    with server.http(ATTACKER) as c:
        iid = new_image(c, **formats)
        r = put_data(c, iid, data)
        assert r.status_code == 400, r.text
        msg = r.json()["error"]["message"]
        assert words in msg, msg
        assert_no_server_detail(server, msg)
        img = c.get(f"/v2/images/{iid}").json()
        assert img["status"] == "queued" and not img.get("size"), img
        assert c.get(f"/v2/images/{iid}/file").status_code in (204, 403, 404, 409)
    assert blob_files(server.data, iid) == []


def test_upload_of_a_differencing_vhd_is_refused(api_server, tmp_path):
    child = snapshot(tmp_path, make_disk(tmp_path, "base.vhd"), "child.vhd")
    _upload_refused(api_server, child.read_bytes(), "differencing")


def test_upload_of_a_truncated_vhd_is_refused(api_server, tmp_path):
    d = make_disk(tmp_path, "d.vhd", data=os.urandom(3 * MiB)).read_bytes()
    _upload_refused(api_server, d[:len(d) - 700], "failed validation")


def test_upload_of_data_that_is_not_a_vhd_is_refused(api_server):
    _upload_refused(api_server, b"#!/bin/sh\necho this is no disk\n" * 100, "not a VHD")


def test_upload_of_a_vhd_over_the_virtual_size_limit_is_refused(api_server, tmp_path):
    # a dynamic VHD is mostly metadata: 50 GiB of virtual disk in a ~100 KiB file
    big = make_disk(tmp_path, "big.vhd", size="50G")
    assert big.stat().st_size < MiB
    _upload_refused(api_server, big.read_bytes(), "virtual size")


def test_upload_of_an_ova_with_dotdot_members_is_refused(api_server, tmp_path):
    d = make_disk(tmp_path, "d.vhd")
    p = tmp_path / "evil.ova"
    _pack_raw(p, [("0.vhd", d.read_bytes())], capacity=8 * MiB, extra=[("../../escape.txt", b"gotcha")])
    _upload_refused(api_server, p.read_bytes(), "..", container_format="ova")
    # an OVA of another disk format is stored as given, but only as a safe package
    _upload_refused(api_server, p.read_bytes(), "..", disk_format="vmdk", container_format="ova")
    assert not list(api_server.workdir.rglob("escape.txt"))


def test_uploads_into_swift_are_inspected_too(hosts, host_a, tmp_path):  # noqa: F811
    """A host of several (image data in Swift): the bytes go from the host to
    Swift; the same inspection refuses them, and Swift keeps nothing."""
    child = snapshot(tmp_path, make_disk(tmp_path, "base.vhd"), "child.vhd")
    good = make_disk(tmp_path, "good.vhd", data=os.urandom(MiB))
    with host_a.http(ATTACKER) as c:
        iid = new_image(c)
        r = put_data(c, iid, child.read_bytes())
        assert r.status_code == 400 and "differencing" in r.json()["error"]["message"], r.text
        assert_no_server_detail(host_a, r.text)
        assert c.get(f"/v2/images/{iid}").json()["status"] == "queued"
        assert hosts.blob_objects(iid) == []
        assert put_data(c, iid, good.read_bytes()).status_code == 204
        assert c.get(f"/v2/images/{iid}").json()["status"] == "active"


def test_good_uploads_are_stored(api_server, tmp_path):
    d = make_disk(tmp_path, "d.vhd", data=os.urandom(MiB))
    base = make_disk(tmp_path, "base.vhd", data=b"base" * 100)
    child = snapshot(tmp_path, base, "child.vhd")
    pkg = tmp_path / "snap.ova"
    r = vhdkit_cli("ova", "pack", str(child), str(base), "-o", str(pkg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with api_server.http(ATTACKER) as c:
        for fmt, body in ((("vhd", "bare"), d.read_bytes()), (("vhd", "ova"), pkg.read_bytes()),
                          (("vmdk", "ova"), pkg.read_bytes()), (("raw", "bare"), b"anything at all")):
            iid = new_image(c, *fmt)
            assert put_data(c, iid, body).status_code == 204
            assert c.get(f"/v2/images/{iid}").json()["status"] == "active"


# ------------------------------------------------------------------- task codes
def test_task_input_is_checked_when_the_task_is_created(api_server):
    with api_server.http(ATTACKER) as c:
        cases = [
            ({"type": "import", "input": {"import_from": "images/../../acct-victim/private/secret.vhd"}}, "'..'"),
            ({"type": "import", "input": {"import_from": "images/./x.vhd"}}, "'.'"),
            ({"type": "export", "input": {"image_uuid": ["x"], "receiving_swift_container": "exp"}},
             "image_uuid must be a string"),
            ({"type": "export", "input": {"receiving_swift_container": "exp"}}, "image_uuid is required"),
            ({"type": "import", "input": {"import_from": 7}}, "import_from must be a string"),
        ]
        for body, words in cases:
            r = c.post("/v2/tasks", json=body)
            assert r.status_code == 400, (body, r.text)
            assert words in r.json()["error"]["message"], (body, r.text)


@pytest.mark.parametrize("kind,code", [("not a vhd", 396), ("malformed", 397), ("unsafe member", 400)])
def test_export_of_bad_stored_data_fails_with_the_client_code(api_server, tmp_path, kind, code):
    d = make_disk(tmp_path, "d.vhd", data=os.urandom(MiB)).read_bytes()
    p = tmp_path / "stored"
    fmt = "bare"
    if kind == "not a vhd":
        p.write_bytes(b"just text " * 1000)
    elif kind == "malformed":
        bad = bytearray(d)
        struct.pack_into(">I", bad, 512 + 36, 0)  # the dynamic header's checksum, wrong
        p.write_bytes(bytes(bad))
    else:
        _pack_raw(p, [("0.vhd", d)], capacity=8 * MiB, extra=[("a/../../b.vhd", b"x")])
        fmt = "ova"
    legacy = plant_legacy(api_server, ATTACKER, p, container_format=fmt)
    t = export(api_server, ATTACKER, legacy)
    assert t["status"] == "failure" and t["message"].startswith(f"[{code}] "), t
    assert_no_server_detail(api_server, t["message"])
    assert container_objects(api_server, ATTACKER) == []


def test_export_of_a_stored_package_declaring_more_than_the_limit_fails_413(api_server, tmp_path):
    """The declared capacity is judged before any byte is decompressed."""
    d = make_disk(tmp_path, "d.vhd").read_bytes()
    p = tmp_path / "declares-too-much.ova"
    _pack_raw(p, [("0.vhd", d)], capacity=50 * GiB)
    legacy = plant_legacy(api_server, ATTACKER, p, container_format="ova")
    t = export(api_server, ATTACKER, legacy)
    assert t["status"] == "failure" and t["message"].startswith("[413] "), t
    assert_no_server_detail(api_server, t["message"])
    assert container_objects(api_server, ATTACKER) == []


# ------------------------------------------------------------ bounded work (bomb)
def _bomb(out: Path, tmp: Path) -> None:
    """A 20 GiB dynamic VHD's metadata, then about 22 GB of zeros: ~22 MB gzip."""
    head = make_disk(tmp, "head.vhd", size="20G").read_bytes()
    meta = head[:-512]                      # footer copy, header, BAT (no blocks)
    zeros_gz = gzip.compress(bytes(64 * MiB), 9)    # a gzip member of 64 MiB zeros, ~64 KiB
    member = gzip.compress(meta, 1) + zeros_gz * (21 * 16)   # members concatenate: ~21 GiB of zeros
    desc = ova.build_descriptor("pkg", [{"href": "0.vhd", "size": len(member), "capacity": 20 * GiB,
                                         "compression": "gzip"}])
    _write_tar(out, desc, [("0.vhd", member)])


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bomb")
    p = tmp / "bomb.ova"
    _bomb(p, tmp)
    assert 15 * MiB < p.stat().st_size < 30 * MiB
    return p


def test_a_decompression_bomb_upload_fails_within_seconds(api_server, bomb):
    with api_server.http(ATTACKER, timeout=120) as c:
        iid = new_image(c, container_format="ova")
        t0 = time.monotonic()
        r = put_data(c, iid, bomb.read_bytes())
        took = time.monotonic() - t0
        assert r.status_code == 400, r.text
        assert took < 10, took
        assert c.get(f"/v2/images/{iid}").json()["status"] == "queued"


def test_a_stored_decompression_bomb_fails_its_export_within_seconds(api_server, bomb):
    legacy = plant_legacy(api_server, ATTACKER, bomb, container_format="ova")
    t0 = time.monotonic()
    t = export(api_server, ATTACKER, legacy)
    took = time.monotonic() - t0
    assert t["status"] == "failure" and t["message"][:5] in ("[413]", "[397]"), t
    assert took < 10, took
    assert container_objects(api_server, ATTACKER) == []


# --------------------------------------------------------------- identity and ids
@pytest.mark.parametrize("account", [".", "..", "", ".hidden", "../acct-victim"])
def test_account_ids_that_read_as_paths_are_refused(api_server, account):
    with api_server.http(headers={"X-Tenant-Id": account, "X-Roles": "cloudImages:admin"}) as c:
        assert c.get("/v2/images").status_code == 401
    with api_server.http(f"{account}:cloudImages:admin") as c:
        assert c.get("/v2/images").status_code == 401


def test_a_deleted_image_id_is_never_reused(api_server):
    with api_server.http(ATTACKER) as c, api_server.http(VICTIM) as v:
        iid = new_image(c)
        assert c.delete(f"/v2/images/{iid}").status_code == 204
        for client in (c, v):
            r = client.post("/v2/images", json={"id": iid, "name": "again", "disk_format": "vhd",
                                                "container_format": "bare"})
            assert r.status_code == 409, r.text


@pytest.mark.parametrize("header,value", [("X-Roles", "cloudImages:admin"), ("X-Tenant-Id", "acct-evil"),
                                          ("X-Project-Id", "acct-evil"), ("X-Auth-Token", ATTACKER)])
def test_a_repeated_identity_header_is_refused(api_server, header, value):
    head = (f"GET /v2/images HTTP/1.1\r\nHost: x\r\nX-Tenant-Id: acct-evil\r\nX-Roles: cloudImages:admin\r\n"
            f"{header}: {value}\r\n{header}: {value.replace('evil', 'victim')}\r\nConnection: close\r\n\r\n")
    status, _, body = raw_request(api_server, head)
    assert status == 400, body
    assert header.lower() in json.loads(body)["error"]["message"].lower()


# ------------------------------------------------------------- self-contained unpack
def test_an_unpacked_snapshot_package_reads_without_its_originals(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    base = make_disk(work, "base.vhd", data=b"BASE" * 4096)
    child = snapshot(work, base, "child.vhd")
    import vhdkit
    with vhdkit.open(child, "r+") as w:
        w.seek(MiB)
        w.write(b"CHILD" * 1000)
    with vhdkit.open(child) as s:
        want = hashlib.sha256(s.read()).hexdigest()
    pkg = tmp_path / "snap.ova"
    assert vhdkit_cli("ova", "pack", str(child), str(base), "-o", str(pkg), cwd=tmp_path).returncode == 0
    # the originals stay where they are but must not be read: the unpacked 1.vhd must be
    base.write_bytes(b"\0" * 10)   # not a VHD any more
    r = vhdkit_cli("ova", "unpack", str(pkg), "-d", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = vhdkit_cli("chain", "out/0.vhd", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    layers = json.loads(r.stdout)
    layers = layers["layers"] if isinstance(layers, dict) else layers
    assert [Path(L["path"]).name for L in layers] == ["0.vhd", "1.vhd"]
    locs = {loc["code"]: loc["path"] for loc in layers[0]["locators"]}
    assert locs["W2ru"] == ".\\1.vhd"
    assert locs["W2ku"] == str((tmp_path / "out" / "1.vhd").resolve())
    with vhdkit.open(tmp_path / "out" / "0.vhd") as s:
        assert hashlib.sha256(s.read()).hexdigest() == want
    # peer: libvhdi reads the parent's name and identifier from the relinked header
    from conftest import require_tool
    peer = subprocess.run([require_tool("vhdiinfo"), str(tmp_path / "out" / "0.vhd")], capture_output=True,
                          text=True, check=True).stdout
    assert "Parent filename\t\t: 1.vhd" in peer
    assert f"Parent identifier\t: {layers[1]['uuid']}" in peer
    # moved as a directory, it still reads (the relative locator)
    os.rename(tmp_path / "out", tmp_path / "moved")
    assert vhdkit_cli("chain", "moved/0.vhd", cwd=tmp_path).returncode == 0
    # the manifest verified the bytes as packed; the archive still verifies
    assert vhdkit_cli("ova", "verify", str(pkg), cwd=tmp_path).returncode == 0
