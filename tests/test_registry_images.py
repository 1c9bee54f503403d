"""Images: fields, JSON-patch updates, tags, quotas, statuses, data (hashes,
ranges), schema versioning, tasks and their leases."""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import sqlite3
import uuid

import pytest

from vhdkit.errors import (ConflictError, ForbiddenError, InvalidInputError, NotFoundError, QuotaError,
                           UnsupportedError)
from vhdkit.registry import Registry

from helpers_registry import MEMBER, OWNER, STRANGER, admin, make_image, reg, service, who  # noqa: F401

# every test on both engines (tests/helpers_pg.py)
pytestmark = pytest.mark.usefixtures("registry_url")


def blob_files(r: Registry):
    out = []
    for root, _, files in os.walk(r.blobs.root):
        out += [os.path.join(root, f) for f in files]
    return sorted(out)


def test_create_show_shape(reg):
    img = reg.create_image(admin(), {"name": "web", "disk_format": "vhd", "container_format": "ova",
                                     "min_disk": 10, "min_ram": 512, "tags": ["a", "b", "a"],
                                     "protected": True, "os_distro": "ubuntu"})
    d = reg.show_image(who(OWNER, "observer"), img.id).to_dict()
    assert uuid.UUID(d["id"])
    assert d["status"] == "queued" and d["visibility"] == "shared" and d["protected"] is True
    assert d["tags"] == ["a", "b"] and d["os_distro"] == "ubuntu" and d["owner"] == OWNER
    assert (d["min_disk"], d["min_ram"], d["size"], d["checksum"]) == (10, 512, None, None)
    assert d["self"] == f"/v2/images/{img.id}" and d["file"] == d["self"] + "/file"
    assert d["schema"] == "/v2/schemas/image"
    dt.datetime.strptime(d["created_at"], "%Y-%m-%dT%H:%M:%SZ")


def test_create_with_id_and_duplicate(reg):
    i = str(uuid.uuid4())
    assert reg.create_image(admin(), id=i).id == i
    with pytest.raises(ConflictError):
        reg.create_image(admin(), id=i)
    with pytest.raises(InvalidInputError):
        reg.create_image(admin(), id="not-a-uuid")


@pytest.mark.parametrize("body", [
    {"visibility": "secret"}, {"disk_format": "exe"}, {"container_format": "zip"}, {"min_disk": -1},
    {"min_ram": "5"}, {"protected": "yes"}, {"name": "n" * 256}, {"tags": "a"}, {"tags": ["t" * 256]},
    {"tags": [""]}, {"os_distro": 5},
])
def test_create_rejects_bad_values(reg, body):
    with pytest.raises(InvalidInputError):
        reg.create_image(admin(), body)


def test_customers_cannot_publicize_or_set_owner(reg):
    with pytest.raises(ForbiddenError):
        reg.create_image(admin(), visibility="public")
    with pytest.raises(ForbiddenError):
        reg.create_image(admin(), owner="acct-other")
    img = reg.create_image(service("acct-other"), visibility="public", owner="acct-x")
    assert (img.visibility, img.owner) == ("public", "acct-x")


def test_only_the_service_moves_an_image_to_another_owner(reg):
    """Tempest's admin test_update_image_owner_param: the operator replaces
    ``owner``; customers cannot, and nobody removes it."""
    img = reg.create_image(service("acct-1"), owner="acct-1", name="moved")
    op = [{"op": "replace", "path": "/owner", "value": "acct-2"}]
    with pytest.raises((ForbiddenError, NotFoundError)):
        reg.update_image(admin(), img.id, op)
    assert reg.update_image(service("acct-1"), img.id, op).owner == "acct-2"
    with pytest.raises(ForbiddenError):
        reg.update_image(service("acct-2"), img.id, [{"op": "remove", "path": "/owner"}])
    with pytest.raises(InvalidInputError):
        reg.update_image(service("acct-2"), img.id, [{"op": "replace", "path": "/owner", "value": "bad id!"}])
    with pytest.raises(InvalidInputError):
        reg.update_image(service("acct-2"), img.id, [{"op": "replace", "path": "/owner", "value": 7}])


