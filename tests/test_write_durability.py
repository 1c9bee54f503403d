"""Output durability and temporary files of the writers: fsync unless
sync=False / --no-sync, and temporary files of killed writers removed by the
next write of the same name (they are flock'ed while written)."""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import vhdkit
from vhdkit import fileutil
from helpers_vhd import qemu_raw
from helpers_write import block_pattern_raw as _bpr, vhdkit_cli

# Reaches the native core: runs again in scripts/test's sanitizer pass.
pytestmark = pytest.mark.native

MiB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent


def block_pattern_raw(path, size):
    """Half the 1 MiB blocks random, half zero bytes."""
    return _bpr(path, size, MiB, [i % 2 == 0 for i in range(size // MiB)])


def peer_bytes(vhd, tmp_path) -> bytes:
    return qemu_raw(vhd, tmp_path / (Path(vhd).name + ".peer.raw")).read_bytes()


def _count_fsyncs(monkeypatch):
    calls = []
    real = os.fsync

    def spy(fd):
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return calls


@pytest.mark.parametrize("disk_type", ["fixed", "dynamic"])
def test_sync_and_no_sync_write_the_same_image(tmp_path, monkeypatch, disk_type):
    src = tmp_path / "src.raw"
    block_pattern_raw(src, 8 * MiB)
    calls = _count_fsyncs(monkeypatch)
    vhdkit.convert(src, tmp_path / "s.vhd", type=disk_type, uuid="11111111-2222-3333-4444-555555555555",
                   timestamp="2020-01-01T00:00:00")
    synced = len(calls)
    vhdkit.convert(src, tmp_path / "n.vhd", type=disk_type, uuid="11111111-2222-3333-4444-555555555555",
                   timestamp="2020-01-01T00:00:00", sync=False)
    assert synced >= 2                       # the file and its directory
    assert len(calls) == synced              # sync=False: no fsync at all
    if disk_type == "fixed":     # dynamic: parallel workers may place blocks in another order
        assert (tmp_path / "s.vhd").read_bytes() == (tmp_path / "n.vhd").read_bytes()
    assert peer_bytes(tmp_path / "n.vhd", tmp_path) == src.read_bytes()
    assert peer_bytes(tmp_path / "s.vhd", tmp_path) == src.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.vhd", "n.vhd.peer.raw", "s.vhd", "s.vhd.peer.raw",
                                                          "src.raw"]


def test_cli_no_sync_flag(tmp_path):
    src = tmp_path / "src.raw"
    block_pattern_raw(src, 4 * MiB)
    r = vhdkit_cli("convert", src, tmp_path / "o.vhd", "--type", "fixed", "--no-sync", "--json")
    assert r.returncode == 0, r.stderr
    assert peer_bytes(tmp_path / "o.vhd", tmp_path) == src.read_bytes()
    assert b"--no-sync" in vhdkit_cli("convert", "--help").stdout


def test_writeback_during_a_long_convert(tmp_path, monkeypatch):
    """The early writeback (fdatasync while the converter runs) is issued and
    changes nothing in the result."""
    from vhdkit.vhd import write as w
    monkeypatch.setattr(w._Output, "WRITEBACK_STEP", 1 * MiB)
    seen = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (seen.append(fd), real(fd)))
    src = tmp_path / "src.raw"
    block_pattern_raw(src, 64 * MiB)
    # A slow consumer of progress makes sure the loop runs while data flows.
    r = vhdkit.convert(src, tmp_path / "o.vhd", type="dynamic", progress=lambda d, t: time.sleep(0.01))
    assert r.virtual_size == 64 * MiB
    assert peer_bytes(tmp_path / "o.vhd", tmp_path) == src.read_bytes()


def test_dead_writers_temp_files_are_removed_live_ones_kept(tmp_path):
    dead = tmp_path / ".o.vhd.deadbeef.part"
    dead.write_bytes(b"half")                # nobody holds its lock
    live = tmp_path / ".o.vhd.live1234.part"
    live.write_bytes(b"busy")
    other = tmp_path / ".other.vhd.x.part"  # another target's temp: not ours to judge
    other.write_bytes(b"x")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)       # a live writer
        vhdkit.create(tmp_path / "o.vhd", 4 * MiB)
        assert not dead.exists()
        assert live.exists() and other.exists()
    finally:
        os.close(fd)
    vhdkit.create(tmp_path / "o.vhd", 4 * MiB, overwrite=True)
    assert not live.exists() and other.exists()


def test_symlinked_temp_name_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / ".o.vhd.evil.part").symlink_to(victim)
    vhdkit.create(tmp_path / "o.vhd", 1 * MiB)
    assert victim.read_bytes() == b"keep"


def test_convert_killed_mid_write_leaves_a_temp_the_next_convert_removes(tmp_path):
    """A real kill -9 of `vhdkit convert` reading a pipe: its .part file stays
    (nothing can clean up after SIGKILL); the next convert of the same output
    removes it, and the output is correct."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "o.vhd"
    p = subprocess.Popen([sys.executable, "-m", "vhdkit", "convert", "-", str(out), "--type", "fixed"],
                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                         cwd=ROOT)
    try:
        p.stdin.write(os.urandom(8 * MiB))
        p.stdin.flush()
        deadline = time.monotonic() + 30
        parts = []
        while time.monotonic() < deadline and not parts:
            parts = list(tmp_path.glob(".o.vhd.*.part"))
            time.sleep(0.05)
        assert parts, "the convert never created its temporary file"
        # Still running and holding the lock: another convert must not take it.
        fileutil.remove_dead_temps(tmp_path, "o.vhd", ".part")
        assert all(x.exists() for x in parts)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert list(tmp_path.glob(".o.vhd.*.part")) == parts and not out.exists()
    src = tmp_path / "src.raw"
    block_pattern_raw(src, 4 * MiB)
    vhdkit.convert(src, out, type="fixed")
    assert list(tmp_path.glob(".*.part")) == []
    assert peer_bytes(out, tmp_path) == src.read_bytes()


def test_atomic_file_cleans_dead_temps(tmp_path):
    stale = tmp_path / ".a.ova.1234.tmp"
    stale.write_bytes(b"x")
    with fileutil.atomic_file(tmp_path / "a.ova") as f:
        f.write(b"data")
    assert not stale.exists()
    assert (tmp_path / "a.ova").read_bytes() == b"data"
