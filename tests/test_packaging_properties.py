"""Property-based round trips and refusals for streams and segments."""
from __future__ import annotations

import gzip
import io
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

import vhdkit.pack.segments as seg
import vhdkit.pack.streams as streams
from vhdkit.errors import ArchiveError, IntegrityError
from vhdkit.store import LocalStore
import pytest

# Reaches the native core: runs again in scripts/test's sanitizer pass.
pytestmark = pytest.mark.native

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _round(data: bytes, fmt: str, **kw) -> bytes:
    c = io.BytesIO()
    streams.compress(io.BytesIO(data), c, format=fmt, **kw)
    out = io.BytesIO()
    streams.decompress(io.BytesIO(c.getvalue()), out)
    return out.getvalue()


@SETTINGS
@given(st.binary(max_size=200_000), st.sampled_from(["gzip", "zstd"]), st.integers(1, 3))
def test_compress_decompress_round_trip(data, fmt, threads):
    assert _round(data, fmt, threads=threads) == data


@SETTINGS
@given(st.binary(min_size=1, max_size=50_000), st.integers(1, 64))
def test_our_gzip_is_plain_gzip(data, threads):
    c = io.BytesIO()
    streams.compress(io.BytesIO(data), c, threads=threads)
    assert gzip.decompress(c.getvalue()) == data


@SETTINGS
@given(st.binary(max_size=20_000), st.data())
def test_any_truncation_is_an_archive_error(data, draw):
    c = io.BytesIO()
    streams.compress(io.BytesIO(data), c)
    blob = c.getvalue()
    cut = draw.draw(st.integers(0, len(blob) - 1))
    try:
        streams.decompress(io.BytesIO(blob[:cut]), io.BytesIO())
    except ArchiveError:
        return
    raise AssertionError(f"truncation at {cut}/{len(blob)} was accepted")


@SETTINGS
@given(st.binary(max_size=5000), st.data())
def test_any_byte_flip_never_crashes(data, draw):
    blob = bytearray(gzip.compress(data))
    i = draw.draw(st.integers(0, len(blob) - 1))
    blob[i] ^= draw.draw(st.integers(1, 255))
    out = io.BytesIO()
    try:
        streams.decompress(io.BytesIO(bytes(blob)), out)
    except ArchiveError:
        return
    # accepted only if the flip hit a field gzip does not check (mtime, OS, XFL)
    assert out.getvalue() == data


@SETTINGS
@given(st.binary(max_size=10_000), st.integers(1, 3000))
def test_split_join_round_trip(data, size):
    with tempfile.TemporaryDirectory() as d:
        store = LocalStore(Path(d), "a")
        man = seg.split(store, "c", "obj", io.BytesIO(data), segment_size=size)
        assert len(man.segments) == -(-len(data) // size)
        assert all(s.size == size for s in man.segments[:-1])
        out = io.BytesIO()
        seg.join(store, "c", "obj", out)
        assert out.getvalue() == data


@SETTINGS
@given(st.binary(min_size=1, max_size=5000), st.integers(1, 1000), st.data())
def test_any_altered_segment_is_named(data, size, draw):
    with tempfile.TemporaryDirectory() as d:
        store = LocalStore(Path(d), "a")
        man = seg.split(store, "c", "obj", io.BytesIO(data), segment_size=size)
        victim = draw.draw(st.sampled_from(man.segments))
        body = bytearray(store.get_bytes("c", victim.name))
        action = draw.draw(st.sampled_from(["flip", "cut", "grow", "drop"]))
        if action == "flip":
            i = draw.draw(st.integers(0, len(body) - 1))
            body[i] ^= 0xFF
        elif action == "cut":
            body = body[:-1]
        elif action == "grow":
            body += b"!"
        if action == "drop":
            store.delete("c", victim.name)
        else:
            store.put_bytes("c", victim.name, bytes(body))
        try:
            seg.join(store, "c", "obj", io.BytesIO())
        except IntegrityError as e:
            assert victim.name in str(e)
            return
        raise AssertionError(f"{action} of {victim.name} was accepted")
