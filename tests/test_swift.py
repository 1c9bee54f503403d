"""vhdkit on a real OpenStack Swift (Debian's packages, all-in-one on loopback).

What Swift itself does is checked with python-swiftclient's own `swift`
command, as a customer downloading an export would run it."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
from pathlib import Path

import pytest

from conftest import require_tool
from helpers_swift import swift_cli
from shared import put_file
from vhdkit.pack import segments
from vhdkit.errors import IntegrityError, NotFoundError
from vhdkit.tasks.pipeline import PipelineConfig, Worker
from vhdkit.registry import Caller, Registry
from vhdkit.store import open_configured_store
from vhdkit.store.swift import SwiftStore

MiB = 1 << 20


@pytest.fixture
def st(swift_store_env, request):
    acct = "t" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    s = open_configured_store(acct)
    assert isinstance(s, SwiftStore)
    s.create_container("exports")
    return s


def test_configuration_selects_swift_or_the_directory(swift_env, tmp_path):
    assert isinstance(open_configured_store("a", tmp_path, env=swift_env), SwiftStore)
    assert not isinstance(open_configured_store("a", tmp_path, env={}), SwiftStore)


def test_dlo_export_downloads_whole_with_the_swift_client(st, swift_env, tmp_path):
    data = os.urandom(3 * MiB + 123)
    man = segments.split(st, "exports", "img.vhd", io.BytesIO(data), segment_size=1 * MiB)
    assert [s.name for s in man.segments] == [f"img.vhd-{i:05d}" for i in range(1, 5)]
    assert st.head("exports", "img.vhd").size == 0  # the manifest object itself
    r = swift_cli(swift_env, st.account, "download", "exports", "img.vhd", "-o", str(tmp_path / "dl"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "dl").read_bytes() == data


def test_deleted_segment_swift_is_silently_short_ours_fails_naming_it(st, swift_env, tmp_path):
    data = os.urandom(5 * MiB)
    segments.split(st, "exports", "img.vhd", io.BytesIO(data), segment_size=1 * MiB)
    st.delete("exports", "img.vhd-00003")
    r = swift_cli(swift_env, st.account, "download", "exports", "img.vhd", "-o", str(tmp_path / "dl"))
    assert r.returncode == 0, r.stderr  # Swift: 200 and a shorter body, no error anywhere
    assert (tmp_path / "dl").stat().st_size == 4 * MiB
    with pytest.raises(IntegrityError, match="img.vhd-00003 is missing"):
        segments.join(st, "exports", "img.vhd", tmp_path / "ours")
    assert not (tmp_path / "ours").exists()


def test_altered_segment_swift_serves_it_ours_fails_naming_it(st, swift_env, tmp_path):
    data = os.urandom(3 * MiB)
    segments.split(st, "exports", "img.vhd", io.BytesIO(data), segment_size=1 * MiB)
    st.put("exports", "img.vhd-00002", io.BytesIO(os.urandom(1 * MiB)))
    r = swift_cli(swift_env, st.account, "download", "exports", "img.vhd", "-o", str(tmp_path / "dl"))
    assert r.returncode == 0 and (tmp_path / "dl").read_bytes() != data
    with pytest.raises(IntegrityError, match="img.vhd-00002"):
        segments.join(st, "exports", "img.vhd", tmp_path / "ours")


def test_object_round_trip_metadata_listing_and_errors(st):
    st.put("exports", "a/b c", io.BytesIO(b"x" * 1000), metadata={"k": "v"}, content_type="text/plain")
    info = st.head("exports", "a/b c")
    assert (info.size, info.etag, info.metadata, info.content_type) == \
        (1000, hashlib.md5(b"x" * 1000).hexdigest(), {"k": "v"}, "text/plain")
    with st.get("exports", "a/b c") as r:
        assert r.read() == b"x" * 1000
    assert [o.name for o in st.list("exports", "a/")] == ["a/b c"]
    st.delete("exports", "a/b c")
    with pytest.raises(NotFoundError):
        st.head("exports", "a/b c")
    with pytest.raises(NotFoundError):
        st.get("nocontainer", "x")
    with pytest.raises(IntegrityError):
        st.put("exports", "y", io.BytesIO(b"abc"), etag="0" * 32)
    assert not st.exists("exports", "y")


def test_import_share_export_story_on_swift(swift_store_env, sample, tmp_path):
    home = tmp_path / "home"
    reg, cfg = Registry(home), PipelineConfig(home=home, segment_size=8 * MiB)
    a = Caller.parse("story-a", "cloudImages:admin")
    b = Caller.parse("story-b", "cloudImages:admin")
    st = cfg.store(a.account)
    assert isinstance(st, SwiftStore)
    put_file(st, "images", "win.vhd", sample("windows-dynamic-512M"), also=["exports"])
    reg.create_task(a, "import", {"import_from": "images/win.vhd", "image_properties": {"name": "w"}})
    t = Worker(reg, cfg).run_once()
    assert t.status == "success", t.message
    image_id = t.result["image_id"]
    reg.add_member(a, image_id, b.account)
    reg.update_member(b, image_id, b.account, "accepted")
    assert image_id in [i.id for i in reg.list_images(b).images]
    reg.create_task(a, "export", {"image_uuid": image_id, "receiving_swift_container": "exports"})
    t = Worker(reg, cfg).run_once()
    assert t.status == "success", t.message
    assert t.result["segments"] >= 2
    # a plain `swift download` of the export is the coalesced VHD, byte for byte
    r = swift_cli(swift_store_env, a.account, "download", "exports", f"{image_id}.vhd", "-o", str(tmp_path / "dl.vhd"))
    assert r.returncode == 0, r.stderr
    segments.join(st, "exports", f"{image_id}.vhd", tmp_path / "ours.vhd")
    assert (tmp_path / "dl.vhd").read_bytes() == (tmp_path / "ours.vhd").read_bytes()
    raw = tmp_path / "raw"
    subprocess.run([require_tool("qemu-img"), "convert", "-f", "vpc", "-O", "raw", str(tmp_path / "dl.vhd"),
                    str(raw)], check=True)
    h = hashlib.sha256()
    with open(raw, "rb") as f:
        for chunk in iter(lambda: f.read(MiB), b""):
            h.update(chunk)
    assert h.hexdigest() == "c461afded0b54cc1cfb5441e08f4d7f9d699d2eff7d9526d1cf6ad227da26683"


def test_failed_upload_leaves_no_segments(st, tmp_path):
    class Broken(io.RawIOBase):
        def __init__(self):
            self.n = 0

        def readable(self):
            return True

        def readinto(self, b):
            if self.n >= 2 * MiB + 10:
                raise OSError("disk went away")
            k = min(len(b), 256 * 1024)
            b[:k] = b"z" * k
            self.n += k
            return k

    with pytest.raises(OSError):
        segments.split(st, "exports", "img.vhd", Broken(), segment_size=1 * MiB)
    assert st.list("exports") == []
