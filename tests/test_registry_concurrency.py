"""Several processes on one data directory: no lost update, a sound database;
uploads killed at any point leave no active image with wrong data and no orphan
blob after the next open."""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from vhdkit.registry import Registry

from helpers_registry import OWNER, admin, make_image

# every test on both engines (tests/helpers_pg.py)
pytestmark = pytest.mark.usefixtures("registry_url")

N_PROCS = 8


def _worker(home: str, image_ids, k: int, n: int, q) -> None:
    try:
        r = Registry(home, quotas={"tags": 1000, "properties": 1000, "members": 1000})
        me = admin(OWNER)
        for j in range(n):
            for iid in image_ids:
                r.add_tag(me, iid, f"p{k}-t{j}")
                r.update_image(me, iid, [{"op": "add", "path": f"/p{k}_k{j}", "value": f"{k}.{j}"}])
                r.add_member(me, iid, f"acct-p{k}-m{j}")
        r.close()
        q.put(None)
    except BaseException as exc:  # report to the parent
        q.put(repr(exc))


@pytest.mark.parametrize("n", [3, pytest.param(25, marks=pytest.mark.slow)])
def test_parallel_writers_lose_nothing(tmp_path, n, registry_url):
    home = str(tmp_path / "home")
    r = Registry(home, quotas={"tags": 1000, "properties": 1000, "members": 1000})
    ids = [make_image(r).id for _ in range(2)]
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(home, ids, k, n, q)) for k in range(N_PROCS)]
    for p in procs:
        p.start()
    errors = [q.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    assert errors == [None] * N_PROCS
    for iid in ids:
        img = r.show_image(admin(), iid)
        want_tags = {f"p{k}-t{j}" for k in range(N_PROCS) for j in range(n)}
        assert set(img.tags) == want_tags
        assert img.properties == {f"p{k}_k{j}": f"{k}.{j}" for k in range(N_PROCS) for j in range(n)}
        members = {m.member_id for m in r.list_members(admin(), iid)}
        assert members == {f"acct-p{k}-m{j}" for k in range(N_PROCS) for j in range(n)}
    assert r.integrity_check() == "ok"
    if registry_url is None:    # PostgreSQL enforces foreign keys on every write
        assert r._conn().execute("PRAGMA foreign_key_check").fetchall() == []


UPLOADER = textwrap.dedent("""
    import sys, time, os
    from vhdkit.registry import Registry, Caller
    from vhdkit.registry import blobs
    home, image_id, stage, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    r = Registry(home)
    me = Caller("acct-owner", frozenset({"cloudImages:admin"}))
    orig_publish = blobs.Upload.publish
    def publish(self):
        rel = orig_publish(self)
        if stage == "published":
            print("STAGE published", flush=True)
            time.sleep(60)
        return rel
    blobs.Upload.publish = publish
    class Slow:
        def __init__(self):
            self.n = 0
        def read(self, k):
            if self.n >= 64:
                return b""
            if self.n == 1:
                print("STAGE writing", flush=True)
            self.n += 1
            time.sleep(delay)
            return bytes([self.n % 251]) * 65536
    r.upload(me, image_id, Slow())
    print("STAGE done", flush=True)
    time.sleep(60)
""")

EXPECTED = b"".join(bytes([n % 251]) * 65536 for n in range(1, 65))


def _kill_run(tmp_path, stage: str, extra_delay: float, seed: int):
    home = str(tmp_path / f"h{seed}")
    r = Registry(home)
    img = make_image(r)
    r.close()
    script = tmp_path / "uploader.py"
    script.write_text(UPLOADER)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    p = subprocess.Popen([sys.executable, str(script), home, img.id, stage, "0.002"],
                         stdout=subprocess.PIPE, text=True, env=env)
    try:
        want = {"writing": "STAGE writing", "published": "STAGE published", "done": "STAGE done"}[stage]
        for line in p.stdout:
            if line.strip() == want:
                break
        time.sleep(extra_delay)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    r = Registry(home)                      # the next start cleans up
    got = r.show_image(admin(), img.id)
    files = []
    for root, _, names in os.walk(r.blobs.root):
        files += [os.path.join(root, n) for n in names]
    if got.status == "active":
        assert got.checksum == hashlib.md5(EXPECTED).hexdigest() and got.size == len(EXPECTED)
        data = r.open_data(admin(), img.id)
        with open(data.path, "rb") as f:
            assert f.read() == EXPECTED
        assert files == [data.path]
    else:
        assert got.status == "queued", got.status
        assert files == []
        r.upload(admin(), img.id, __import__("io").BytesIO(EXPECTED))   # retry works
    r.close()
    return got.status


@pytest.mark.parametrize("stage", ["writing", "published", "done"])
def test_upload_killed_at_a_stage(tmp_path, stage):
    status = _kill_run(tmp_path, stage, 0.0, 0)
    assert status == ("active" if stage == "done" else "queued")


@pytest.mark.slow
def test_upload_killed_at_random_points(tmp_path):
    rnd = random.Random(1234)
    seen = set()
    for k in range(25):
        seen.add(_kill_run(tmp_path, rnd.choice(["writing", "writing", "published"]), rnd.random() * 0.2, k))
    assert "queued" in seen


def test_threads_share_one_registry(tmp_path):
    import threading
    r = Registry(str(tmp_path / "home"), quotas={"tags": 1000})
    img = make_image(r)
    errors = []

    def work(k):
        try:
            for j in range(10):
                r.add_tag(admin(OWNER), img.id, f"th{k}-{j}")
                r.list_images(admin(OWNER), {"tag": f"th{k}-{j}"})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    assert set(r.show_image(admin(OWNER), img.id).tags) == {f"th{k}-{j}" for k in range(8) for j in range(10)}
    r.close()
