"""Compressed streams: gzip (parallel, via python-isal) and zstd (via zstandard).

Compression writes **one** RFC 1952 gzip member using every core:
``isal.igzip_threaded`` splits the input into blocks, compresses each block
primed with the previous 32 KiB as its dictionary (the pigz scheme) and
combines the CRCs, so ``gzip -d``, ``pigz -d`` and Python's :mod:`gzip` read
the output as an ordinary single-member file.  Memory is bounded by
``threads × block size`` (about 1 MiB per block).

Decompression accepts any valid gzip stream, multi-member included (and zstd
frames), in bounded memory.  A truncated stream, a bad CRC/length trailer,
trailing garbage or more output than ``max_output`` raises
:class:`~vhdkit.errors.ArchiveError`.

Gzip levels follow gzip's 0–9 scale and are mapped onto ISA-L's four levels
(0 → 0, 1–3 → 1, 4–6 → 2, 7–9 → 3).  ISA-L level 0 is faster but clearly
larger; the default (1) matches ``pigz -1`` in size.

Public API::

    open_compressor(fileobj, format="gzip", level=None, threads=None) -> writable file
    open_decompressor(fileobj, format="auto", max_output=None) -> readable file
    compress(src, dst, ...) -> StreamStats
    decompress(src, dst, ...) -> StreamStats
    detect_format(head: bytes) -> "gzip" | "zstd" | None
"""
from __future__ import annotations

import io
import os
import zlib
from dataclasses import asdict, dataclass
from typing import BinaryIO, Callable, Optional

from ..errors import ArchiveError, InvalidInputError, OutputLimitError, VhdkitError

__all__ = [
    "FORMATS",
    "CHUNK",
    "StreamStats",
    "detect_format",
    "open_compressor",
    "open_decompressor",
    "compress",
    "decompress",
    "copy_stream",
]

FORMATS = ("gzip", "zstd")
CHUNK = 1 << 20  # read/write granularity everywhere (bounded memory)
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

ProgressFn = Callable[[int, Optional[int]], None]


@dataclass
class StreamStats:
    """What a compress/decompress pass moved."""

    format: str
    bytes_in: int
    bytes_out: int

    @property
    def ratio(self) -> float:
        big, small = (self.bytes_in, self.bytes_out)
        return (small / big) if big else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ratio"] = round(self.ratio, 4)
        return d


def _threads(threads: Optional[int]) -> int:
    if threads is None or threads <= 0:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    return threads


def _isal_level(level: Optional[int]) -> int:
    if level is None:
        return 1
    if not 0 <= level <= 9:
        raise InvalidInputError(f"gzip level must be 0..9, not {level}")
    return 0 if level == 0 else (level + 2) // 3


def detect_format(head: bytes) -> Optional[str]:
    """``"gzip"``/``"zstd"`` from the first bytes of a stream, else None."""
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    if head[:4] == ZSTD_MAGIC:
        return "zstd"
    return None


# --------------------------------------------------------------- compression
class _ZstdWriter(io.RawIOBase):
    """Writable wrapper: closing finishes the zstd frame but not ``fileobj``."""

    def __init__(self, fileobj: BinaryIO, level: int, threads: int):
        import zstandard

        self._cctx = zstandard.ZstdCompressor(level=level, threads=threads, write_content_size=False)
        self._w = self._cctx.stream_writer(fileobj, closefd=False)

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        return self._w.write(b)

    def close(self) -> None:
        if not self.closed:
            try:
                self._w.close()  # writes the frame epilogue, leaves fileobj open
            finally:
                super().close()