def test_json_patch_semantics(reg):
    img = make_image(reg, name="a")
    p = lambda *ops: reg.update_image(admin(), img.id, [dict(zip(("op", "path", "value"), o)) for o in ops])
    out = p(("add", "/k1", "v1"), ("add", "/k2", "v2"), ("replace", "/name", "b"), ("add", "/min_ram", 64))
    assert (out.name, out.min_ram, out.properties) == ("b", 64, {"k1": "v1", "k2": "v2"})
    out = p(("add", "/k1", "w"), ("remove", "/k2"), ("replace", "/tags", ["x", "y"]))
    assert out.properties == {"k1": "w"} and out.tags == ["x", "y"]
    out = p(("add", "/a~1b~0c", "esc"))
    assert out.properties["a/b~c"] == "esc"
    before = reg.show_image(admin(), img.id).to_dict()
    with pytest.raises(ConflictError):       # atomic: the first op is not applied either
        p(("add", "/k3", "v"), ("remove", "/missing"))
    assert reg.show_image(admin(), img.id).to_dict() == before
    for bad in ([{"op": "move", "path": "/k1", "from": "/x"}], [{"op": "add", "path": "/a/b", "value": "v"}],
                [{"op": "add", "path": "k1", "value": "v"}], [{"op": "add", "path": "/k1"}],
                [{"op": "add", "path": "/k1", "value": 1}], {"op": "add"}, ["x"]):
        with pytest.raises(InvalidInputError):
            reg.update_image(admin(), img.id, bad)


def test_disk_format_fixed_once_data_is_there(reg):
    img = make_image(reg, data=b"abc")
    with pytest.raises(ForbiddenError):
        reg.update_image(admin(), img.id, [{"op": "replace", "path": "/disk_format", "value": "qcow2"}])


def test_tags(reg):
    img = make_image(reg)
    reg.add_tag(admin(), img.id, "é" * 255)
    reg.add_tag(admin(), img.id, "é" * 255)          # no-op
    assert reg.show_image(admin(), img.id).tags == ["é" * 255]
    with pytest.raises(InvalidInputError):
        reg.add_tag(admin(), img.id, "t" * 256)
    with pytest.raises(NotFoundError):
        reg.delete_tag(admin(), img.id, "absent")
    reg.delete_tag(admin(), img.id, "é" * 255)
    assert reg.show_image(admin(), img.id).tags == []


def test_quotas(tmp_path):
    r = Registry(str(tmp_path), quotas={"tags": 2, "properties": 2, "members": 2})
    img = make_image(r)
    r.add_tag(admin(), img.id, "a")
    r.add_tag(admin(), img.id, "b")
    with pytest.raises(QuotaError) as ei:
        r.add_tag(admin(), img.id, "c")
    assert ei.value.http_status == 413
    r.add_tag(admin(), img.id, "a")                   # existing: still a no-op
    with pytest.raises(QuotaError):
        r.update_image(admin(), img.id, [{"op": "add", "path": f"/p{i}", "value": "v"} for i in range(3)])
    with pytest.raises(QuotaError):
        r.create_image(admin(), tags=["1", "2", "3"])
    r.add_member(admin(), img.id, "m1")
    r.add_member(admin(), img.id, "m2")
    with pytest.raises(QuotaError):
        r.add_member(admin(), img.id, "m3")
    r.close()


def test_upload_hashes_and_download_ranges(reg):
    data = os.urandom(3 << 20) + b"tail"
    img = make_image(reg, data=data)
    assert img.status == "active" and img.size == len(data)
    assert img.checksum == hashlib.md5(data).hexdigest()
    assert (img.os_hash_algo, img.os_hash_value) == ("sha512", hashlib.sha512(data).hexdigest())
    out = io.BytesIO()
    assert reg.download(who(OWNER, "observer"), img.id, out) == len(data)
    assert out.getvalue() == data
    for off, ln in ((0, 1), (5, 100), (len(data) - 4, None), (len(data) - 4, 1000), (1 << 20, 1 << 20)):
        out = io.BytesIO()
        reg.download(admin(), img.id, out, offset=off, length=ln)
        assert out.getvalue() == data[off: None if ln is None else off + ln]
        _, it = reg.iter_data(admin(), img.id, offset=off, length=ln)
        assert b"".join(it) == data[off: None if ln is None else off + ln]
    with pytest.raises(InvalidInputError) as ei:
        reg.download(admin(), img.id, io.BytesIO(), offset=len(data))
    assert ei.value.code == "range_not_satisfiable"
    with open(reg.open_data(admin(), img.id).path, "rb") as f:
        assert f.read() == data


