"""Fault injection as an operator's bad day goes, with real processes: a
``vhdkit serve`` on loopback, ``vhdkit worker`` subprocesses stopped
(SIGSTOP, resumed with SIGCONT) or killed (SIGKILL) at a chosen stage through
the pipeline's test hook ``kill_at_stage=STAGE[:stop]`` (tests/hooked.py), and small
tmpfs file systems mounted under the data directory and filled.

- paused past its lease, the task taken over and finished by another worker,
  then resumed: exactly the newer attempt's result exists and verifies;
- killed on both attempts: the task fails with ``[500] ... stopped
  responding`` and, once a worker or ``vhdkit cleanup`` swept it, nothing of
  it remains (image row, blob, segments, sidecar, work dir, temp files);
- the database, the blob store, the work dir or the object store full: clean
  errors (507 on the API, ``[500] ... out of storage space`` for tasks, no
  server path), nothing half-made, and it works again once space returns.

Every case adds to ``ACCOUNT`` (printed at the end with ``-s``): faults
injected, items that existed, were removed, verified.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import require_tool
from helpers_api import ROOT, ApiServer
from hooked import vhdkit_cmd
from vhdkit.pack import segments
from vhdkit.tasks.pipeline import PipelineConfig, _image_id_for

import vhdref

MiB = 1 << 20
TENANT = "acct-faults"
TOKEN = f"{TENANT}:cloudImages:admin"
LEASE = {"VHDKIT_LEASE_SECONDS": "1", "VHDKIT_HEARTBEAT_SECONDS": "0.2", "VHDKIT_SEGMENT_SIZE": str(MiB)}
IMPORT_STAGES = ["fetch", "validate", "package", "store"]
EXPORT_STAGES = ["unpack", "coalesce", "split", "publish"]
ACCOUNT: "collections.Counter[str]" = collections.Counter()
NOTHING = {"rows": [], "blobs": [], "loose_objects": [], "work": [], "temp": []}
TEMP = re.compile(r"^(\..+\.part|\..+\.tmp|\.tmp-.+|.+\.part)$")


def _disk(path: Path, size: int, kind: str, seed: int) -> str:
    """A VHD of ``size`` bytes with incompressible data in every other 2 MiB
    block; returns the sha256 of its virtual disk as qemu-img reads it."""
    data = bytearray(size)
    for blk in range(0, size // (2 * MiB), 2):
        data[blk * 2 * MiB: blk * 2 * MiB + MiB] = hashlib.shake_256(bytes([seed, blk])).digest(MiB)
    vhdref.write_vhd(path, size, vhdref.sectors_of(bytes(data)), kind=kind)
    return _qemu_raw_sha256(path)


def _qemu_raw_sha256(path: Path) -> str:
    """The virtual disk's sha256 as the peer qemu-img reads it."""
    raw = path.with_suffix(".raw")
    subprocess.run([require_tool("qemu-img"), "convert", "-f", "vpc", "-O", "raw", str(path), str(raw)], check=True)
    h = hashlib.sha256(raw.read_bytes()).hexdigest()
    raw.unlink()
    return h


def _env(extra=None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **LEASE, **(extra or {}))
    for k in ("VHDKIT_STORE", "VHDKIT_BLOB_STORE"):
        if k not in (extra or {}):
            env.pop(k, None)
    return env


def _worker(data: Path, *args: str, hook: str = "", wait: bool = True):
    cmd = [*vhdkit_cmd(kill_at_stage=hook), "worker", "--data", str(data), "--json", *args]
    env = _env()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        p.communicate(timeout=120)
    return p


def _stopped(p: subprocess.Popen, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            return False
        try:
            state = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state == "T":
            return True
        time.sleep(0.02)
    return False


def _temp_files(root: Path) -> list:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and TEMP.match(p.name)]


