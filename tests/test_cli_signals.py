"""Issue 19 item 1: every long command stops promptly on SIGINT (^C) and
SIGTERM, removes its temporary files, exits 130 / 143, and a worker gives its
task back instead of leaving it to its lease.

The signals go to real `vhdkit` processes from outside, at several points:
commands that read stdin are fed without end, and signalled after so many
bytes were taken in (they cannot finish first); commands that read files
are signalled when their temporary output appears and when it has grown.
"""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
SIGNALS = [signal.SIGINT, signal.SIGTERM]
#: "within a second", with room for a loaded machine
PROMPT = 5.0
A = ["--account", "acct-a", "--roles", "cloudImages:admin"]


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **extra)
    env.pop("VHDKIT_STORE", None)
    return env


def _vhdkit(*args) -> list:
    return [sys.executable, "-m", "vhdkit", *map(str, args)]


def _block(seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(MiB)


class _Feeder(threading.Thread):
    """Writes ``chunks`` (cycled) into the process's stdin until it goes away."""

    def __init__(self, stdin, chunks):
        super().__init__(daemon=True)
        self.stdin, self.chunks, self.fed = stdin, chunks, 0

    def run(self):
        try:
            while True:
                for c in self.chunks:
                    self.stdin.write(c)
                    self.fed += len(c)
        except (BrokenPipeError, ValueError, OSError):
            pass


def _temps(d: Path):
    return sorted(str(p) for p in d.rglob(".*"))


def stop_at(cmd, sig, when, *, cwd, feed=None, env=None):
    """Run ``cmd``, send ``sig`` once ``when(feeder)`` is true, and return
    (exit status, seconds from the signal to the exit, stderr)."""
    p = subprocess.Popen(cmd, cwd=cwd, env=env or _env(), stdin=subprocess.PIPE if feed else subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    feeder = None
    if feed:
        feeder = _Feeder(p.stdin, feed)
        feeder.start()
    deadline = time.monotonic() + 120
    while not when(feeder):
        if p.poll() is not None:
            pytest.fail(f"{cmd[3:]} ended (status {p.returncode}) before the signal point: "
                        f"{p.stderr.read().decode()[-500:]}")
        assert time.monotonic() < deadline, "the signal point never came"
        time.sleep(0.002)
    p.send_signal(sig)
    t0 = time.monotonic()
    try:
        err = p.communicate(timeout=60)[1].decode()
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail(f"{cmd[3:]} hung after {signal.Signals(sig).name}")
    return p.returncode, time.monotonic() - t0, err


def assert_stopped(rc, took, err, sig):
    assert rc == 128 + sig, (rc, err[-2000:])
    assert took < PROMPT, f"took {took:.1f} s to stop"
    assert "Traceback" not in err, err[-2000:]
    assert f"stopped by {signal.Signals(sig).name}" in err


def fed(n):
    return lambda f: f.fed >= n


def temp_grown(d: Path, n: int):
    """True once a temporary file (a dot file) under ``d`` holds ``n`` bytes."""
    def when(_f):
        for p in d.rglob("*"):
            try:
                if any(x.startswith(".") for x in p.relative_to(d).parts) and p.is_file() \
                        and p.stat().st_size >= n:
                    return True
            except (OSError, ValueError):
                pass
        return False
    return when


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """64 MiB of random data, as raw, as a dynamic VHD (with a differencing
    child over it), as an OVA; and 48 MiB of compressible text."""
    d = tmp_path_factory.mktemp("big")
    with open(d / "r.raw", "wb") as f:
        for i in range(64):
            f.write(_block(i))
    env = _env()
    for args in (("convert", d / "r.raw", d / "r.vhd", "--type", "dynamic", "--no-sync"),
                 ("snapshot", d / "r.vhd", d / "c.vhd"),
                 ("ova", "pack", d / "r.vhd", "-o", d / "r.ova", "--compress", "none")):
        subprocess.run(_vhdkit(*args), env=env, check=True, capture_output=True)
    import base64

    with open(d / "text.raw", "wb") as f:
        for i in range(36):
            f.write(base64.b64encode(_block(100 + i)))
    return d


# ------------------------------------------------------------- stdin-fed
POINTS = [1 * MiB, 24 * MiB]


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("cmd", [
    ["compress", "-", "-o", "out", "--level", "9"],
    ["convert", "-", "out.vhd", "--type", "dynamic"],
    ["convert", "-", "out.vhd", "--type", "fixed"],
])
def test_stdin_writers_stop_and_leave_nothing(tmp_path, cmd, point, sig):
    rc, took, err = stop_at(_vhdkit(*cmd), sig, fed(point), cwd=tmp_path, feed=[_block(1), _block(2)])
    assert_stopped(rc, took, err, sig)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("point", POINTS)
def test_decompress_stops_and_leaves_nothing(tmp_path, point, sig):
    member = gzip.compress(_block(3) * 4, compresslevel=1)  # a multi-member stream, fed without end
    rc, took, err = stop_at(_vhdkit("decompress", "-", "-o", "out"), sig, fed(point), cwd=tmp_path, feed=[member])
    assert_stopped(rc, took, err, sig)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("point", POINTS)
def test_segments_split_stops_and_removes_its_segments(tmp_path, point, sig):
    store = tmp_path / "store"
    cmd = _vhdkit("segments", "split", "-", "--name", "big", "--container", "c", "--segment-size", "4M",
                  "--store", store)
    rc, took, err = stop_at(cmd, sig, fed(point), cwd=tmp_path, feed=[_block(4)])
    assert_stopped(rc, took, err, sig)
    r = subprocess.run(_vhdkit("object", "list", "c", "--store", store, "--json"), env=_env(),
                       capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stdout + r.stderr
    assert _temps(store) == []


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("point", POINTS)
def test_image_upload_stops_and_the_image_stays_queued(tmp_path, point, sig):
    home = tmp_path / "home"
    env = _env(VHDKIT_HOME=str(home))
    r = subprocess.run(_vhdkit("image", "create", "--name", "x", "--disk-format", "raw", "--container-format",
                               "bare", *A, "--json"), env=env, capture_output=True, text=True, check=True)
    iid = json.loads(r.stdout)["id"]
    rc, took, err = stop_at(_vhdkit("image", "upload", iid, "-", *A), sig, fed(point), cwd=tmp_path,
                            feed=[_block(5)], env=env)
    assert_stopped(rc, took, err, sig)
    r = subprocess.run(_vhdkit("image", "show", iid, *A, "--json"), env=env, capture_output=True, text=True,
                       check=True)
    img = json.loads(r.stdout)
    assert img["status"] == "queued" and not img.get("size"), img
    assert _temps(home) == []


# ------------------------------------------------------------- file inputs
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("grown", [0, 4 * MiB])
@pytest.mark.parametrize("name", ["compress", "coalesce", "ova-pack", "ova-unpack"])
def test_file_commands_stop_and_leave_nothing(big, tmp_path, name, grown, sig):
    cmd = {"compress": ["compress", big / "text.raw", "-o", "out.gz", "--level", "9"],
           "coalesce": ["coalesce", big / "c.vhd", "-o", "out.vhd"],
           "ova-pack": ["ova", "pack", big / "r.vhd", "-o", "out.ova", "--level", "9"],
           "ova-unpack": ["ova", "unpack", big / "r.ova", "-d", "out"]}[name]
    rc, took, err = stop_at(_vhdkit(*cmd), sig, temp_grown(tmp_path, grown), cwd=tmp_path)
    assert_stopped(rc, took, err, sig)
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def stored(big, tmp_path_factory):
    """r.raw as a segmented object and as a registry image."""
    d = tmp_path_factory.mktemp("stored")
    env = _env(VHDKIT_HOME=str(d / "home"))
    subprocess.run(_vhdkit("segments", "split", big / "r.raw", "--name", "r", "--container", "c",
                           "--segment-size", "8M", "--store", d / "store"), env=env, check=True, capture_output=True)
    r = subprocess.run(_vhdkit("image", "create", "--name", "r", "--disk-format", "raw", "--container-format",
                               "bare", "--file", big / "r.raw", *A, "--json"),
                       env=env, check=True, capture_output=True, text=True)
    return d, env, json.loads(r.stdout)["id"]


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("cmd", ["join", "download"])
def test_segments_join_and_image_download_stop_and_leave_nothing(stored, tmp_path, cmd, sig):
    d, env, iid = stored
    args = (["segments", "join", "c", "r", "-o", "out", "--store", d / "store"] if cmd == "join"
            else ["image", "download", iid, "-o", "out", "--verify", *A])
    rc, took, err = stop_at(_vhdkit(*args), sig, temp_grown(tmp_path, 0), cwd=tmp_path, env=env)
    assert_stopped(rc, took, err, sig)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ worker
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("stage", ["validate", "package", "store"])
def test_worker_stopped_mid_task_gives_the_task_back(big, tmp_path, stage, sig):
    from vhdkit.registry import Caller, Registry

    home = tmp_path / "home"
    env = _env(VHDKIT_HOME=str(home), VHDKIT_HEARTBEAT_SECONDS="0.05", VHDKIT_LEASE_SECONDS="600")
    subprocess.run(_vhdkit("object", "put", "images", "r.vhd", big / "r.vhd", "--store", home / "objects",
                           "--account", "acct-a"), env=env, check=True, capture_output=True)
    caller = Caller.parse("acct-a", "cloudImages:admin")
    reg = Registry(str(home))
    t = reg.create_task(caller, "import", {"import_from": "images/r.vhd", "image_properties": {"name": "r"}})
    stages = ["fetch", "validate", "package", "store"]

    def reached(_f):
        cur = reg.show_task(caller, t.id)
        return cur.status == "processing" and cur.stage in stages[stages.index(stage):]

    rc, took, err = stop_at(_vhdkit("worker", "--data", home, "--poll", "0.05"), sig, reached, cwd=tmp_path,
                            env=env)
    assert_stopped(rc, took, err, sig)
    after = reg.show_task(caller, t.id)
    assert (after.status, after.worker_id, after.attempts) == ("pending", None, 0), after
    assert reg.list_images(caller).images == []
    assert not any((home / "work").iterdir())
    # claimable at once (the lease is 600 s): the next worker runs it to the end
    r = subprocess.run(_vhdkit("worker", "--data", home, "--until-idle", "--json"), env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and json.loads(r.stdout)["tasks_run"] == 1, r.stdout + r.stderr
    assert reg.show_task(caller, t.id).status == "success"


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_idle_worker_stops(tmp_path, sig):
    env = _env(VHDKIT_HOME=str(tmp_path / "home"))
    started = time.monotonic()
    rc, took, err = stop_at(_vhdkit("worker", "--data", tmp_path / "home", "--poll", "0.2"), sig,
                            lambda _f: time.monotonic() - started > 1.5, cwd=tmp_path, env=env)
    assert_stopped(rc, took, err, sig)
