"""Parallel gzip / zstd streams, checked against gzip, pigz, zstd and Python's gzip."""
from __future__ import annotations

import gzip
import io
import json
import subprocess
import zlib

import pytest
import zstandard

import vhdkit.pack.streams as streams
from vhdkit.errors import ArchiveError, InvalidInputError
from conftest import require_tool
from helpers_packaging import run_cli, vhd_like

# Reaches the native core: runs again in scripts/test's sanitizer pass.
pytestmark = pytest.mark.native

DATA = vhd_like(5 << 20)  # several ISA-L blocks, so the parallel path is exercised


def _gz(data: bytes, **kw) -> bytes:
    out = io.BytesIO()
    streams.compress(io.BytesIO(data), out, **kw)
    return out.getvalue()


def _members(blob: bytes) -> int:
    n = 0
    while blob:
        d = zlib.decompressobj(31)
        d.decompress(blob)
        assert d.eof
        blob = d.unused_data
        n += 1
    return n


@pytest.fixture(scope="module")
def gz_blob() -> bytes:
    return _gz(DATA, threads=2)


def test_gzip_output_is_one_member_python_gzip_reads(gz_blob):
    assert _members(gz_blob) == 1
    assert gzip.decompress(gz_blob) == DATA


@pytest.mark.peer
def test_gzip_output_accepted_by_gzip_and_pigz(tmp_path, gz_blob):
    f = tmp_path / "x.gz"
    f.write_bytes(gz_blob)
    subprocess.run([require_tool("gzip"), "-t", str(f)], check=True)
    assert subprocess.run([require_tool("gzip"), "-dc", str(f)], capture_output=True, check=True).stdout == DATA
    assert subprocess.run([require_tool("pigz"), "-dc", str(f)], capture_output=True, check=True).stdout == DATA


def test_gzip_compresses_vhd_like_data(gz_blob):
    assert len(gz_blob) < len(DATA) * 0.8


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_give_valid_single_member(threads):
    blob = _gz(DATA[: 3 << 20], threads=threads)
    assert _members(blob) == 1 and gzip.decompress(blob) == DATA[: 3 << 20]


@pytest.mark.parametrize("level", [0, 1, 5, 9])
def test_levels_round_trip(level):
    assert gzip.decompress(_gz(DATA[:300000], level=level)) == DATA[:300000]


def test_bad_levels_refused():
    with pytest.raises(InvalidInputError):
        _gz(b"x", level=10)
    with pytest.raises(InvalidInputError):
        _gz(b"x", format="zstd", level=0)
    with pytest.raises(InvalidInputError):
        _gz(b"x", format="lzma")


def test_empty_input_compresses_to_valid_gzip():
    blob = _gz(b"")
    assert gzip.decompress(blob) == b""


def _dec(blob: bytes, **kw) -> bytes:
    out = io.BytesIO()
    streams.decompress(io.BytesIO(blob), out, **kw)
    return out.getvalue()


def test_round_trip(gz_blob):
    assert _dec(gz_blob) == DATA


@pytest.mark.peer
def test_decompresses_pigz_and_gzip_output(tmp_path):
    f = tmp_path / "d"
    f.write_bytes(DATA)
    for tool in ("gzip", "pigz"):
        blob = subprocess.run([require_tool(tool), "-c", "-6", str(f)], capture_output=True, check=True).stdout
        assert _dec(blob) == DATA


def test_multi_member_input():
    blob = gzip.compress(b"first ") + gzip.compress(b"") + gzip.compress(b"second")
    assert _dec(blob) == b"first second"


def test_zero_padding_after_last_member_is_tolerated():
    assert _dec(gzip.compress(b"abc") + bytes(1000)) == b"abc"


@pytest.mark.parametrize("cut", [1, 4, 8, 100])
def test_truncated_gzip_refused(gz_blob, cut):
    with pytest.raises(ArchiveError, match="truncated"):
        _dec(gz_blob[:-cut])


def test_bad_crc_refused():
    blob = bytearray(gzip.compress(b"hello world" * 100))
    blob[-8] ^= 0x01  # CRC32 field of the trailer
    with pytest.raises(ArchiveError, match="corrupt"):
        _dec(bytes(blob))


def test_bad_length_trailer_refused():
    blob = bytearray(gzip.compress(b"hello world" * 100))
    blob[-4] ^= 0x01  # ISIZE field
    with pytest.raises(ArchiveError):
        _dec(bytes(blob))