class Site:
    """One ``vhdkit serve`` and its data directory, with the customer's containers."""

    def __init__(self, root: Path):
        self.root = root
        self.srv = ApiServer(root)
        self.data = self.srv.data
        self.data.mkdir(parents=True, exist_ok=True)

    def start(self) -> "Site":
        self.srv.start()
        self.c = self.srv.http(TOKEN)
        self.store.create_container("incoming")
        return self

    def stop(self) -> None:
        self.c.close()
        self.srv.stop()

    @property
    def store(self):
        return PipelineConfig(home=self.data).store(TENANT)

    def put(self, name: str, path: Path) -> None:
        with open(path, "rb") as f:
            self.store.put("incoming", name, f)

    def task(self, type_: str, inp: dict) -> str:
        r = self.c.post("/v2/tasks", json={"type": type_, "input": inp})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def show(self, task_id: str) -> dict:
        return self.c.get(f"/v2/tasks/{task_id}").json()

    def attempts(self, task_id: str) -> int:
        """How many attempts the task had (the registry's record; the API does not show it)."""
        import sqlite3

        db = sqlite3.connect(self.data / "registry.db")
        try:
            return db.execute("SELECT attempts FROM tasks WHERE id = ?", (task_id,)).fetchone()[0]
        finally:
            db.close()

    def image_ids(self) -> list:
        return sorted(i["id"] for i in self.c.get("/v2/images").json()["images"])

    def verify_image(self, image_id: str) -> None:
        img = self.c.get(f"/v2/images/{image_id}").json()
        assert img["status"] == "active", img
        body = self.c.get(f"/v2/images/{image_id}/file").content
        assert len(body) == img["size"] and hashlib.md5(body).hexdigest() == img["checksum"]
        ACCOUNT["verified: image data (md5 over HTTP)"] += 1

    def verify_export(self, container: str, image_id: str, want: str, tmp: Path) -> None:
        """The export joins (every segment's md5, the whole sha256) and qemu-img
        reads the virtual disk an export with no fault yields."""
        out = tmp / "joined.vhd"
        man = segments.join(self.store, container, f"{image_id}.vhd", out)
        listed = [o.name for o in self.store.list(container, f"{image_id}.vhd-")]
        assert listed == [s.name for s in man.segments]
        assert _qemu_raw_sha256(out) == want
        ACCOUNT["verified: export (segments joined; qemu-img reads the imported disk)"] += 1
        out.unlink()

    def debris(self, keep_images: list) -> dict:
        """What is on disk beyond the active images ``keep_images`` and published exports."""
        import sqlite3

        db = sqlite3.connect(self.data / "registry.db")
        rows = db.execute("SELECT id, status, blob FROM images").fetchall()
        db.close()
        blob_root = self.data / "blobs"
        blob_files = sorted(str(p.relative_to(blob_root)) for p in blob_root.rglob("*") if p.is_file())
        objects = self.data / "objects"
        loose = []  # segments or sidecars whose manifest object does not exist
        for acct in objects.iterdir() if objects.is_dir() else ():
            st = PipelineConfig(home=self.data).store(acct.name)
            for cont in st.list_containers():
                names = {o.name for o in st.list(cont)}
                for n in names:
                    m = re.fullmatch(r"(.+\.vhd)(?:-\d+|\.segments\.json)", n)
                    if m and m.group(1) not in names:
                        loose.append(f"{cont}/{n}")
        work = self.data / "work"
        return {"rows": sorted((r[0], r[1]) for r in rows if r[0] not in keep_images or r[1] != "active"),
                "blobs": [b for b in blob_files if not any(b == r[2] for r in rows if r[0] in keep_images)],
                "loose_objects": sorted(loose),
                "work": sorted(str(p.relative_to(work)) for p in work.rglob("*")) if work.is_dir() else [],
                "temp": _temp_files(self.data)}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    s = Site(tmp / "site").start()
    dyn, fixed = tmp / "dyn.vhd", tmp / "fixed.vhd"
    s.want = {"dyn.vhd": _disk(dyn, 8 * MiB, "dynamic", 1), "fixed.vhd": _disk(fixed, 6 * MiB, "fixed", 2)}
    s.put("dyn.vhd", dyn)
    s.put("fixed.vhd", fixed)
    # the images exports start from: a dynamic (streamed export) and a fixed one (unpack, coalesce)
    s.bases = {}
    for name in ("dyn.vhd", "fixed.vhd"):
        tid = s.task("import", {"import_from": f"incoming/{name}", "image_properties": {"name": f"base-{name}"}})
        _worker(s.data, "--once")
        t = s.show(tid)
        assert t["status"] == "success", t
        s.bases[name] = t["result"]["image_id"]
    # what an export with no fault yields (qemu-img's reading of its virtual disk)
    s.store.create_container("baseline")
    s.exported = {}
    for name, image_id in s.bases.items():
        tid = s.task("export", {"image_uuid": image_id, "receiving_swift_container": "baseline"})
        _worker(s.data, "--once")
        assert s.show(tid)["status"] == "success"
        segments.join(s.store, "baseline", f"{image_id}.vhd", tmp / "baseline.vhd")
        s.exported[name] = _qemu_raw_sha256(tmp / "baseline.vhd")
    try:
        yield s
    finally:
        s.stop()
        print("\nfault accounting:", json.dumps(dict(sorted(ACCOUNT.items())), indent=1))


