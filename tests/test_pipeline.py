"""Import and export tasks end to end, on the embedded file-based default.

Peers: qemu-img (content of what we export), vhdiinfo (the export is a
standalone dynamic VHD), the spec-literal reference reader in fixtures/vhdref.py
(content of snapshot chains)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, require_tool
from hooked import vhdkit_cmd
from vhdkit.pack import ova, segments
from vhdkit.errors import ForbiddenError
from vhdkit.tasks.pipeline import PipelineConfig, Worker
from vhdkit.registry import Caller, Registry

import vhdref

# Reaches the native core: runs again in scripts/test's sanitizer pass.
pytestmark = pytest.mark.native

MiB = 1 << 20
A = Caller.parse("acct-a", "cloudImages:admin")
B = Caller.parse("acct-b", "cloudImages:admin")


# ---------------------------------------------------------------- helpers
@pytest.fixture
def env(tmp_path):
    home = tmp_path / "home"
    reg = Registry(home)
    cfg = PipelineConfig(home=home)
    for acct in ("acct-a", "acct-b"):
        st = cfg.store(acct)
        st.create_container("images")
        st.create_container("exports")
    return reg, cfg


def put(cfg, account, name, path):
    with open(path, "rb") as f:
        cfg.store(account).put("images", name, f)


def run_import(reg, cfg, name, caller=A, **props):
    t = reg.create_task(caller, "import", {"import_from": f"images/{name}", "import_from_format": "vhd",
                                           "image_properties": {"name": props.get("image_name", name)}})
    assert t.status == "pending"
    return Worker(reg, cfg, "w1").run_once()


def run_export(reg, cfg, image_id, caller=A, container="exports"):
    reg.create_task(caller, "export", {"image_uuid": image_id, "receiving_swift_container": container})
    return Worker(reg, cfg, "w1").run_once()


def qemu_raw_sha256(path, tmp_path):
    require_tool("qemu-img")
    out = tmp_path / f"{Path(path).name}.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", str(path), str(out)], check=True)
    h = hashlib.sha256(out.read_bytes()).hexdigest()
    out.unlink()
    return h


def assert_no_debris(reg, cfg, *, images_expected=0):
    """No image other than the expected active ones, no blob file or upload
    part without an image, no task directory."""
    svc = Caller.service("acct-a")
    rows = reg._conn().execute("SELECT id, status, blob FROM images").fetchall()
    assert all(r["status"] == "active" for r in rows), [tuple(r) for r in rows]
    assert len(rows) == images_expected
    blob_files = [p for p in Path(reg.blobs.root).rglob("*") if p.is_file()]
    assert sorted(str(p.relative_to(reg.blobs.root)) for p in blob_files) == sorted(r["blob"] for r in rows)
    work = cfg.work_root
    assert not work.exists() or not any(work.iterdir()), list(work.iterdir())
    del svc


def make_dynamic(path, size=16 * MiB, seed=1, every=3):
    """A small dynamic VHD (written by the independent fixture writer)."""
    data = bytearray(size)
    for blk in range(0, size // (2 * MiB)):
        if blk % every == 0:
            data[blk * 2 * MiB: blk * 2 * MiB + 64 * 1024] = hashlib.shake_256(bytes([seed, blk])).digest(64 * 1024)
    vhdref.write_vhd(path, size, vhdref.sectors_of(bytes(data)), kind="dynamic")
    return bytes(data)


# ------------------------------------------------------------------- story
def test_import_share_export_story_on_a_real_windows_sample(env, sample, tmp_path):
    reg, cfg = env
    src = sample("windows-dynamic-512M")
    put(cfg, "acct-a", "win.vhd", src)
    t = run_import(reg, cfg, "win.vhd")
    assert t.status == "success", t.message
    image_id = t.result["image_id"]
    img = reg.show_image(A, image_id)
    assert (img.status, img.disk_format, img.container_format) == ("active", "vhd", "ova")
    assert img.virtual_size == 536870912
    # the stored data is an OVA holding the gzip-compressed disk
    data = reg.open_data(A, image_id)
    rep = ova.verify(data.path)
    assert rep.ok and [d.compression for d in rep.disks] == ["gzip"]
    assert hashlib.md5(Path(data.path).read_bytes()).hexdigest() == img.checksum

    reg.add_tag(A, image_id, "golden")
    reg.add_member(A, image_id, "acct-b")
    assert image_id not in [i.id for i in reg.list_images(B).images]
    reg.update_member(B, image_id, "acct-b", "accepted")
    assert image_id in [i.id for i in reg.list_images(B).images]

    t = run_export(reg, cfg, image_id)
    assert t.status == "success", t.message
    assert t.result["export_location"] == f"exports/{image_id}.vhd"
    names = [o.name for o in cfg.store("acct-a").list("exports")]
    assert f"{image_id}.vhd" in names and f"{image_id}.vhd-00001" in names

    joined = tmp_path / "joined.vhd"
    segments.join(cfg.store("acct-a"), "exports", f"{image_id}.vhd", joined)
    # independent peers: qemu-img reads the same virtual disk; vhdiinfo sees a standalone dynamic VHD
    expected = "c461afded0b54cc1cfb5441e08f4d7f9d699d2eff7d9526d1cf6ad227da26683"  # samples/README.md
    assert qemu_raw_sha256(joined, tmp_path) == expected
    out = subprocess.run([require_tool("vhdiinfo"), str(joined)], capture_output=True, text=True, check=True).stdout
    assert "Dynamic" in out and "Parent" not in out
    # the file differs: a new UUID and timestamp
    from vhdkit import vhd
    assert vhd.info(joined).uuid != vhd.info(src).uuid
    assert vhd.check(joined).ok
    assert_no_debris(reg, cfg, images_expected=1)


def test_export_of_a_snapshot_chain_of_depth_3_coalesces_it(env, tmp_path):
    """A server snapshot stored as the hypervisor does: an OVA holding 0.vhd
    (leaf) … 2.vhd (base); export flattens it into one dynamic VHD."""
    reg, cfg = env
    d = tmp_path / "chain"
    d.mkdir()
    size = 12 * MiB
    base = bytearray(hashlib.shake_256(b"base").digest(size))
    base[4 * MiB: 8 * MiB] = bytes(4 * MiB)
    vhdref.write_vhd(d / "base.vhd", size, vhdref.sectors_of(bytes(base)), kind="dynamic", block_size=1 * MiB)
    mid = {s: hashlib.sha256(b"m%d" % s).digest() * 16 for s in range(2048, 4096, 8)}  # 4 KiB runs
    vhdref.write_vhd(d / "mid.vhd", size, mid, kind="differencing", parent=str(d / "base.vhd"))
    leaf = {s: hashlib.sha256(b"l%d" % s).digest() * 16 for s in (1, 3, 10, 9000, 20000)}  # single sectors
    vhdref.write_vhd(d / "leaf.vhd", size, leaf, kind="differencing", parent=str(d / "mid.vhd"),
                     block_size=512 * 1024)
    ref = vhdref.RefVhd(d / "leaf.vhd")
    want = hashlib.sha256(ref.read(0, size)).hexdigest()

    pkg = tmp_path / "snap.ova"
    ova.pack([d / "leaf.vhd", d / "mid.vhd", d / "base.vhd"], pkg, name="snap")
    svc = Caller.service("acct-a")
    img = reg.create_image(svc, name="snapshot", disk_format="vhd", container_format="ova")
    reg.upload_file(svc, img.id, str(pkg), virtual_size=size)
    for f in d.iterdir():  # the export must not find the originals by their locators
        f.unlink()

    t = run_export(reg, cfg, img.id)
    assert t.status == "success", t.message
    joined = tmp_path / "joined.vhd"
    segments.join(cfg.store("acct-a"), "exports", f"{img.id}.vhd", joined)
    assert qemu_raw_sha256(joined, tmp_path) == want
    from vhdkit import vhd
    vi = vhd.info(joined)
    assert vi.disk_type == "dynamic" and vi.parent_uuid is None and vhd.check(joined).ok
    assert_no_debris(reg, cfg, images_expected=1)


# ---------------------------------------------------------------- refusals
def _failed(t, code):
    assert t.status == "failure", (t.status, t.result)
    assert t.message.startswith(f"[{code}] "), t.message
    assert t.expires_at is not None


def test_import_refuses_a_file_that_is_not_a_vhd(env, tmp_path):
    reg, cfg = env
    p = tmp_path / "x.vhd"
    p.write_bytes(os.urandom(3 * 512))
    put(cfg, "acct-a", "x.vhd", p)
    _failed(run_import(reg, cfg, "x.vhd"), 396)
    assert_no_debris(reg, cfg)


def test_import_refuses_a_differencing_disk(env, tmp_path):
    reg, cfg = env
    vhdref.write_vhd(tmp_path / "p.vhd", 4 * MiB, {}, kind="dynamic")
    vhdref.write_vhd(tmp_path / "c.vhd", 4 * MiB, {0: b"x" * 512}, kind="differencing", parent=str(tmp_path / "p.vhd"))
    put(cfg, "acct-a", "c.vhd", tmp_path / "c.vhd")
    t = run_import(reg, cfg, "c.vhd")
    _failed(t, 721)
    assert "parent" in t.message
    assert_no_debris(reg, cfg)


def test_import_refuses_virtual_and_file_sizes_over_the_limits(env, tmp_path):
    reg, cfg = env
    make_dynamic(tmp_path / "d.vhd")
    put(cfg, "acct-a", "d.vhd", tmp_path / "d.vhd")
    cfg.max_virtual_size = 8 * MiB
    _failed(run_import(reg, cfg, "d.vhd"), 413)
    cfg.max_virtual_size, cfg.max_file_size = 40 * 10 ** 9, 1 * MiB
    _failed(run_import(reg, cfg, "d.vhd"), 609)
    assert_no_debris(reg, cfg)


def test_import_refuses_a_vhd_that_fails_check(env, tmp_path):
    reg, cfg = env
    p = tmp_path / "bad.vhd"
    make_dynamic(p)
    raw = bytearray(p.read_bytes())
    raw[512 + 40] ^= 0xFF  # dynamic header: parent uuid byte changes -> header checksum wrong
    p.write_bytes(bytes(raw))
    put(cfg, "acct-a", "bad.vhd", p)
    t = run_import(reg, cfg, "bad.vhd")
    assert t.status == "failure" and t.message[:5] in ("[397]", "[396]"), t.message
    assert_no_debris(reg, cfg)


@pytest.mark.parametrize("inp, code", [
    ({"import_from": "images/d.vhd", "image_properties": {"name": "x", "os_type": "linux"}}, 400),
    ({"import_from": "images/d.vhd", "import_from_format": "qcow2"}, 400),
    ({"import_from": "d.vhd"}, 400),
    ({"import_from": "images/missing.vhd"}, 404),
    ({"import_from": "nocontainer/d.vhd"}, 404),
])
def test_import_refuses_bad_input(env, tmp_path, inp, code):
    reg, cfg = env
    make_dynamic(tmp_path / "d.vhd")
    put(cfg, "acct-a", "d.vhd", tmp_path / "d.vhd")
    reg.create_task(A, "import", inp)
    _failed(Worker(reg, cfg).run_once(), code)
    assert_no_debris(reg, cfg)


def test_only_customer_admins_create_tasks(env):
    reg, _ = env
    for roles in ("cloudImages:creator", "cloudImages:observer", "observer"):
        with pytest.raises(ForbiddenError):
            reg.create_task(Caller.parse("acct-a", roles), "import", {"import_from": "images/d.vhd"})


@pytest.fixture
def imported(env, tmp_path):
    reg, cfg = env
    make_dynamic(tmp_path / "d.vhd")
    put(cfg, "acct-a", "d.vhd", tmp_path / "d.vhd")
    t = run_import(reg, cfg, "d.vhd")
    assert t.status == "success", t.message
    return reg, cfg, t.result["image_id"]


@pytest.mark.parametrize("container, code, words", [
    ("nothere", 404, "does not exist"),
    ("a/b", 400, "'/'"),
    ("why?", 400, "'?'"),
    ("ex.ports", 400, "'.'"),
])
def test_export_refuses_bad_containers(imported, container, code, words):
    reg, cfg, image_id = imported
    t = run_export(reg, cfg, image_id, container=container)
    _failed(t, code)
    assert words in t.message
    assert_no_debris(reg, cfg, images_expected=1)


def test_export_refuses_an_image_shared_with_the_caller(imported):
    reg, cfg, image_id = imported
    reg.add_member(A, image_id, "acct-b")
    reg.update_member(B, image_id, "acct-b", "accepted")
    t = run_export(reg, cfg, image_id, caller=B)
    _failed(t, 403)
    assert "shared with your account" in t.message
    # a stranger: the image does not exist for it
    _failed(run_export(reg, cfg, image_id, caller=Caller.parse("acct-c", "cloudImages:admin")), 404)
    assert cfg.store("acct-b").list("exports") == []


def test_export_refuses_public_and_licensed_images(imported):
    reg, cfg, image_id = imported
    svc = Caller.service("acct-a")
    reg.update_image(svc, image_id, [{"op": "add", "path": "/com.rackspace__1__options", "value": "1"}])
    t = run_export(reg, cfg, image_id)
    _failed(t, 403)
    assert "com.rackspace__1__options" in t.message
    reg.update_image(svc, image_id, [{"op": "replace", "path": "/com.rackspace__1__options", "value": "0"}])
    assert run_export(reg, cfg, image_id).status == "success"
    reg.update_image(svc, image_id, [{"op": "replace", "path": "/visibility", "value": "public"}])
    t = run_export(reg, cfg, image_id)
    _failed(t, 403)
    assert "public" in t.message


# ------------------------------------------------------------ worker crashes
def _worker(home, *extra, env_extra=None, check=True, hook=""):
    env = dict(os.environ, VHDKIT_LEASE_SECONDS="1", VHDKIT_HEARTBEAT_SECONDS="0.2", **(env_extra or {}))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([*vhdkit_cmd(kill_at_stage=hook), "worker", "--data", str(home), *extra, "--json"],
                          env=env, capture_output=True, text=True, check=False, timeout=300)


@pytest.mark.parametrize("kind, stage", [("import", "package"), ("export", "split")])
def test_worker_killed_mid_stage_is_retried_without_debris(imported, tmp_path, kind, stage):
    reg, cfg, image_id = imported
    cfg.segment_size = 1 * MiB  # several segments, so the kill lands between them
    if kind == "import":
        t = reg.create_task(A, "import", {"import_from": "images/d.vhd", "image_properties": {"name": "again"}})
    else:
        t = reg.create_task(A, "export", {"image_uuid": image_id, "receiving_swift_container": "exports"})
    r = _worker(cfg.home, "--once", hook=stage, env_extra={"VHDKIT_SEGMENT_SIZE": str(1 * MiB)})
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    assert reg.show_task(A, t.id).status == "processing"
    time.sleep(1.2)  # the dead worker's lease runs out
    r = _worker(cfg.home, "--until-idle", env_extra={"VHDKIT_SEGMENT_SIZE": str(1 * MiB)})
    assert r.returncode == 0, r.stderr
    done = reg.show_task(A, t.id)
    assert done.status == "success", done.message
    assert done.attempts == 2
    assert_no_debris(reg, cfg, images_expected=2 if kind == "import" else 1)
    if kind == "export":
        man = segments.join(cfg.store("acct-a"), "exports", f"{image_id}.vhd", tmp_path / "j.vhd")
        listed = [o.name for o in cfg.store("acct-a").list("exports", f"{image_id}.vhd-")]
        assert listed == [s.name for s in man.segments]


def test_two_workers_racing_run_each_of_ten_tasks_exactly_once(env, tmp_path):
    reg, cfg = env
    make_dynamic(tmp_path / "d.vhd", size=4 * MiB)
    put(cfg, "acct-a", "d.vhd", tmp_path / "d.vhd")
    ids = [reg.create_task(A, "import", {"import_from": "images/d.vhd", "image_properties": {"name": f"i{i}"}}).id
           for i in range(10)]
    env_ = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-m", "vhdkit", "worker", "--data", str(cfg.home), "--until-idle",
                               "--poll", "0.05", "--id", f"w{i}", "--json"], env=env_, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    ran = [json.loads(o[0])["tasks_run"] for o in outs]
    assert sum(ran) == 10
    tasks = [reg.show_task(A, i) for i in ids]
    assert all(t.status == "success" and t.attempts == 1 for t in tasks), [(t.status, t.message) for t in tasks]
    assert len({t.result["image_id"] for t in tasks}) == 10
    assert_no_debris(reg, cfg, images_expected=10)
