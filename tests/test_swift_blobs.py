"""Image blobs in a real Swift (VHDKIT_BLOB_STORE=swift): uploads hashed in one
pass and segmented, downloads with ranges across segments, atomic publish,
failed and killed uploads leave no active image and no orphan object."""
from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from conftest import ROOT
from helpers_registry import admin, make_image
from helpers_swift import make_test_vhd
from vhdkit.errors import ConflictError, InvalidInputError
from vhdkit.registry import Registry
from vhdkit.registry.blobs import SwiftBlobs

MiB = 1 << 20


@pytest.fixture
def blob_env(swift_store_env, monkeypatch):
    acct = "svc" + uuid.uuid4().hex[:10]
    monkeypatch.setenv("VHDKIT_BLOB_STORE", "swift")
    monkeypatch.setenv("VHDKIT_BLOB_ACCOUNT", acct)
    monkeypatch.setenv("VHDKIT_BLOB_SEGMENT_SIZE", str(1 * MiB))
    return dict(swift_store_env, VHDKIT_BLOB_STORE="swift", VHDKIT_BLOB_ACCOUNT=acct,
                VHDKIT_BLOB_SEGMENT_SIZE=str(1 * MiB))


@pytest.fixture
def reg(blob_env, tmp_path):
    r = Registry(str(tmp_path / "home"))
    assert isinstance(r.blobs.remote, SwiftBlobs)
    yield r
    r.close()


def swift_objects(reg) -> list:
    try:
        return [o.name for o in reg.blobs.remote.store.list(reg.blobs.remote.container)]
    except Exception:  # noqa: BLE001 - no container yet
        return []


def local_files(reg) -> list:
    return sorted(os.path.relpath(os.path.join(d, f), reg.blobs.root)
                  for d, _, fs in os.walk(reg.blobs.root) for f in fs)


def test_upload_is_a_segmented_object_and_ranges_cross_segments(reg):
    data = os.urandom(3 * MiB) + b"tail"
    img = make_image(reg, data=data)
    assert img.status == "active" and img.size == len(data)
    assert img.checksum == hashlib.md5(data).hexdigest()
    assert img.os_hash_value == hashlib.sha512(data).hexdigest()
    name = reg.open_data(admin(), img.id).rel[len("swift/"):]
    assert swift_objects(reg) == [name] + [f"{name}-{i:05d}" for i in range(1, 5)] + [f"{name}.segments.json"]
    assert local_files(reg) == []  # nothing of the data on this host
    out = io.BytesIO()
    assert reg.download(admin(), img.id, out) == len(data) and out.getvalue() == data
    for off, ln in ((0, 1), (5, 100), (MiB - 3, 7), (len(data) - 4, None), (len(data) - 4, 1000),
                    (MiB, 2 * MiB), (MiB - 1, 2 * MiB + 2)):
        out = io.BytesIO()
        reg.download(admin(), img.id, out, offset=off, length=ln)
        assert out.getvalue() == data[off: None if ln is None else off + ln]
        _, it = reg.iter_data(admin(), img.id, offset=off, length=ln)
        assert b"".join(it) == data[off: None if ln is None else off + ln]
    with pytest.raises(InvalidInputError):
        reg.download(admin(), img.id, io.BytesIO(), offset=len(data))
    path = reg.open_data(admin(), img.id).path  # a verified local copy, for processes that need a file
    with open(path, "rb") as f:
        assert f.read() == data
    reg.delete_image(admin(), img.id)
    assert swift_objects(reg) == [] and not os.path.exists(path)


def test_vhd_virtual_size_from_the_streamed_footer(reg, sample):
    import vhdkit.vhd as vhd

    path = sample("windows-fixed-10M")
    img = make_image(reg, disk_format="vhd", container_format="bare")
    out = reg.upload_file(admin(), img.id, str(path))
    assert out.virtual_size == vhd.info(path).virtual_size > 0
    junk = make_image(reg, disk_format="vhd", container_format="bare")
    assert reg.upload(admin(), junk.id, io.BytesIO(b"not a vhd" * 100)).virtual_size is None


class Boom(io.RawIOBase):
    def __init__(self):
        self.n = 0

    def readable(self):
        return True

    def read(self, n=-1):
        self.n += 1
        if self.n > 3:
            raise OSError("network went away")
        return b"z" * (2 * MiB)