def _clean(site: Site) -> None:
    d = site.debris(list(site.bases.values()) + getattr(site, "kept", []))
    assert d == NOTHING, d


#: the stages of the default run (the others are marked slow: ~5 s each)
DEFAULT_RUN = {("import", "store"), ("export", "split"), ("export", "publish")}
#: after two kills at these stages `vhdkit cleanup` sweeps the failed task; at the others the next worker
SWEPT_BY_CLEANUP = {"validate", "store", "coalesce", "publish"}


def _cases() -> list:
    return [pytest.param(k, s, marks=() if (k, s) in DEFAULT_RUN else pytest.mark.slow)
            for k, stages in (("import", IMPORT_STAGES), ("export", EXPORT_STAGES)) for s in stages]


def _export_source(stage: str) -> str:
    """unpack and coalesce happen for a fixed disk; a dynamic one streams into split"""
    return "dyn.vhd" if stage in ("split", "publish") else "fixed.vhd"


def _export_input(site: Site, stage: str, container: str) -> dict:
    site.store.create_container(container)
    return {"image_uuid": site.bases[_export_source(stage)], "receiving_swift_container": container}


# ------------------------------------------------------------------ paused, resumed
@pytest.mark.parametrize("kind, stage", _cases())
def test_a_worker_paused_past_its_lease_then_resumed_changes_nothing_of_the_newer_attempt(site, kind, stage, tmp_path):
    if kind == "import":
        tid = site.task("import", {"import_from": "incoming/dyn.vhd", "image_properties": {"name": f"p-{stage}"}})
    else:
        container = f"paused-{stage}"
        tid = site.task("export", _export_input(site, stage, container))
    a = _worker(site.data, "--once", "--id", "stale-a", hook=f"{stage}:stop", wait=False)
    try:
        assert _stopped(a), a.communicate(timeout=30)
        ACCOUNT[f"SIGSTOP: {kind} {stage}"] += 1
        time.sleep(1.3)  # its lease runs out
        b = _worker(site.data, "--once", "--id", "newer-b")
        assert b.returncode == 0, b.stderr.read()
        t = site.show(tid)
        assert t["status"] == "success" and site.attempts(tid) == 2, t
    finally:
        os.kill(a.pid, signal.SIGCONT)
    out, err = a.communicate(timeout=60)
    assert a.returncode == 0, err
    print(f"stale attempt at {kind} {stage}: {err.strip()[-600:]}")
    ACCOUNT["SIGCONT: stale attempt resumed and ran to its end"] += 1
    t = site.show(tid)
    assert t["status"] == "success" and site.attempts(tid) == 2, t  # the stale attempt changed nothing
    if kind == "import":
        image_id = t["result"]["image_id"]
        assert image_id == _image_id_for(tid)
        assert image_id in site.image_ids()
        ACCOUNT["existed after resume: the newer attempt's image"] += 1
        site.verify_image(image_id)
        site.kept = getattr(site, "kept", []) + [image_id]
    else:
        assert t["result"]["export_location"] == f"{container}/{site.bases[_export_source(stage)]}.vhd"
        site.verify_export(container, site.bases[_export_source(stage)], site.exported[_export_source(stage)],
                           tmp_path)
        ACCOUNT["existed after resume: the newer attempt's export"] += 1
    _clean(site)