def test_corrupt_deflate_data_refused():
    blob = bytearray(gzip.compress(bytes(range(256)) * 400))
    blob[20:40] = b"\xff" * 20
    with pytest.raises(ArchiveError):
        _dec(bytes(blob))


@pytest.mark.parametrize("blob", [b"", b"\x1f", b"plain text", b"PK\x03\x04zip"])
def test_not_compressed_refused(blob):
    with pytest.raises(ArchiveError):
        _dec(blob)


def test_trailing_garbage_refused():
    with pytest.raises(ArchiveError):
        _dec(gzip.compress(b"abc") + b"garbage!")


def test_format_mismatch_refused():
    with pytest.raises(ArchiveError):
        _dec(gzip.compress(b"abc"), format="zstd")


def test_gzip_bomb_bounded_output():
    bomb = _gz(bytes(64 << 20))  # 64 MiB of zeros in ~100 KiB
    assert len(bomb) < 1 << 20
    with pytest.raises(ArchiveError, match="exceeds the limit"):
        _dec(bomb, max_output=1 << 20)


def test_output_exactly_at_limit_is_fine():
    assert _dec(gzip.compress(b"a" * 1000), max_output=1000) == b"a" * 1000


def test_open_decompressor_streams_in_chunks(gz_blob):
    with streams.open_decompressor(io.BytesIO(gz_blob)) as r:
        first = r.read(10)
        rest = r.read()
    assert first + rest == DATA


# ------------------------------------------------------------------ zstd
def test_zstd_round_trip_and_peer():
    out = io.BytesIO()
    st = streams.compress(io.BytesIO(DATA), out, format="zstd", threads=2)
    assert st.bytes_in == len(DATA) and st.bytes_out == len(out.getvalue())
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(out.getvalue())).read() == DATA
    assert _dec(out.getvalue()) == DATA


@pytest.mark.peer
def test_zstd_cli_reads_ours(tmp_path):
    out = io.BytesIO()
    streams.compress(io.BytesIO(DATA), out, format="zstd")
    f = tmp_path / "x.zst"
    f.write_bytes(out.getvalue())
    got = subprocess.run([require_tool("zstd"), "-dc", str(f)], capture_output=True, check=True).stdout
    assert got == DATA


def test_zstd_multi_frame():
    c = zstandard.ZstdCompressor()
    assert _dec(c.compress(b"one ") + c.compress(b"two")) == b"one two"


@pytest.mark.parametrize("cut", [1, 3, 50])
def test_zstd_truncated_refused(cut):
    blob = zstandard.ZstdCompressor().compress(DATA[:200000])
    with pytest.raises(ArchiveError, match="truncated"):
        _dec(blob[:-cut])


def test_zstd_bomb_bounded():
    blob = zstandard.ZstdCompressor().compress(bytes(32 << 20))
    with pytest.raises(ArchiveError, match="exceeds"):
        _dec(blob, max_output=1 << 20)


# ------------------------------------------------------------------- CLI
def test_cli_compress_file_then_decompress(tmp_path):
    src = tmp_path / "disk.vhd"
    src.write_bytes(DATA[:1 << 20])
    p = run_cli("compress", str(src), "--json", check=True)
    summary = json.loads(p.stdout)
    assert summary["bytes_in"] == 1 << 20
    gz = tmp_path / "disk.vhd.gz"
    subprocess.run([require_tool("gzip"), "-t", str(gz)], check=True)
    assert summary["bytes_out"] == gz.stat().st_size
    src.unlink()
    run_cli("decompress", str(gz), check=True)
    assert src.read_bytes() == DATA[:1 << 20]


def test_cli_pipes_stdin_to_stdout():
    p = run_cli("compress", "--format", "zstd", "--level", "5", input=DATA[:100000], check=True)
    back = run_cli("decompress", input=p.stdout, check=True)
    assert back.stdout == DATA[:100000]


def test_cli_decompress_refusal_exit_1(tmp_path):
    bad = tmp_path / "x.gz"
    bad.write_bytes(gzip.compress(b"abc" * 1000)[:-5])
    p = run_cli("decompress", str(bad), "-o", str(tmp_path / "x"))
    assert p.returncode == 1 and b"truncated" in p.stderr
    assert not (tmp_path / "x").exists()
    assert [f.name for f in tmp_path.iterdir()] == ["x.gz"]  # no temp left behind


def test_cli_max_size(tmp_path):
    p = run_cli("decompress", "--max-size", "1K", input=gzip.compress(bytes(5000)))
    assert p.returncode == 1 and b"exceeds" in p.stderr