def test_failed_upload_returns_to_queued_without_objects(reg):
    img = make_image(reg)
    with pytest.raises(OSError):
        reg.upload(admin(), img.id, Boom())
    assert reg.show_image(admin(), img.id).status == "queued"
    assert swift_objects(reg) == [] and local_files(reg) == []
    with pytest.raises(InvalidInputError):
        reg.upload(admin(), img.id, io.BytesIO(b"y" * (3 * MiB)), size=10)  # wrong announced size
    assert reg.show_image(admin(), img.id).status == "queued" and swift_objects(reg) == []
    ok = reg.upload(admin(), img.id, io.BytesIO(b"retry"))
    assert ok.status == "active" and ok.checksum == hashlib.md5(b"retry").hexdigest()
    with pytest.raises(ConflictError):
        reg.upload(admin(), img.id, io.BytesIO(b"twice"))


KILLED_UPLOAD = textwrap.dedent("""
    import os, signal, sys, time
    from vhdkit.registry import Registry, Caller
    reg = Registry(sys.argv[1])
    c = Caller("acct-owner", frozenset({"cloudImages:admin"}))
    w = reg.open_upload(c, sys.argv[2])
    for _ in range(3):
        w.write(os.urandom(4 << 20))          # 12 MiB: several 1 MiB segments go out
    r = reg.blobs.remote
    def segments_stored():
        try:
            return len(r.store.list(r.container))
        except Exception:  # the uploader has not created the container yet
            return 0
    while segments_stored() < 3:               # some segments are in Swift
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)       # the process dies mid-upload
""")


def test_killed_upload_leaves_no_active_image_and_cleanup_removes_its_segments(reg, blob_env):
    img = make_image(reg)
    env = dict(os.environ, **blob_env)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", KILLED_UPLOAD, reg.home, img.id], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert reg.show_image(admin(), img.id).status == "saving"  # never active
    debris = swift_objects(reg)
    assert debris and all(re.fullmatch(r".+-\d{5}", n) for n in debris)  # segments only: no manifest yet
    report = reg.cleanup()
    assert report["reset_uploads"] == 1
    assert reg.show_image(admin(), img.id).status == "queued"
    assert swift_objects(reg) == [] and local_files(reg) == []
    data = os.urandom(2 * MiB + 1)
    assert reg.upload(admin(), img.id, io.BytesIO(data)).status == "active"
    out = io.BytesIO()
    reg.download(admin(), img.id, out)
    assert out.getvalue() == data


def test_import_and_export_with_everything_in_swift(reg, blob_env, tmp_path):
    """Customer containers and image data both in Swift: the worker imports into
    a Swift blob and exports from it (through a verified local copy)."""
    from vhdkit.pack import segments
    from vhdkit.tasks.pipeline import PipelineConfig, Worker
    from vhdkit.registry import Caller

    cfg = PipelineConfig(home=Path(reg.home), segment_size=1 * MiB)
    a = Caller.parse("e" + uuid.uuid4().hex[:12], "cloudImages:admin")
    st = cfg.store(a.account)
    st.create_container("images")
    st.create_container("exports")
    make_test_vhd(tmp_path / "d.vhd", size=6 * MiB)
    with open(tmp_path / "d.vhd", "rb") as f:
        st.put("images", "d.vhd", f)
    reg.create_task(a, "import", {"import_from": "images/d.vhd", "image_properties": {"name": "d"}})
    t = Worker(reg, cfg).run_once()
    assert t.status == "success", t.message
    image_id = t.result["image_id"]
    rel = reg.open_data(a, image_id).rel
    assert rel.startswith("swift/") and swift_objects(reg)  # the image's data is in Swift
    reg.create_task(a, "export", {"image_uuid": image_id, "receiving_swift_container": "exports"})
    t = Worker(reg, cfg).run_once()
    assert t.status == "success", t.message
    segments.join(st, "exports", f"{image_id}.vhd", tmp_path / "out.vhd")
    import vhdkit.vhd as vhd

    with vhd.open(tmp_path / "out.vhd") as x, vhd.open(tmp_path / "d.vhd") as y:
        assert x.virtual_size == y.virtual_size
        while True:
            p, q = x.read(MiB), y.read(MiB)
            assert p == q
            if not p:
                break
