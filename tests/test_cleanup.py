"""`vhdkit cleanup` against a real Swift: image data in Swift that no registry
row references is removed once older than the grace period; referenced data
and young (possibly in-flight) data are kept; stale work dirs and temporary
files of killed operations go; --dry-run lists and touches nothing."""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from conftest import ROOT
from helpers_registry import admin, make_image
from hooked import vhdkit_cmd
from vhdkit.pack import segments
from vhdkit.registry import Registry
from vhdkit.registry.blobs import SwiftBlobs

MiB = 1 << 20


@pytest.fixture
def blob_env(swift_store_env, monkeypatch):
    acct = "cln" + uuid.uuid4().hex[:10]
    env = {"VHDKIT_BLOB_STORE": "swift", "VHDKIT_BLOB_ACCOUNT": acct, "VHDKIT_BLOB_SEGMENT_SIZE": str(MiB)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return dict(swift_store_env, **env)


def _objects(reg) -> list:
    r = reg.blobs.remote
    return sorted(o["name"] for o in r.store.listing(r.container))


def _last_modified(reg, base: str) -> list:
    """Swift's last_modified times of the objects of blob ``base``."""
    r = reg.blobs.remote
    return [o["last_modified"] for o in r.store.listing(r.container) if o["name"].startswith(base)]


def _orphan(reg, size: int) -> str:
    """Image data as an upload of a dead process would leave it: a whole large
    object (segments, sidecar, manifest) under a name no row knows."""
    r = reg.blobs.remote
    base = f"{uuid.uuid4()}.{uuid.uuid4().hex}"
    r.ensure_container()
    segments.split(r.store, r.container, base, io.BytesIO(os.urandom(size)), segment_size=MiB)
    return base


def _cli(env, home, now, cutoff, *args):
    """Run the CLI with its clock fixed at ``now`` (vhdkit.testhooks.cleanup_now)
    and the grace that makes ``cutoff`` the boundary: what was last modified
    at or before it is old, what after it young, however long the command
    takes (Swift's timestamps cannot be set back)."""
    e = dict(os.environ, **env)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    r = subprocess.run([*vhdkit_cmd(cleanup_now=now), "cleanup", "--data", str(home), "--grace", repr(now - cutoff),
                        "--json", *args], env=e, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_cleanup_removes_old_orphans_keeps_referenced_and_young(blob_env, tmp_path):
    home = tmp_path / "home"
    reg = Registry(str(home))
    assert isinstance(reg.blobs.remote, SwiftBlobs)
    kept = make_image(reg, data=os.urandom(2 * MiB + 3))  # referenced: an active image
    assert kept.status == "active"
    old = _orphan(reg, 2 * MiB + 1)
    work = home / "work"
    (work / "dead-task").mkdir(parents=True)
    (work / "dead-task" / "disk.vhd").write_bytes(b"x" * 100)
    stale_tmp = home / "objects" / ".disk.vhd.abc123.part"
    stale_tmp.parent.mkdir(parents=True, exist_ok=True)
    stale_tmp.write_bytes(b"half")
    live_tmp = home / ".busy.vhd.ghi789.part"  # old, but its writer is alive (holds the flock)
    live_tmp.write_bytes(b"still writing")
    live_fd = os.open(live_tmp, os.O_RDONLY)
    fcntl.flock(live_fd, fcntl.LOCK_EX)
    past = time.time() - 3600
    for p in (work / "dead-task", stale_tmp, live_tmp):
        os.utime(p, (past, past))
    young = _orphan(reg, MiB + 7)
    young_tmp = home / ".other.vhd.def456.part"
    young_tmp.write_bytes(b"in flight")
    # the boundary between the two orphans, as Swift dated them; the young temp file
    # is dated at the fixed "now" of the runs below
    cutoff = (max(_last_modified(reg, old)) + min(_last_modified(reg, young))) / 2
    now = time.time()
    os.utime(young_tmp, (now, now))
    before = _objects(reg)
    kept_objs = [n for n in before if n.startswith(kept.id)]
    assert len(kept_objs) == 5  # 3 segments, sidecar, manifest
    assert sum(n.startswith(old) for n in before) == 5 and sum(n.startswith(young) for n in before) == 4

    plan = _cli(blob_env, home, now, cutoff, "--dry-run")
    assert plan["dry_run"] and plan["swift_blobs"] == [old] and plan["swift_objects"] == 5
    assert plan["work_dirs"] == ["work/dead-task"] and plan["temp_files"] == ["objects/.disk.vhd.abc123.part"]
    assert _objects(reg) == before and (work / "dead-task").exists() and stale_tmp.exists()  # nothing touched

    rep = _cli(blob_env, home, now, cutoff)
    assert rep["swift_blobs"] == [old] and rep["swift_objects"] == 5 and rep["errors"] == []
    assert rep["kept_young"] >= 2  # the young orphan and the young temp file
    after = _objects(reg)
    assert not any(n.startswith(old) for n in after)
    assert [n for n in after if n.startswith(kept.id)] == kept_objs
    assert sum(n.startswith(young) for n in after) == 4
    assert not (work / "dead-task").exists() and not stale_tmp.exists() and young_tmp.exists()
    assert live_tmp.exists()
    os.close(live_fd)
    # the referenced image still downloads whole, verified segment by segment
    out = io.BytesIO()
    reg.download(admin(), kept.id, out)
    assert hashlib.md5(out.getvalue()).hexdigest() == kept.checksum
    reg.close()



def test_dry_run_lists_a_dead_upload_and_leaves_it_then_a_run_resets_it(tmp_path):
    """Opening the registry for `vhdkit cleanup` does not clean already: the dry
    run reports the dead upload and changes nothing; the real run resets it and
    counts it."""
    home = tmp_path / "home"
    reg = Registry(str(home))
    img = reg.create_image(admin(), name="dead-upload", disk_format="raw", container_format="bare")
    w = reg.open_upload(admin(), img.id)
    w.write(b"half of an image")
    w._up.release()   # the uploading process dies: its lock is gone, the row still says 'saving'
    assert reg.show_image(admin(), img.id).status == "saving"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VHDKIT_")}
    env["PYTHONPATH"] = str(ROOT)

    def run(*args):
        r = subprocess.run([sys.executable, "-m", "vhdkit", "cleanup", "--data", str(home), "--json", *args],
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["registry"]

    assert run("--dry-run")["reset_uploads"] == [img.id]
    assert reg.show_image(admin(), img.id).status == "saving"
    assert run()["reset_uploads"] == 1
    assert reg.show_image(admin(), img.id).status == "queued"
    reg.close()