# ------------------------------------------------------------------ killed twice
@pytest.mark.parametrize("kind, stage", _cases())
def test_a_task_whose_worker_is_killed_on_both_attempts_fails_and_leaves_nothing(site, kind, stage):
    if kind == "import":
        tid = site.task("import", {"import_from": "incoming/dyn.vhd", "image_properties": {"name": f"k-{stage}"}})
    else:
        container = f"killed-{stage}"
        inp = _export_input(site, stage, container)
        tid = site.task("export", inp)
    for _attempt in (1, 2):
        w = _worker(site.data, "--once", hook=stage)
        assert w.returncode == -signal.SIGKILL, w.stderr.read()
        ACCOUNT[f"SIGKILL: {kind} {stage}"] += 1
        time.sleep(1.2)  # its lease runs out
    left = site.debris(list(site.bases.values()) + getattr(site, "kept", []))
    # who notices: the next worker, or the operator's cleanup (with the default grace of an hour)
    if stage in SWEPT_BY_CLEANUP:
        r = subprocess.run([sys.executable, "-m", "vhdkit", "cleanup", "--data", str(site.data), "--json"],
                           env=_env(), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        assert f"work/{tid}" in rep["failed_tasks"], rep
        if kind == "export" and stage in ("split", "publish"):  # segments without a manifest
            assert any(x.startswith(f"object:{container}/{inp['image_uuid']}.vhd-") for x in rep["failed_tasks"]), rep
        ACCOUNT["swept by: vhdkit cleanup"] += 1
    else:
        w = _worker(site.data, "--once")
        assert w.returncode == 0, w.stderr.read()
        ACCOUNT["swept by: the next worker"] += 1
    t = site.show(tid)
    assert t["status"] == "failure", t
    assert t["message"].startswith("[500] ") and "stopped responding" in t["message"], t
    assert _image_id_for(tid) not in site.image_ids()
    _clean(site)
    for k, v in left.items():  # what the two dead attempts left, all of it removed now
        ACCOUNT[f"left by two kills, then removed: {k}"] += len(v)
    ACCOUNT["swept: failed tasks"] += 1


# ------------------------------------------------------------------ disk full
def _mount(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(path: Path) -> Path:
    """Fill the file system of ``path``; returns the filler file (remove it to free the space)."""
    filler = path / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (256 << 10))
                f.flush()
        except OSError:
            pass
    return filler


@pytest.fixture
def small(tmp_path):
    mounts = []

    def mount(sub: str, size: str) -> Path:
        p = tmp_path / "site" / "data" / sub if sub else tmp_path / "site" / "data"
        _mount(p, size)
        mounts.append(p)
        return p

    yield mount
    for p in reversed(mounts):
        _umount(p)


def _full_answer(r: httpx.Response) -> None:
    assert r.status_code == 507, (r.status_code, r.text)
    msg = r.json()["error"]["message"]
    assert "out of storage space" in msg and "/" not in msg.split(":", 1)[1], msg


def test_database_full_answers_507_keeps_reads_and_recovers(small, tmp_path):
    fs = small("", "4m")
    s = Site(tmp_path / "site").start()
    try:
        assert s.c.post("/v2/images", json={"name": "before"}).status_code == 201
        filler = _fill(fs)
        ACCOUNT["disk full: database"] += 1
        statuses = collections.Counter()
        for i in range(300):  # SQLite reuses the WAL's space for a while: write until it runs out
            r = s.c.post("/v2/images", json={"name": f"i{i}"})
            statuses[r.status_code] += 1
            assert r.status_code in (201, 507), r.text
            if r.status_code == 507:
                _full_answer(r)
                break
        assert statuses[507] == 1, statuses
        _full_answer(s.c.post("/v2/tasks", json={"type": "import", "input": {"import_from": "incoming/x.vhd"}}))
        assert s.c.get("/v2/images").status_code == 200  # reads keep working
        filler.unlink()
        r = s.c.post("/v2/images", json={"name": "after"})
        assert r.status_code == 201, r.text
        # nothing half-made: exactly the images whose create answered 201
        assert len(s.image_ids()) == 1 + statuses[201] + 1
        assert s.c.post("/v2/tasks", json={"type": "import", "input": {"import_from": "incoming/x.vhd"}}
                        ).status_code == 201
        ACCOUNT["recovered: database"] += 1
    finally:
        s.stop()


def _run(s: Site, type_: str, inp: dict, status: str = "success") -> dict:
    """Create a task over HTTP, run one worker, return the task as the API shows it."""
    tid = s.task(type_, inp)
    w = _worker(s.data, "--once")
    assert w.returncode == 0, w.stderr.read()
    t = s.show(tid)
    assert t["status"] == status, t
    return t


def _task_fails_full(s: Site, type_: str, inp: dict, stage: str) -> None:
    t = _run(s, type_, inp, "failure")
    assert t["message"] == (f"[500] {type_} failed in stage {stage}: "
                            "the service is out of storage space; try again later"), t


def test_blob_store_full_fails_uploads_and_imports_cleanly_and_recovers(small, tmp_path):
    fs = small("blobs", "3m")
    s = Site(tmp_path / "site").start()
    try:
        vhd = tmp_path / "d.vhd"
        _disk(vhd, 16 * MiB, "dynamic", 3)
        s.put("d.vhd", vhd)
        # an upload that does not fit
        img = s.c.post("/v2/images", json={"name": "up", "disk_format": "raw", "container_format": "bare"}).json()
        r = s.c.put(f"/v2/images/{img['id']}/file", content=os.urandom(5 * MiB),
                    headers={"Content-Type": "application/octet-stream"})
        ACCOUNT["disk full: blob store (upload)"] += 1
        _full_answer(r)
        assert s.c.get(f"/v2/images/{img['id']}").json()["status"] == "queued"
        # an import whose store stage does not fit
        _task_fails_full(s, "import", {"import_from": "incoming/d.vhd"}, "store")
        ACCOUNT["disk full: blob store (import)"] += 1
        assert s.debris([]) == dict(NOTHING, rows=[(img["id"], "queued")])  # the upload's image, back to queued
        assert s.c.delete(f"/v2/images/{img['id']}").status_code == 204
        subprocess.run(["mount", "-o", "remount,size=64m", str(fs)], check=True)  # space returns
        s.verify_image(_run(s, "import", {"import_from": "incoming/d.vhd"})["result"]["image_id"])
        ACCOUNT["recovered: blob store"] += 1
    finally:
        s.stop()


def test_work_dir_full_fails_the_import_cleanly_and_recovers(small, tmp_path):
    fs = small("work", "2m")
    s = Site(tmp_path / "site").start()
    try:
        vhd = tmp_path / "d.vhd"
        _disk(vhd, 16 * MiB, "dynamic", 4)
        s.put("d.vhd", vhd)
        _task_fails_full(s, "import", {"import_from": "incoming/d.vhd"}, "package")
        ACCOUNT["disk full: work dir"] += 1
        assert s.debris([]) == NOTHING
        subprocess.run(["mount", "-o", "remount,size=64m", str(fs)], check=True)
        s.verify_image(_run(s, "import", {"import_from": "incoming/d.vhd"})["result"]["image_id"])
        ACCOUNT["recovered: work dir"] += 1
    finally:
        s.stop()


def test_object_store_full_fails_the_export_cleanly_and_recovers(small, tmp_path):
    fs = small("objects", "16m")
    s = Site(tmp_path / "site").start()
    try:
        vhd = tmp_path / "d.vhd"
        want = _disk(vhd, 8 * MiB, "dynamic", 5)
        s.put("d.vhd", vhd)
        image_id = _run(s, "import", {"import_from": "incoming/d.vhd"})["result"]["image_id"]
        s.store.create_container("exports")
        filler = _fill(fs)
        _task_fails_full(s, "export", {"image_uuid": image_id, "receiving_swift_container": "exports"}, "split")
        ACCOUNT["disk full: object store"] += 1
        assert s.debris([image_id]) == NOTHING
        assert [o.name for o in s.store.list("exports")] == []
        filler.unlink()
        _run(s, "export", {"image_uuid": image_id, "receiving_swift_container": "exports"})
        s.verify_export("exports", image_id, want, tmp_path)
        ACCOUNT["recovered: object store"] += 1
    finally:
        s.stop()