def test_download_into_a_real_file(reg, tmp_path):
    data = os.urandom(1 << 20)
    img = make_image(reg, data=data)
    with open(tmp_path / "out", "wb") as f:
        f.write(b"head")
        reg.download(admin(), img.id, f, offset=10)
    assert (tmp_path / "out").read_bytes() == b"head" + data[10:]


def test_upload_rules(reg):
    img = reg.create_image(admin(), name="noformats")
    with pytest.raises(InvalidInputError):
        reg.upload(admin(), img.id, io.BytesIO(b"x"))
    img = make_image(reg, data=b"once")
    with pytest.raises(ConflictError):
        reg.upload(admin(), img.id, io.BytesIO(b"twice"))
    q = make_image(reg)
    with pytest.raises(InvalidInputError):
        reg.upload(admin(), q.id, io.BytesIO(b"short"), size=10)
    assert reg.show_image(admin(), q.id).status == "queued"       # retry allowed
    assert blob_files(reg) == [reg.open_data(admin(), img.id).path]
    with pytest.raises(ConflictError) as ei:
        reg.download(admin(), q.id, io.BytesIO())
    assert ei.value.code == "no_data"
    ok = reg.upload(admin(), q.id, io.BytesIO(b"retry"), virtual_size=1 << 30)
    assert (ok.status, ok.size, ok.virtual_size) == ("active", 5, 1 << 30)


class Boom(io.RawIOBase):
    def __init__(self):
        self.n = 0

    def readable(self):
        return True

    def read(self, n=-1):
        self.n += 1
        if self.n > 3:
            raise OSError("network went away")
        return b"z" * 1000


def test_failed_upload_returns_to_queued_without_debris(reg):
    img = make_image(reg)
    with pytest.raises(OSError):
        reg.upload(admin(), img.id, Boom())
    assert reg.show_image(admin(), img.id).status == "queued"
    assert blob_files(reg) == []


def test_upload_size_cap(tmp_path):
    r = Registry(str(tmp_path), size_cap=10)
    img = make_image(r)
    with pytest.raises(QuotaError):
        r.upload(admin(), img.id, io.BytesIO(b"x" * 11))
    assert blob_files(r) == [] and r.show_image(admin(), img.id).status == "queued"


def test_deactivate_reactivate_delete(reg):
    img = make_image(reg, data=b"abc", members=[MEMBER])
    q = make_image(reg)
    with pytest.raises(InvalidInputError):
        reg.deactivate_image(admin(), q.id)
    assert reg.deactivate_image(admin(), img.id).status == "deactivated"
    with pytest.raises(ForbiddenError):
        reg.download(admin(MEMBER), img.id, io.BytesIO())
    assert reg.reactivate_image(admin(), img.id).status == "active"
    reg.download(admin(MEMBER), img.id, io.BytesIO())
    reg.update_image(admin(), img.id, [{"op": "replace", "path": "/protected", "value": True}])
    with pytest.raises(ForbiddenError):
        reg.delete_image(admin(), img.id)
    reg.update_image(admin(), img.id, [{"op": "replace", "path": "/protected", "value": False}])
    path = reg.open_data(admin(), img.id).path
    reg.delete_image(admin(), img.id)
    assert not os.path.exists(path) and blob_files(reg) == []
    with pytest.raises(NotFoundError):
        reg.show_image(admin(), img.id)
    with pytest.raises(NotFoundError):
        reg.list_members(admin(MEMBER), img.id)


def test_set_status_is_service_only_and_follows_transitions(reg):
    img = make_image(reg)
    with pytest.raises(ForbiddenError):
        reg.set_status(admin(), img.id, "importing")
    assert reg.set_status(service(), img.id, "importing").status == "importing"
    with pytest.raises(ConflictError):
        reg.set_status(service(), img.id, "deactivated")
    out = reg.upload(service(), img.id, io.BytesIO(b"imported"))
    assert out.status == "active"