def open_compressor(fileobj: BinaryIO, format: str = "gzip", *, level: Optional[int] = None,
                    threads: Optional[int] = None) -> BinaryIO:
    """A writable binary file whose bytes arrive compressed in ``fileobj``.

    Closing it finishes the stream (gzip trailer / zstd epilogue) and flushes
    ``fileobj`` but does not close it.
    """
    n = _threads(threads)
    if format == "gzip":
        from isal import igzip_threaded

        # igzip_threaded closes what it is given: shield the caller's file.
        raw = _gzip_writer_class()(_Unclosable(fileobj), "wb", level=_isal_level(level), threads=n)
        return igzip_threaded.FlushableBufferedWriter(raw, buffer_size=CHUNK)  # type: ignore[return-value]
    if format == "zstd":
        lvl = 3 if level is None else level
        if not 1 <= lvl <= 22:
            raise InvalidInputError(f"zstd level must be 1..22, not {lvl}")
        return _ZstdWriter(fileobj, lvl, n)  # type: ignore[return-value]
    raise InvalidInputError(f"unknown compression format {format!r} (use gzip or zstd)")


_GZIP_WRITER = None


def _gzip_writer_class():
    """isal's parallel gzip writer, with every call that hands blocks to its
    threads (or waits for them) made a :func:`~vhdkit.interrupts.deferred`
    section: a SIGINT/SIGTERM raised half-way through one (between taking a
    block number and queueing the block, say) would leave its writer thread
    waiting for a block that never comes, and the closing flush would wait
    forever.  Each section lasts at most the compression of a few blocks."""
    global _GZIP_WRITER
    if _GZIP_WRITER is None:
        from isal import igzip_threaded

        from ..interrupts import deferred

        class _GzipWriter(igzip_threaded._ThreadedGzipWriter):
            def write(self, b) -> int:
                with deferred():
                    return super().write(b)

            def flush(self) -> None:
                with deferred():
                    super().flush()

            def close(self) -> None:
                with deferred():
                    super().close()

            def abort(self) -> None:
                """Stop without finishing the stream (its output is being
                thrown away): blocks still queued are dropped, and each
                thread ends after at most the block it is compressing."""
                import queue

                from ..errors import OperationInterrupted

                with deferred():
                    with self.lock:
                        self.exception = self.exception or OperationInterrupted("compression aborted")
                    self.running = False
                    threads = [*self.compression_workers, self.output_worker]
                    while any(t.is_alive() for t in threads):
                        # empty every queue (a thread blocked on a full one goes on); the
                        # compressors end on a None, the writer when its queue stays empty
                        for q in self.input_queues + self.output_queues:
                            try:
                                while True:
                                    q.get_nowait()
                                    q.task_done()
                            except (queue.Empty, ValueError):
                                pass
                        for q in self.input_queues:
                            try:
                                q.put_nowait(None)
                            except queue.Full:
                                pass
                        for t in threads:
                            t.join(0.01)
                    self._closed = True

        _GZIP_WRITER = _GzipWriter
    return _GZIP_WRITER


class _Unclosable(io.RawIOBase):
    """Forwards reads/writes to ``f``; close() only flushes it."""

    def __init__(self, f: BinaryIO):
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        ri = getattr(self._f, "readinto", None)
        if ri is not None:
            return ri(b) or 0
        data = self._f.read(len(b))
        b[: len(data)] = data
        return len(data)

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self._f.write(b)
        return len(b)

    def flush(self) -> None:
        if not self.closed:
            flush = getattr(self._f, "flush", None)
            if flush is not None:
                flush()

    def close(self) -> None:
        if not self.closed:
            self.flush()
            super().close()


# ------------------------------------------------------------- decompression
class _GzipReader(io.RawIOBase):
    """Streaming gzip decoder (any number of members; ISA-L, decoding in a
    background thread) that turns every malformation into ArchiveError and
    enforces an output bound."""

    def __init__(self, fileobj: BinaryIO, max_output: Optional[int], name: str):
        from isal import igzip_lib, igzip_threaded

        self._isal_error = igzip_lib.IsalError
        self._f = igzip_threaded.open(_Unclosable(fileobj), "rb", threads=1)
        self._max = max_output
        self._name = name
        self._out = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            n = self._f.readinto(b)
        except EOFError:
            raise ArchiveError(f"{self._name}: truncated gzip stream (ended before its trailer), "
                               "or garbage after it") from None
        except (OSError, zlib.error, self._isal_error) as e:  # gzip.BadGzipFile is an OSError
            if isinstance(e, (zlib.error, self._isal_error)) or type(e).__name__ == "BadGzipFile":
                raise ArchiveError(f"{self._name}: corrupt gzip data: {e}") from None
            raise
        self._out += n
        if self._max is not None and self._out > self._max:
            raise OutputLimitError(f"{self._name}: decompressed output exceeds the limit of {self._max} bytes")
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._f.close()
            finally:
                super().close()


