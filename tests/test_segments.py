"""Segments: split into NAME-00001..., join verifying everything; on both
backends (the directory store and a real Swift)."""
from __future__ import annotations

import hashlib
import io
import json
import os

import pytest

import vhdkit.pack.segments as seg
from vhdkit.errors import IntegrityError, InvalidInputError, NotFoundError, ResourceLimitError
from vhdkit.store import ObjectStore
from helpers_packaging import run_cli

# Reaches the native core: runs again in scripts/test's sanitizer pass.
pytestmark = pytest.mark.native


SEG = 1000


@pytest.fixture
def st(store_factory) -> ObjectStore:
    return store_factory("acct")


def _split(st, data: bytes, name="img.vhd", size=SEG, **kw):
    return seg.split(st, "c", name, io.BytesIO(data), segment_size=size, **kw)


def _join(st, name="img.vhd") -> bytes:
    out = io.BytesIO()
    seg.join(st, "c", name, out)
    return out.getvalue()


@pytest.mark.parametrize("n,count", [(0, 0), (1, 1), (SEG - 1, 1), (SEG, 1), (SEG + 1, 2), (3 * SEG, 3)])
def test_boundaries_round_trip(st, n, count):
    data = os.urandom(n)
    man = _split(st, data)
    assert len(man.segments) == count
    assert [s.size for s in man.segments] == [min(SEG, n - i * SEG) for i in range(count)]
    assert _join(st) == data


def test_layout_matches_swift_dlo(st):
    data = os.urandom(2500)
    man = _split(st, data)
    names = [o.name for o in st.list("c")]
    assert names == ["img.vhd", "img.vhd-00001", "img.vhd-00002", "img.vhd-00003", "img.vhd.segments.json"]
    manifest = st.head("c", "img.vhd")
    assert manifest.size == 0 and manifest.metadata["x-object-manifest"] == "c/img.vhd-"
    side = json.loads(st.get_bytes("c", "img.vhd.segments.json"))
    md5s = [hashlib.md5(data[i:i + SEG]).hexdigest() for i in range(0, 2500, SEG)]
    assert [s["md5"] for s in side["segments"]] == md5s
    assert side["etag"] == hashlib.md5("".join(md5s).encode()).hexdigest() == man.etag
    assert side["sha256"] == hashlib.sha256(data).hexdigest() and side["size"] == 2500


def test_missing_segment_named(st):
    _split(st, os.urandom(2500))
    st.delete("c", "img.vhd-00002")
    with pytest.raises(IntegrityError, match="img.vhd-00002 is missing"):
        _join(st)


def test_short_segment_named(st):
    _split(st, os.urandom(2500))
    st.put_bytes("c", "img.vhd-00002", os.urandom(999))
    with pytest.raises(IntegrityError, match="img.vhd-00002 is short"):
        _join(st)


def test_altered_segment_named(st):
    data = bytearray(os.urandom(2500))
    _split(st, bytes(data))
    data[1500] ^= 1
    st.put_bytes("c", "img.vhd-00002", bytes(data[1000:2000]))
    with pytest.raises(IntegrityError, match="img.vhd-00002 is altered"):
        _join(st)


def test_reordered_segments_detected(st):
    data = os.urandom(3000)
    _split(st, data)
    st.put_bytes("c", "img.vhd-00001", data[1000:2000])
    st.put_bytes("c", "img.vhd-00002", data[:1000])
    with pytest.raises(IntegrityError, match="img.vhd-00001"):
        _join(st)


def test_extra_segment_named(st):
    _split(st, os.urandom(2500))
    st.put_bytes("c", "img.vhd-00004", b"more")
    with pytest.raises(IntegrityError, match="img.vhd-00004 is extra"):
        _join(st)


def test_failed_join_to_path_leaves_nothing(st, tmp_path):
    _split(st, os.urandom(2500))
    st.put_bytes("c", "img.vhd-00003", os.urandom(500))
    out = tmp_path / "out" / "img.vhd"
    out.parent.mkdir()
    with pytest.raises(IntegrityError):
        seg.join(st, "c", "img.vhd", out)
    assert list(out.parent.iterdir()) == []


def test_join_to_path(st, tmp_path):
    data = os.urandom(2500)
    _split(st, data)
    seg.join(st, "c", "img.vhd", tmp_path / "o")
    assert (tmp_path / "o").read_bytes() == data


