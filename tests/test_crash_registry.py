"""Crash harness for the registry: an upload (and a delete) is SIGKILLed
before every Python-level event -- each os.write of a chunk, fsync, rename,
unlink and each database write transaction (before BEGIN, before COMMIT,
after COMMIT) -- and at random times.  After a restart (opening the
registry runs its cleanup):

- the image is either active with exactly the uploaded bytes (size, md5
  and the blob's sha256 all match) or back to queued with no data;
- no temporary part files and no blob files that no image refers to;
- the database passes PRAGMA integrity_check;
- a retried upload succeeds (nothing is stuck in 'saving').
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil

import pytest

from helpers_crash import count_events, record, run_event_kill, run_random_kill, timed_run
from vhdkit.registry import Caller, Registry

ME = Caller.parse("acct-a", "cloudImages:admin")


@pytest.fixture
def pristine(tmp_path):
    """A registry with one queued image, and 4 MiB of data to upload."""
    home = tmp_path / "pristine"
    with Registry(str(home)) as reg:
        img = reg.create_image(ME, name="crash", disk_format="raw", container_format="bare")
    data = tmp_path / "data.bin"
    data.write_bytes(random.Random(1).randbytes(4 << 20) + b"tail")
    return home, img.id, data


def _blob_files(home):
    root = os.path.join(home, "blobs")
    out = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            out.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(out)


def _assert_consistent(home, image_id, data: bytes):
    with Registry(str(home)) as reg:           # restart: cleanup runs here
        assert reg.integrity_check() == "ok"
        img = reg.show_image(ME, image_id)
        # A kill between creating tmp/<token>.new and locking it leaves that
        # file; cleanup spares a .new for 60 s (a live upload may be creating
        # it).  Once it is old, the next cleanup must remove it.
        tmp = os.path.join(home, "blobs", "tmp")
        young = [n for n in os.listdir(tmp) if n.endswith(".new")]
        for n in young:
            os.utime(os.path.join(tmp, n), (1, 1))
        if young:
            reg.cleanup()
        blobs = _blob_files(home)
        assert not [b for b in blobs if b.startswith("tmp" + os.sep)], blobs
        if img.status == "active":
            assert img.size == len(data) and img.checksum == hashlib.md5(data).hexdigest()
            d = reg.open_data(ME, image_id)
            got = hashlib.sha256()
            for chunk in d.iter():
                got.update(chunk)
            assert got.hexdigest() == hashlib.sha256(data).hexdigest()
            assert blobs == [os.path.relpath(d.path, os.path.join(home, "blobs"))]
            state = "active"
        else:
            assert img.status == "queued", img.status
            assert blobs == [], blobs
            reg.upload(ME, image_id, __import__("io").BytesIO(data))   # retry works
            assert reg.show_image(ME, image_id).status == "active"
            state = "queued"
    return state


def _upload_code(home, image_id, path):
    return (f"from vhdkit.registry import Caller, Registry\n"
            f"reg = Registry({str(home)!r})\n"
            f"reg.upload_file(Caller.parse('acct-a', 'cloudImages:admin'), {image_id!r}, {str(path)!r})\n")


def test_upload_killed_before_every_event(tmp_path, pristine):
    src, image_id, data_path = pristine
    data = data_path.read_bytes()
    probe = tmp_path / "probe"
    shutil.copytree(src, probe)
    total = count_events(_upload_code(probe, image_id, data_path), tmp_path / "events.log")
    assert total >= 6
    states = set()
    for n in range(1, total + 2):
        home = tmp_path / f"h{n}"
        shutil.copytree(src, home)
        run_event_kill(_upload_code(home, image_id, data_path), n)
        states.add(_assert_consistent(home, image_id, data))
        shutil.rmtree(home)
    assert states == {"active", "queued"}
    record("registry:upload:events", total + 1)


@pytest.mark.parametrize("points", [4, pytest.param(60, marks=pytest.mark.slow)])
def test_upload_killed_at_random_times(tmp_path, pristine, points):
    src, image_id, data_path = pristine
    data = data_path.read_bytes()
    probe = tmp_path / "probe"
    shutil.copytree(src, probe)
    full = timed_run(_upload_code(probe, image_id, data_path))
    rng = random.Random(9 + points)
    for i in range(points):
        home = tmp_path / f"r{i}"
        shutil.copytree(src, home)
        run_random_kill(_upload_code(home, image_id, data_path), rng.uniform(0, full))
        _assert_consistent(home, image_id, data)
        shutil.rmtree(home)
    record("registry:upload:random", points)


def test_delete_killed_before_every_event(tmp_path, pristine):
    """Deleting an active image: afterwards it is either still active with
    its data or gone with its blob removed (after cleanup), never a record
    without data or data without a record."""
    src, image_id, data_path = pristine
    data = data_path.read_bytes()
    with Registry(str(src)) as reg:
        reg.upload_file(ME, image_id, str(data_path))
    code_of = lambda home: (f"from vhdkit.registry import Caller, Registry\n"      # noqa: E731
                            f"reg = Registry({str(home)!r})\n"
                            f"reg.delete_image(Caller.parse('acct-a', 'cloudImages:admin'), {image_id!r})\n")
    probe = tmp_path / "probe"
    shutil.copytree(src, probe)
    total = count_events(code_of(probe), tmp_path / "events.log")
    for n in range(1, total + 2):
        home = tmp_path / f"d{n}"
        shutil.copytree(src, home)
        run_event_kill(code_of(home), n)
        with Registry(str(home)) as reg:
            assert reg.integrity_check() == "ok"
            ids = [i.id for i in reg.list_images(ME).images]
            blobs = _blob_files(home)
            if image_id in ids:
                d = reg.open_data(ME, image_id)
                assert hashlib.sha256(b"".join(d.iter())).hexdigest() == hashlib.sha256(data).hexdigest()
            else:
                reg.cleanup(deep=True)
                assert _blob_files(home) == [], blobs
        shutil.rmtree(home)
    record("registry:delete:events", total + 1)