class _ZstdReader(io.RawIOBase):
    """Streaming zstd decoder over any number of frames.

    zstandard's ``stream_reader`` stops silently on a truncated frame, so this
    drives ``decompressobj`` (which reports ``eof``) itself.  Input is fed in
    2 KiB pieces: a zstd block of at most 128 KiB needs at least a few input
    bytes, so one piece can produce at most a few tens of MiB, which bounds
    memory even for a hostile stream."""

    PIECE = 2048

    def __init__(self, fileobj: BinaryIO, max_output: Optional[int], name: str):
        import zstandard

        self._zstd = zstandard
        self._dctx = zstandard.ZstdDecompressor()
        self._f = fileobj
        self._d = None
        self._inbuf = memoryview(b"")
        self._pending = memoryview(b"")
        self._max = max_output
        self._out = 0
        self._name = name
        self._frames = 0

    def readable(self) -> bool:
        return True

    def _fail(self, msg: str, cls: type = ArchiveError) -> None:
        raise cls(f"{self._name}: {msg}")

    def _more_input(self) -> bool:
        if not self._inbuf:
            data = self._f.read(CHUNK)
            if not data:
                return False
            self._inbuf = memoryview(data)
        return True

    def _fill(self) -> bool:
        while True:
            if not self._more_input():
                if self._d is not None:
                    self._fail("truncated zstd stream (a frame is incomplete)")
                return False
            if self._d is None:
                self._d = self._dctx.decompressobj()
                self._frames += 1
            piece, self._inbuf = self._inbuf[: self.PIECE], self._inbuf[self.PIECE:]
            try:
                out = self._d.decompress(piece)
            except self._zstd.ZstdError as e:
                self._fail(f"corrupt zstd data: {e}")
            if self._d.eof:
                rest = self._d.unused_data
                if rest:
                    self._inbuf = memoryview(bytes(rest) + bytes(self._inbuf))
                self._d = None
            if out:
                self._out += len(out)
                if self._max is not None and self._out > self._max:
                    self._fail(f"decompressed output exceeds the limit of {self._max} bytes", OutputLimitError)
                self._pending = memoryview(out)
                return True

    def readinto(self, b) -> int:
        if not self._pending and not self._fill():
            return 0
        n = min(len(b), len(self._pending))
        b[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class _Prefixed(io.RawIOBase):
    """``head`` followed by the rest of ``f`` (to sniff a non-seekable stream)."""

    def __init__(self, head: bytes, f: BinaryIO):
        self._head = head
        self._f = f

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0:
                h, self._head = self._head, b""
                return h + self._f.read()
            h, self._head = self._head[:n], self._head[n:]
            return h
        return self._f.read(n)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def open_decompressor(fileobj: BinaryIO, format: str = "auto", *, max_output: Optional[int] = None,
                      name: str = "input") -> BinaryIO:
    """A readable binary file yielding the decompressed bytes of ``fileobj``.

    ``format`` is ``"gzip"``, ``"zstd"`` or ``"auto"`` (sniffed from the magic).
    Malformed, truncated or over-long (``max_output``) input raises ArchiveError
    while reading.  Closing it does not close ``fileobj``.
    """
    if format not in ("auto",) + FORMATS:
        raise InvalidInputError(f"unknown compression format {format!r} (use gzip, zstd or auto)")
    head = b""
    while len(head) < 4:
        more = fileobj.read(4 - len(head))
        if not more:
            break
        head += more
    found = detect_format(head)
    if found is None or (format != "auto" and found != format):
        what = "empty input" if not head else "bad magic"
        raise ArchiveError(f"{name}: not a {'gzip or zstd' if format == 'auto' else format} stream ({what})")
    format = found
    if format == "gzip" and len(head) == 4 and head[3] & 0xE0:
        # RFC 1952 2.3.1.2: a reserved FLG bit set must be an error (gzip(1) refuses it too)
        raise ArchiveError(f"{name}: gzip header has reserved flag bits set (0x{head[3]:02x})")
    fileobj = _Prefixed(head, fileobj)  # type: ignore[assignment]
    if format == "gzip":
        raw: io.RawIOBase = _GzipReader(fileobj, max_output, name)
    elif format == "zstd":
        raw = _ZstdReader(fileobj, max_output, name)
    return io.BufferedReader(raw, CHUNK)  # type: ignore[return-value]


# ---------------------------------------------------------------- one-shots
def copy_stream(src: BinaryIO, dst: BinaryIO, *, progress: Optional[ProgressFn] = None,
                total: Optional[int] = None, chunk: int = CHUNK) -> int:
    """Copy until EOF in ``chunk``-sized pieces; returns bytes copied."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    done = 0
    readinto = getattr(src, "readinto", None)
    while True:
        if readinto is not None:
            n = readinto(view)
            if not n:
                break
            dst.write(view[:n])
        else:
            data = src.read(chunk)
            if not data:
                break
            n = len(data)
            dst.write(data)
        done += n
        if progress is not None:
            progress(done, total)
    return done


class _Counter(io.RawIOBase):
    """Counts bytes written through to ``f``."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.n = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.f.write(b)
        n = len(b)
        self.n += n
        return n

    def flush(self) -> None:
        self.f.flush()


class _ReadCounter(io.RawIOBase):
    def __init__(self, f: BinaryIO):
        self.f = f
        self.n = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        ri = getattr(self.f, "readinto", None)
        if ri is not None:
            n = ri(b) or 0
        else:
            data = self.f.read(len(b))
            n = len(data)
            b[:n] = data
        self.n += n
        return n


def compress(src: BinaryIO, dst: BinaryIO, *, format: str = "gzip", level: Optional[int] = None,
             threads: Optional[int] = None, progress: Optional[ProgressFn] = None,
             total: Optional[int] = None) -> StreamStats:
    """Compress ``src`` (readable) into ``dst`` (writable) in bounded memory."""
    out = _Counter(dst)
    z = open_compressor(out, format, level=level, threads=threads)  # type: ignore[arg-type]
    try:
        n = copy_stream(src, z, progress=progress, total=total)
    except BaseException:
        _abandon(z)
        raise
    z.close()
    return StreamStats(format, n, out.n)


def _abandon(z) -> None:
    """Close a compressor whose output is being thrown away, as fast as it
    can (a stop, a failed read): the parallel gzip writer drops its queued
    blocks rather than compressing them for nothing."""
    abort = getattr(getattr(z, "raw", None), "abort", None)
    if abort is not None:
        abort()
    try:
        z.close()
    except (ValueError, OSError, VhdkitError):
        pass


def decompress(src: BinaryIO, dst: BinaryIO, *, format: str = "auto", max_output: Optional[int] = None,
               progress: Optional[ProgressFn] = None, name: str = "input",
               total: Optional[int] = None) -> StreamStats:
    """Decompress ``src`` into ``dst``; raises ArchiveError on bad/truncated input.
    ``progress(done, total)`` counts compressed bytes read, of ``total`` (the
    input's size, when known): the output's size is not known in advance."""
    counted = _ReadCounter(src)
    z = open_decompressor(counted, format, max_output=max_output, name=name)  # type: ignore[arg-type]
    fmt = "zstd" if isinstance(z.raw, _ZstdReader) else "gzip"  # type: ignore[attr-defined]
    tick = None if progress is None else (lambda _out, _t: progress(counted.n, total))  # type: ignore[misc]
    with z:
        n = copy_stream(z, dst, progress=tick)
    return StreamStats(fmt, counted.n, n)