def _tamper(st, fn):
    d = json.loads(st.get_bytes("c", "img.vhd.segments.json"))
    fn(d)
    st.put_bytes("c", "img.vhd.segments.json", json.dumps(d).encode())


@pytest.mark.parametrize("change", [
    lambda d: d["segments"][1].update(name="../other/img.vhd-00002"),  # outside the container
    lambda d: d["segments"][1].update(name="other/img.vhd-00002"),
    lambda d: d["segments"][1].update(name="img.vhd-00001"),  # a loop: the same segment twice
    lambda d: d["segments"].reverse(),  # reordered
    lambda d: d["segments"][0].update(size=-5),
    lambda d: d["segments"][0].update(size=1 << 60),
    lambda d: d.update(size=-1),
    lambda d: d.update(container="elsewhere"),
    lambda d: d.update(etag="0" * 32),
    lambda d: d["segments"][0].update(md5="zz"),
    lambda d: d.update(digits=50),
    lambda d: d.update(segments="img.vhd-00001"),
])
def test_tampered_sidecar_refused(st, change):
    _split(st, os.urandom(2500))
    _tamper(st, change)
    with pytest.raises(IntegrityError):
        _join(st)


def test_sidecar_not_json_or_missing(st):
    _split(st, os.urandom(100))
    st.put_bytes("c", "img.vhd.segments.json", b"{nope")
    with pytest.raises(IntegrityError):
        _join(st)
    st.delete("c", "img.vhd.segments.json")
    with pytest.raises(NotFoundError):
        _join(st)


def test_manifest_object_must_point_at_prefix(st):
    _split(st, os.urandom(100))
    st.put_bytes("c", "img.vhd", b"", metadata={"x-object-manifest": "c/other-"})
    with pytest.raises(IntegrityError, match="not a large-object manifest"):
        _join(st)


def test_whole_stream_hash_checked(st):
    data = os.urandom(2000)
    _split(st, data)
    _tamper(st, lambda d: d.update(sha256="0" * 64))
    with pytest.raises(IntegrityError, match="sha256"):
        _join(st)


def test_too_many_segments_refused_up_front(st):
    with pytest.raises(ResourceLimitError):
        seg.split(st, "c", "big", io.BytesIO(b""), segment_size=1, total=100_000)
    assert not st.exists("c", "big-00001")


def test_too_many_segments_refused_while_streaming(st):
    with pytest.raises(ResourceLimitError):
        _split(st, b"x" * 10, name="s", size=1, digits=1)  # at most 9 one-digit segments
    assert st.list("c", "s") == []  # what was written is removed


def test_wider_padding(st):
    man = _split(st, b"abc", size=1, digits=7)
    assert [s.name for s in man.segments] == ["img.vhd-0000001", "img.vhd-0000002", "img.vhd-0000003"]
    assert _join(st) == b"abc"


def test_resplit_shorter_removes_stale_segments(st):
    _split(st, os.urandom(5000))
    data = os.urandom(1500)
    _split(st, data)
    assert [o.name for o in st.list("c", "img.vhd-")] == ["img.vhd-00001", "img.vhd-00002"]
    assert _join(st) == data


def test_bad_arguments(st):
    with pytest.raises(InvalidInputError):
        _split(st, b"x", size=0)
    with pytest.raises(InvalidInputError):
        _split(st, b"x", name="../x")


def test_cli_split_and_join(tmp_path, backend_env):
    import uuid

    env = backend_env
    a = ("--account", "cli" + uuid.uuid4().hex[:10])
    f = tmp_path / "disk.vhd"
    data = os.urandom(5000)
    f.write_bytes(data)
    p = run_cli("segments", "split", str(f), "--name", "disk.vhd", "--segment-size", "2K",
                "--container", "imgs", "--json", *a, env=env, check=True)
    assert len(json.loads(p.stdout)["segments"]) == 3
    assert run_cli("segments", "join", "imgs", "disk.vhd", "-o", "-", *a, env=env, check=True).stdout == data
    run_cli("segments", "join", "imgs", "disk.vhd", "-o", str(tmp_path / "back"), *a, env=env, check=True)
    assert (tmp_path / "back").read_bytes() == data
    run_cli("object", "delete", "imgs", "disk.vhd-00003", *a, env=env, check=True)
    bad = run_cli("segments", "join", "imgs", "disk.vhd", "-o", str(tmp_path / "again"), *a, env=env)
    assert bad.returncode == 1 and b"disk.vhd-00003 is missing" in bad.stderr
    assert not (tmp_path / "again").exists()
