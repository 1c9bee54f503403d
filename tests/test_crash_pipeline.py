"""Crash harness for the task worker: an import task's worker is SIGKILLed
before each Python-level event (os.write, fsync, rename/replace, unlink,
registry write transactions; see tests/helpers_crash.py).  After the dead
worker's lease runs out a fresh worker must finish the task: it ends in
``success`` (never stuck in ``processing``), the imported image is active
with exactly the uploaded disk's data, and no blob, upload part or task
directory is left over.

The default run takes every 10th kill point; the slow run takes all.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time

import pytest

import vhdkit
import vhdref
from vhdkit.pack import ova
from helpers_crash import count_events, record, run_event_kill
from vhdkit.tasks.pipeline import PipelineConfig, Worker
from vhdkit.registry import Caller, Registry

A = Caller.parse("acct-a", "cloudImages:admin")
MiB = 1 << 20


@pytest.fixture
def pristine(tmp_path):
    home = tmp_path / "pristine"
    reg = Registry(home)
    cfg = PipelineConfig(home=home)
    st = cfg.store("acct-a")
    st.create_container("images")
    disk = tmp_path / "d.vhd"
    data = bytearray(4 * MiB)
    data[0:65536] = hashlib.shake_256(b"crash").digest(65536)
    data[3 * MiB:3 * MiB + 4096] = b"\x5a" * 4096
    vhdref.write_vhd(disk, len(data), vhdref.sectors_of(bytes(data)), kind="dynamic")
    with open(disk, "rb") as f:
        st.put("images", "d.vhd", f)
    t = reg.create_task(A, "import", {"import_from": "images/d.vhd", "import_from_format": "vhd",
                                      "image_properties": {"name": "crash"}})
    reg.close()
    return home, t.id, bytes(data)


def _code(home):
    return (f"from pathlib import Path\nfrom vhdkit.tasks.pipeline import PipelineConfig, Worker\n"
            f"from vhdkit.registry import Registry\n"
            f"reg = Registry({str(home)!r})\n"
            f"cfg = PipelineConfig(home=Path({str(home)!r}))\n"
            f"cfg.lease_seconds = 1.0\n"
            f"Worker(reg, cfg, 'doomed').run_once()\n")


def _assert_recovers(home, task_id, data: bytes, tmp_path):
    reg = Registry(home)
    cfg = PipelineConfig(home=home)
    cfg.lease_seconds = 1.0
    try:
        # a .new upload file a kill left is spared by cleanup for 60 s (see
        # tests/test_crash_registry.py); age it so this cleanup must take it
        tmp = os.path.join(reg.blobs.root, "tmp")
        young = [n for n in os.listdir(tmp) if n.endswith(".new")]
        for n in young:
            os.utime(os.path.join(tmp, n), (1, 1))
        if young:
            reg.cleanup()
        t = reg.show_task(A, task_id)
        if t.status == "processing":
            time.sleep(1.3)   # the dead worker's lease runs out
        Worker(reg, cfg, "rescuer").run(until_idle=True, poll=0.1)
        t = reg.show_task(A, task_id)
        assert t.status == "success", (t.status, t.message)
        image_id = t.result["image_id"]
        img = reg.show_image(A, image_id)
        assert img.status == "active"
        d = reg.open_data(A, image_id)
        out = tmp_path / "got.ova"
        with open(out, "wb") as fh:
            for chunk in d.iter():
                fh.write(chunk)
        unpacked = tmp_path / "unpacked"
        shutil.rmtree(unpacked, ignore_errors=True)
        rep = ova.unpack(out, unpacked)     # the import stores a verified OVA
        assert rep.ok and len(rep.disks) == 1
        with vhdkit.open(rep.disks[0].extracted_to) as s:
            assert s.read() == data
        shutil.rmtree(unpacked)
        rows = reg._conn().execute("SELECT status, blob FROM images").fetchall()
        assert [r["status"] for r in rows] == ["active"], [tuple(r) for r in rows]
        blob_files = sorted(str(p.relative_to(reg.blobs.root)) for p in __import__("pathlib").Path(
            reg.blobs.root).rglob("*") if p.is_file())
        assert blob_files == [rows[0]["blob"]]
        work = cfg.work_root
        assert not work.exists() or not any(work.iterdir()), list(work.iterdir())
        assert reg.integrity_check() == "ok"
    finally:
        reg.close()


@pytest.mark.parametrize("step", [10, pytest.param(1, marks=pytest.mark.slow)])
def test_import_worker_killed_before_events(tmp_path, pristine, step):
    src, task_id, data = pristine
    probe = tmp_path / "probe"
    shutil.copytree(src, probe)
    total = count_events(_code(probe), tmp_path / "events.log", timeout=300)
    assert total >= 5
    points = list(range(1, total + 2, step))
    if points[-1] != total + 1:
        points.append(total + 1)
    for n in points:
        home = tmp_path / f"h{n}"
        shutil.copytree(src, home)
        run_event_kill(_code(home), n, timeout=300)
        _assert_recovers(home, task_id, data, tmp_path)
        shutil.rmtree(home)
    record("worker:import:events", len(points))