def test_schema_version_and_newer_database_refused(tmp_path, registry_url):
    r = Registry(str(tmp_path))
    make_image(r)
    r.close()
    if registry_url is None:
        conn = sqlite3.connect(tmp_path / "registry.db")
        assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute("PRAGMA user_version = 999")
        conn.close()
    else:
        import psycopg

        with psycopg.connect(registry_url, autocommit=True) as conn:
            assert int(conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]) >= 1
            conn.execute("UPDATE alembic_version SET version_num = '0999'")
    with pytest.raises(UnsupportedError, match="schema version 999; this vhdkit knows up to"):
        Registry(str(tmp_path))


# ---- tasks ----

class Clock:
    def __init__(self):
        self.t = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)

    def __call__(self):
        return self.t


def test_task_lifecycle_and_visibility(tmp_path):
    clock = Clock()
    r = Registry(str(tmp_path), clock=clock)
    t = r.create_task(admin(), "import", {"import_from": "c/o", "import_from_format": "vhd"})
    d = t.to_dict()
    assert (d["status"], d["owner"], d["input"]["import_from"], d["result"]) == ("pending", OWNER, "c/o", None)
    assert r.show_task(who(OWNER, "observer"), t.id).id == t.id
    with pytest.raises(NotFoundError):
        r.show_task(admin(STRANGER), t.id)
    assert [x.id for x in r.list_tasks(admin(STRANGER)).tasks] == []
    with pytest.raises(InvalidInputError):
        r.create_task(admin(), "frobnicate", {})
    c = r.claim_task("w1", lease_seconds=30)
    assert (c.id, c.status, c.attempts, c.worker_id) == (t.id, "processing", 1, "w1")
    assert r.claim_task("w2") is None
    h = r.heartbeat(t.id, "w1", stage="compress", bytes_done=10, bytes_total=100)
    assert (h.stage, h.bytes_done, h.bytes_total) == ("compress", 10, 100)
    with pytest.raises(ConflictError):
        r.heartbeat(t.id, "w2")
    clock.t += dt.timedelta(hours=1)
    done = r.finish(t.id, "w1", status="success", result={"image_id": "x"})
    assert done.status == "success" and done.result == {"image_id": "x"}
    assert done.to_dict()["expires_at"] == "2030-01-03T01:00:00Z"
    with pytest.raises(ConflictError):
        r.finish(t.id, "w1", status="failure")
    clock.t += dt.timedelta(hours=47)
    assert r.purge_expired_tasks() == 0
    clock.t += dt.timedelta(hours=2)
    assert r.purge_expired_tasks() == 1
    with pytest.raises(NotFoundError):
        r.show_task(admin(), t.id)
    r.close()


def test_expired_lease_is_retried_once_then_failed(tmp_path):
    clock = Clock()
    r = Registry(str(tmp_path), clock=clock)
    t = r.create_task(admin(), "export", {"image_uuid": "u"})
    assert r.claim_task("w1", lease_seconds=10).id == t.id
    clock.t += dt.timedelta(seconds=11)
    again = r.claim_task("w2", lease_seconds=10)
    assert (again.id, again.attempts, again.worker_id) == (t.id, 2, "w2")
    with pytest.raises(ConflictError):
        r.heartbeat(t.id, "w1")                       # w1 lost its lease
    clock.t += dt.timedelta(seconds=11)
    assert r.claim_task("w3") is None
    failed = r.show_task(admin(), t.id)
    assert failed.status == "failure" and "stopped responding" in failed.message
    r.close()


def test_task_list_pagination_and_filters(tmp_path):
    clock = Clock()
    r = Registry(str(tmp_path), clock=clock)
    ids = []
    for k in range(5):
        clock.t += dt.timedelta(seconds=1)
        ids.append(r.create_task(admin(), "import" if k % 2 else "export", {"k": k}).id)
    page = r.list_tasks(admin(), {"limit": "2"})
    assert [t.id for t in page.tasks] == ids[::-1][:2]
    page2 = r.list_tasks(admin(), {"limit": "2", "marker": page.next_marker})
    assert [t.id for t in page2.tasks] == ids[::-1][2:4]
    assert [t.id for t in r.list_tasks(admin(), {"type": "import", "sort_dir": "asc"}).tasks] == [ids[1], ids[3]]
    for bad in ({"sort_key": "input"}, {"status": "bogus"}, {"frob": "1"}, {"marker": "nope"}):
        with pytest.raises(InvalidInputError):
            r.list_tasks(admin(), bad)
    r.close()


