"""Crash harness for the file writers: modify, repair and convert are killed
(SIGKILL) at every write the native hook can stop at, at every Python-level
event (fsync, rename/replace, unlink), and at random times; then the target
is reopened.  It must hold the old or the new consistent state (or be absent
for a new file) -- never a torn one.

For the in-place writers (modify, repair) "consistent" is what the writer
promises (csrc/vk_write.c): the reader either opens the file with the old or
the new fields and the right data, or refuses it with a typed error and
`repair` brings it back to the old or the new state, after which `check` is
clean.  Data bytes must never change.
"""
from __future__ import annotations

import os
import random
import shutil
import uuid as _uuid

import pytest

import vhdkit
import vhdref
from helpers_crash import (count_events, leftovers, record, run_event_kill, run_native_hook, run_random_kill,
                           timed_run)
from vhdkit.errors import VhdkitError
from vhdkit.vhd import write as vw

# Reaches the native core: runs again in scripts/test's sanitizer pass.
pytestmark = pytest.mark.native

U1 = _uuid.UUID("11111111-2222-4333-8444-555555555555")
BS = 512 * 1024   # the writer's smallest block size


def _image(tmp_path, kind="dynamic", size=2 * BS, data_end=None):
    p = tmp_path / "orig.vhd"
    rng = random.Random(7)
    data = {s: rng.randbytes(512) for s in range(0, (data_end or size) // 512, 97)}
    vhdref.write_vhd(p, size, data, kind=kind, block_size=BS)
    with vhdkit.open(p) as s:
        content = s.read()
    return p, content


def _state(p):
    """(uuid, size, data) as the reader sees it, or None if it refuses."""
    try:
        with vhdkit.open(p) as s:
            return s.info.uuid, s.virtual_size, s.read()
    except VhdkitError:
        return None


def _expect(content: bytes, size: int) -> bytes:
    return content[:size] + bytes(max(0, size - len(content)))


def _assert_old_or_new(p, old, new, content, discard=False):
    st = _state(p)
    if st is None:
        vw.repair(p)
        st = _state(p)
        assert st is not None, "repair did not bring the image back"
    uid, size, data = st
    assert (uid, size) in (old, new), f"torn state {(uid, size)}; old {old}, new {new}"
    if discard and new[1] < old[1] and size == old[1]:
        # an interrupted shrink (with force: the tail is being discarded on
        # request) may have written the new footer into the discarded tail;
        # everything the new disk keeps must be intact
        assert data[:new[1]] == content[:new[1]]
    else:
        assert data == _expect(content, size)
    if vhdkit.check(p).ok is False:
        vw.repair(p)
    rep = vhdkit.check(p)
    assert rep.ok, rep


MODIFY_CASES = {
    "uuid": ("dynamic", dict(uuid=U1), lambda old: (U1, old[1])),
    "grow-relocate-bat": ("dynamic", dict(size=300 * BS), lambda old: (old[0], 300 * BS)),
    "grow-in-table": ("dynamic", dict(size=2 * BS + 4096), lambda old: (old[0], 2 * BS + 4096)),
    "shrink": ("dynamic", dict(size=BS, force=True), lambda old: (old[0], BS)),
    "uuid-and-grow": ("dynamic", dict(uuid=U1, size=200 * BS), lambda old: (U1, 200 * BS)),
    "fixed-grow": ("fixed", dict(size=3 * BS), lambda old: (old[0], 3 * BS)),
    "fixed-uuid": ("fixed", dict(uuid=U1), lambda old: (U1, old[1])),
    "fixed-shrink": ("fixed", dict(size=BS + 4096, force=True), lambda old: (old[0], BS + 4096)),
    # no force: the part cut off holds only zeros, and no state may show the
    # old disk with anything else there
    "fixed-shrink-zero-tail": ("fixed", dict(size=BS + 4096), lambda old: (old[0], BS + 4096)),
}


@pytest.mark.parametrize("label", sorted(MODIFY_CASES))
def test_modify_killed_after_every_write(tmp_path, label):
    kind, kw, new_of = MODIFY_CASES[label]
    orig, content = _image(tmp_path, kind, data_end=BS if label.endswith("zero-tail") else None)
    info = vhdkit.info(orig)
    old = (info.uuid, info.virtual_size)
    new = new_of(old)
    full = tmp_path / "full.vhd"
    shutil.copy(orig, full)
    total = vw.modify(full, **kw).writes
    assert _state(full)[:2] == new
    p = tmp_path / "t.vhd"
    args = ", ".join(f"{k}={v!r}" for k, v in kw.items()).replace("UUID(", "uuid.UUID(")
    code = f"import uuid\nfrom vhdkit.vhd import write as vw\nvw.modify({str(p)!r}, {args})"
    for n in range(total + 1):
        shutil.copy(orig, p)
        rc = run_native_hook(code, n)
        assert rc == (0 if n >= total else -9)
        _assert_old_or_new(p, old, new, content, discard=bool(kw.get("force")))
        assert leftovers(tmp_path, {"orig.vhd", "full.vhd", "t.vhd"}) == []
    record(f"modify:{label}", total + 1)


@pytest.mark.parametrize("damage", ["end-footer", "copy-at-0"])
def test_repair_killed_at_random_times(tmp_path, damage):
    """repair is one 512-byte write (+ truncate, fsync) with no test hook:
    kill it at random times; running it again always finishes the job."""
    orig, content = _image(tmp_path)
    info = vhdkit.info(orig)
    with open(orig, "r+b") as fh:
        fh.seek(-512 if damage == "end-footer" else 0, os.SEEK_END if damage == "end-footer" else os.SEEK_SET)
        fh.write(b"\0" * 64)
    p = tmp_path / "t.vhd"
    code = f"from vhdkit.vhd import write as vw\nvw.repair({str(p)!r})"
    shutil.copy(orig, p)
    full = timed_run(code)
    rng = random.Random(5)
    points = 6
    for _ in range(points):
        shutil.copy(orig, p)
        run_random_kill(code, rng.uniform(0, full))
        vw.repair(p)
        st = _state(p)
        assert st is not None and st[:2] == (info.uuid, info.virtual_size) and st[2] == content
        assert vhdkit.check(p).ok
    record(f"repair:{damage}", points)


def _convert_code(src, dst, **kw):
    extra = "".join(f", {k}={v!r}" for k, v in kw.items())
    return f"from vhdkit.vhd import write as vw\nvw.convert({str(src)!r}, {str(dst)!r}{extra})"


@pytest.fixture
def raw_src(tmp_path):
    src = tmp_path / "src.raw"
    rng = random.Random(3)
    with open(src, "wb") as fh:
        for i in range(24):
            fh.write(rng.randbytes(1 << 20) if i % 3 else bytes(1 << 20))
    return src


def _convert_state_ok(dst, src_bytes, old_bytes):
    if not dst.exists():
        return "absent"
    if old_bytes is not None and dst.read_bytes() == old_bytes:
        return "old"
    with vhdkit.open(dst) as s:
        assert s.read() == src_bytes, "torn convert output"
    assert vhdkit.check(dst).ok
    return "new"


@pytest.mark.parametrize("overwrite", [False, True])
def test_convert_killed_at_every_event(tmp_path, raw_src, overwrite):
    """Every fsync/replace/unlink of the atomic-output path, then a kill
    at each: the named output is absent (or the old file) or complete."""
    dst = tmp_path / "out.vhd"
    old = None
    if overwrite:
        vw.create(dst, 1 << 20)
        old = dst.read_bytes()
    code = _convert_code(raw_src, dst, type="dynamic")
    total = count_events(code, tmp_path / "events.log")
    assert total >= 2
    src_bytes = raw_src.read_bytes()
    seen = set()
    for n in range(1, total + 2):
        if overwrite:
            dst.write_bytes(old)
        elif dst.exists():
            dst.unlink()
        run_event_kill(code, n)
        seen.add(_convert_state_ok(dst, src_bytes, old))
    assert "new" in seen and seen & {"absent", "old"}
    record(f"convert:events:{'overwrite' if overwrite else 'new'}", total + 1)


@pytest.mark.parametrize("type_,points", [("dynamic", 5), ("fixed", 5),
                                          pytest.param("dynamic", 60, marks=pytest.mark.slow),
                                          pytest.param("fixed", 60, marks=pytest.mark.slow)])
def test_convert_killed_at_random_times(tmp_path, raw_src, type_, points):
    dst = tmp_path / "out.vhd"
    code = _convert_code(raw_src, dst, type=type_)
    full = timed_run(code)
    src_bytes = raw_src.read_bytes()
    rng = random.Random(11 + points)
    for i in range(points):
        if dst.exists():
            dst.unlink()
        run_random_kill(code, rng.uniform(0, full * 1.1))
        _convert_state_ok(dst, src_bytes, None)
    # temp files a killed convert leaves are named .out.vhd.*.part (never the target)
    for name in leftovers(tmp_path, {"src.raw", "out.vhd"}):
        assert name.startswith(".out.vhd.") and name.endswith(".part"), name
    record(f"convert:random:{type_}", points)