def test_open_upload_writer_for_producers(reg):
    import tarfile
    img = make_image(reg, container_format="ova", disk_format="vhd")
    payload = os.urandom(300_000)
    with reg.open_upload(admin(), img.id) as w:
        with tarfile.open(fileobj=w, mode="w|") as tar:      # a streaming producer, small writes
            ti = tarfile.TarInfo("disk.vhd")
            ti.size = len(payload)
            tar.addfile(ti, io.BytesIO(payload))
        w.write(memoryview(b"trailer"))
        out = w.commit(virtual_size=12345)
    data = io.BytesIO()
    reg.download(admin(), img.id, data)
    raw = data.getvalue()
    assert raw.endswith(b"trailer") and out.size == len(raw) == w.bytes_written
    assert (out.checksum, out.os_hash_value) == (hashlib.md5(raw).hexdigest(), hashlib.sha512(raw).hexdigest())
    assert out.virtual_size == 12345
    with tarfile.open(fileobj=io.BytesIO(raw[:-7])) as tar:
        assert tar.extractfile("disk.vhd").read() == payload


def test_open_upload_aborts_unless_committed(reg):
    img = make_image(reg)
    with pytest.raises(RuntimeError):
        with reg.open_upload(admin(), img.id) as w:
            w.write(b"x" * 10)
            assert reg.show_image(admin(), img.id).status == "saving"
            raise RuntimeError("producer failed")
    assert reg.show_image(admin(), img.id).status == "queued"
    assert blob_files(reg) == []
    with reg.open_upload(admin(), img.id) as w:
        w.write(b"y")
    assert reg.show_image(admin(), img.id).status == "queued" and blob_files(reg) == []


def test_delete_during_an_upload_loses_the_upload_and_leaves_nothing(reg):
    img = make_image(reg)
    w = reg.open_upload(admin(), img.id)
    w.write(b"z" * 4096)
    reg.delete_image(admin(), img.id)          # the upload's files go to the trash
    with pytest.raises(ConflictError) as e:
        w.commit()
    assert e.value.code == "upload_lost"
    with pytest.raises(NotFoundError):
        reg.show_image(admin(), img.id)
    reg.cleanup()
    assert blob_files(reg) == []


def test_vhd_virtual_size_comes_from_the_reader(reg, sample):
    import vhdkit.vhd as vhd
    if not hasattr(vhd, "info"):
        pytest.skip("the core reader (vhdkit.vhd.info) is not merged into this tree yet")
    path = sample("windows-fixed-10M")
    img = make_image(reg, disk_format="vhd", container_format="bare")
    out = reg.upload_file(admin(), img.id, str(path))
    assert out.virtual_size == vhd.info(path).virtual_size and out.virtual_size > 0
    junk = make_image(reg, disk_format="vhd", container_format="bare")
    assert reg.upload(admin(), junk.id, io.BytesIO(b"not a vhd")).virtual_size is None


def test_cleanup_removes_debris_but_not_live_uploads(reg):
    import fcntl
    keep = make_image(reg, data=b"keep")
    tmp = reg.blobs.tmp
    dead = os.path.join(tmp, "deadbeef.part")
    open(dead, "wb").close()
    old_new = os.path.join(tmp, "cafe.new")
    open(old_new, "wb").close()
    os.utime(old_new, (0, 0))
    young_new = os.path.join(tmp, "f00d.new")
    open(young_new, "wb").close()
    live = os.path.join(tmp, "live.part")
    fd = os.open(live, os.O_WRONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    stray_dir = os.path.join(reg.blobs.root, "ab")
    os.makedirs(stray_dir, exist_ok=True)
    stray = os.path.join(stray_dir, f"{uuid.uuid4()}.0123")
    open(stray, "wb").close()
    try:
        report = reg.cleanup(deep=True)
        assert not os.path.exists(dead) and not os.path.exists(old_new) and not os.path.exists(stray)
        assert os.path.exists(live) and os.path.exists(young_new)
        assert report["removed_parts"] == 2 and report["removed_blobs"] == 1
        out = io.BytesIO()
        reg.download(admin(), keep.id, out)
        assert out.getvalue() == b"keep"
    finally:
        os.close(fd)
    Registry(reg.home).close()          # the next open removes the no longer locked one
    assert not os.path.exists(live)
