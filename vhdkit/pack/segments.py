"""Large objects as verified segments, Swift DLO style.

``split`` cuts a stream into objects ``NAME-00001``, ``NAME-00002``, … (five
digits, so lexicographic order is numeric order), then writes

- a zero-byte manifest object ``NAME`` whose metadata ``x-object-manifest``
  is ``CONTAINER/NAME-`` (what Swift's ``X-Object-Manifest`` header says), and
- a sidecar JSON manifest ``NAME.segments.json`` (format ``vhdkit-segments/1``)
  listing each segment's name, size and md5, the Swift DLO ETag (md5 of the
  concatenated segment md5 hex digests), and the whole stream's size and sha256.

``join`` trusts nothing: the sidecar must name exactly ``NAME-00001`` … in
order inside the same container with sane sizes; the container must hold
exactly those segments under the prefix; each segment is streamed and its size
and md5 checked, then the whole stream's sha256.  A missing, short, long,
extra, reordered or altered segment raises IntegrityError naming it.  With an
output path, nothing is left behind on failure (temp file + rename).

Each segment is handed to ``store.put`` as a stream of exactly its bytes;
when the input can seek, so can that stream (positions relative to the
segment's start), so a store may retry a failed put from the segment's first
byte (:class:`vhdkit.store.swift.SwiftStore` does on transient errors).
Segment names are fixed by position: a retried or re-run upload overwrites,
it never duplicates, and a re-run that ends with fewer segments deletes the
stale ones.  If ``split`` fails it deletes the segments it wrote.

More than 99,999 segments are refused unless ``digits`` is widened explicitly
(the width is recorded in the sidecar).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import BinaryIO, Callable, Iterator, List, Optional, Union

from ..errors import IntegrityError, InvalidInputError, NotFoundError, ResourceLimitError
from ..fileutil import atomic_file
from ..store import MAX_OBJECT_NAME, ObjectStore, validate_container_name, validate_object_name

__all__ = [
    "Segment",
    "SegmentManifest",
    "split",
    "join",
    "load_manifest",
    "checked_manifest",
    "verified_chunks",
    "sidecar_name",
    "segment_name",
    "dlo_etag",
    "DEFAULT_DIGITS",
    "MAX_SEGMENT_SIZE",
    "MAX_SIDECAR_BYTES",
]

FORMAT = "vhdkit-segments/1"
DEFAULT_DIGITS = 5
MAX_DIGITS = 9
MAX_SEGMENT_SIZE = 5 << 30  # Swift's default max object size
MAX_TOTAL_SIZE = 1 << 50
MAX_SIDECAR_BYTES = 64 << 20
_CHUNK = 1 << 20
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

ProgressFn = Callable[[int, Optional[int]], None]


@dataclass
class Segment:
    name: str
    size: int
    md5: str


@dataclass
class SegmentManifest:
    """The sidecar: everything ``join`` needs to verify the segments."""

    container: str
    name: str
    segment_size: int
    digits: int
    size: int
    sha256: str
    etag: str  # Swift DLO ETag: md5 of the concatenated segment md5 hex digests
    segments: List[Segment] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"{self.name}-"

    @property
    def object_manifest(self) -> str:
        """The value of Swift's ``X-Object-Manifest`` for this large object."""
        return f"{self.container}/{self.prefix}"

    def to_dict(self) -> dict:
        d = {"format": FORMAT, "object_manifest": self.object_manifest, "prefix": self.prefix}
        d.update(asdict(self))
        return d


def segment_name(name: str, index: int, digits: int = DEFAULT_DIGITS) -> str:
    """``NAME-00001`` for index 1."""
    return f"{name}-{index:0{digits}d}"


def sidecar_name(name: str) -> str:
    return f"{name}.segments.json"


def dlo_etag(md5s: List[str]) -> str:
    """Swift's DLO ETag: md5 of the segment md5 hex digests concatenated."""
    return hashlib.md5("".join(md5s).encode("ascii")).hexdigest()


class _Pipelined:
    """Runs ``h.update`` for one hash in a worker thread, one chunk behind,
    so two digests of the same bytes use two cores (hashlib drops the GIL)."""

    def __init__(self, pool: ThreadPoolExecutor, h):
        self.pool = pool
        self.h = h
        self.fut = None

    def update(self, data) -> None:
        if self.fut is not None:
            self.fut.result()
        self.fut = self.pool.submit(self.h.update, data)

    def hexdigest(self) -> str:
        if self.fut is not None:
            self.fut.result()
            self.fut = None
        return self.h.hexdigest()


class _SegmentSource:
    """Reads at most ``limit`` bytes of ``src`` (after a first chunk already read),
    feeding the whole-stream hash; ``put`` computes the md5.

    When ``src`` can seek, so can this view (positions are relative to the
    segment's start): a store may then retry a failed put from the segment's
    start.  Bytes read again after a seek back are not fed to the whole-stream
    hash a second time (it only sees each byte of the segment once, in order).
    Memory stays bounded: only the first chunk is kept."""

    def __init__(self, src: BinaryIO, first: bytes, limit: int, sha: _Pipelined):
        self.src = src
        self.first = first
        self.limit = limit
        self.sha = sha
        self.pos = 0  # position inside the segment
        self.hashed = 0  # bytes of the segment fed to ``sha`` so far
        self.n = 0  # high-water mark: the segment's length as far as read
        self._start: Optional[int] = None
        self._reposition = False
        try:
            if src.seekable():
                self._start = src.tell() - len(first)
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            self._start = None

    def seekable(self) -> bool:
        return self._start is not None

    def tell(self) -> int:
        if self._start is None:
            raise io.UnsupportedOperation("the input stream cannot seek")
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if self._start is None:
            raise io.UnsupportedOperation("the input stream cannot seek")
        base = {0: 0, 1: self.pos}.get(whence)
        if base is None or not 0 <= base + offset <= self.limit:
            raise io.UnsupportedOperation("a segment view seeks only inside the segment (whence 0 or 1)")
        self.pos = base + offset
        self._reposition = True
        return self.pos

    def read(self, n: int = -1) -> bytes:
        left = self.limit - self.pos
        if left <= 0:
            return b""
        want = left if n is None or n < 0 else min(n, left)
        if self.pos < len(self.first):
            data = self.first[self.pos:self.pos + want]
        else:
            if self._reposition:
                self.src.seek(self._start + self.pos)  # type: ignore[operator]
                self._reposition = False
            data = self.src.read(min(want, _CHUNK))
        if data:
            end = self.pos + len(data)
            if end > self.hashed:
                fresh = data[self.hashed - self.pos:] if self.hashed > self.pos else data
                self.sha.update(fresh)
                self.hashed = end
            self.pos = end
            self.n = max(self.n, end)
        return data


def _check_name(container: str, name: str, digits: int) -> None:
    validate_container_name(container)
    validate_object_name(name)
    if not 1 <= digits <= MAX_DIGITS:
        raise InvalidInputError(f"segment number width must be 1..{MAX_DIGITS} digits")
    if len((segment_name(name, 0, digits) + ".segments.json").encode("utf-8")) > MAX_OBJECT_NAME:
        raise InvalidInputError(f"object name {name!r} is too long to add segment suffixes")


def split(store: ObjectStore, container: str, name: str, stream: BinaryIO, *, segment_size: int,
          digits: int = DEFAULT_DIGITS, total: Optional[int] = None, metadata: Optional[dict] = None,
          progress: Optional[ProgressFn] = None) -> SegmentManifest:
    """Upload ``stream`` as segments of ``segment_size`` bytes plus the manifest
    object and the sidecar; returns the manifest.  ``total`` (when known) lets
    an over-long stream be refused before anything is written.  Segments left
    under the prefix by an earlier, longer upload are deleted."""
    _check_name(container, name, digits)
    if not 1 <= segment_size <= MAX_SEGMENT_SIZE:
        raise InvalidInputError(f"segment size must be 1 byte .. {MAX_SEGMENT_SIZE} bytes")
    max_segments = 10 ** digits - 1
    if total is not None and -(-total // segment_size) > max_segments:
        raise ResourceLimitError(f"{total} bytes in segments of {segment_size} need more than "
                                 f"{max_segments} segments; use a larger --segment-size")
    store.create_container(container)
    segs: List[Segment] = []
    done = 0
    with ThreadPoolExecutor(1) as pool:
        sha = _Pipelined(pool, hashlib.sha256())
        try:
            while True:
                first = stream.read(min(segment_size, _CHUNK))
                if not first:
                    break
                if len(segs) >= max_segments:
                    raise ResourceLimitError(f"the stream needs more than {max_segments} segments of "
                                             f"{segment_size} bytes; use a larger --segment-size")
                seg = segment_name(name, len(segs) + 1, digits)
                src = _SegmentSource(stream, first, segment_size, sha)
                info = store.put(container, seg, src, durable=False)  # type: ignore[arg-type]
                if info.size != src.hashed:  # a retried put that did not re-send the whole segment
                    raise IntegrityError(f"segment {container}/{seg}: stored {info.size} bytes, "
                                         f"read {src.hashed}")
                if src.seekable() and src.pos != src.hashed:
                    src.seek(src.hashed)  # leave the input just after this segment
                    src.read(0)
                segs.append(Segment(seg, info.size, info.etag))
                done += info.size
                if progress is not None:
                    progress(done, total)
        except BaseException:
            for s in segs:  # nothing half-written is left looking like a large object
                try:
                    store.delete(container, s.name)
                except NotFoundError:
                    pass
            raise
        digest = sha.hexdigest()
    # segments are written without waiting for the disk (writeback overlaps the
    # next segment); they are made durable here, before anything points at them
    store.sync(container, [s.name for s in segs])
    man = SegmentManifest(container=container, name=name, segment_size=segment_size, digits=digits,
                          size=done, sha256=digest, etag=dlo_etag([s.md5 for s in segs]), segments=segs)
    keep = {s.name for s in segs}
    for stale in store.list(container, man.prefix):
        if stale.name not in keep and re.fullmatch(r"\d+", stale.name[len(man.prefix):]):
            store.delete(container, stale.name)
    store.put_bytes(container, sidecar_name(name), json.dumps(man.to_dict(), indent=1).encode("utf-8"),
                    content_type="application/json")
    meta = dict(metadata or {})
    meta.update({"x-object-manifest": man.object_manifest, "vhdkit-sidecar": sidecar_name(name),
                 "vhdkit-size": str(done), "vhdkit-sha256": digest, "vhdkit-etag": man.etag})
    store.put_bytes(container, name, b"", metadata=meta)
    return man


def _int(v, what: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise IntegrityError(f"sidecar: {what} must be an integer in {lo}..{hi}, not {v!r}")
    return v


def load_manifest(store: ObjectStore, container: str, name: str) -> SegmentManifest:
    """Read and validate the sidecar of ``container/name`` (IntegrityError if it is
    malformed, names objects outside ``NAME-<n>`` of this container, repeats or
    reorders segments, or has impossible sizes)."""
    _check_name(container, name, DEFAULT_DIGITS)
    side = sidecar_name(name)
    try:
        head = store.head(container, side)
    except NotFoundError:
        raise NotFoundError(f"{container}/{name}: no segment manifest {side!r}") from None
    if head.size > MAX_SIDECAR_BYTES:
        raise IntegrityError(f"sidecar {container}/{side} is {head.size} bytes, larger than {MAX_SIDECAR_BYTES}")
    raw = store.get_bytes(container, side, limit=MAX_SIDECAR_BYTES)
    try:
        d = json.loads(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than the parser's stack
        raise IntegrityError(f"sidecar {container}/{side} is not JSON: {e}") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise IntegrityError(f"sidecar {container}/{side}: not a {FORMAT} manifest")
    if d.get("container") != container or d.get("name") != name:
        raise IntegrityError(f"sidecar {container}/{side} describes {d.get('container')!r}/{d.get('name')!r}, "
                             f"not {container}/{name}")
    digits = _int(d.get("digits"), "digits", 1, MAX_DIGITS)
    seg_size = _int(d.get("segment_size"), "segment_size", 1, MAX_SEGMENT_SIZE)
    size = _int(d.get("size"), "size", 0, MAX_TOTAL_SIZE)
    sha, etag = d.get("sha256"), d.get("etag")
    if not isinstance(sha, str) or not _HEX64.match(sha) or not isinstance(etag, str) or not _HEX32.match(etag):
        raise IntegrityError(f"sidecar {container}/{side}: bad sha256 or etag")
    raw_segs = d.get("segments")
    if not isinstance(raw_segs, list) or len(raw_segs) > 10 ** digits - 1:
        raise IntegrityError(f"sidecar {container}/{side}: bad segment list")
    segs: List[Segment] = []
    for i, s in enumerate(raw_segs, 1):
        expect = segment_name(name, i, digits)
        if not isinstance(s, dict) or s.get("name") != expect:
            got = s.get("name") if isinstance(s, dict) else s
            raise IntegrityError(f"sidecar {container}/{side}: segment {i} is {got!r}, expected {expect!r} "
                                 "(segments must be this container's NAME-<n>, in order, each once)")
        ssize = _int(s.get("size"), f"size of {expect}", 1, seg_size)
        md5 = s.get("md5")
        if not isinstance(md5, str) or not _HEX32.match(md5):
            raise IntegrityError(f"sidecar {container}/{side}: bad md5 for {expect}")
        segs.append(Segment(expect, ssize, md5))
    if sum(s.size for s in segs) != size:
        raise IntegrityError(f"sidecar {container}/{side}: segment sizes add up to "
                             f"{sum(s.size for s in segs)}, not {size}")
    if dlo_etag([s.md5 for s in segs]) != etag:
        raise IntegrityError(f"sidecar {container}/{side}: etag does not match the segment md5s")
    return SegmentManifest(container, name, seg_size, digits, size, sha, etag, segs)


def _start_writeback(out: BinaryIO) -> None:
    """Let the kernel start writing what we wrote so far (Linux starts writeback
    on POSIX_FADV_DONTNEED), so the final fsync has little left to wait for."""
    fileno = getattr(out, "fileno", None)
    if fileno is None or not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = fileno()
        out.flush()
        if os.path.isfile(f"/proc/self/fd/{fd}"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def verified_chunks(store: ObjectStore, man: SegmentManifest,
                    on_segment: Optional[Callable[[int], None]] = None) -> Iterator[bytes]:
    """The bytes of every segment of ``man`` in order, each segment's size and
    md5 and then the whole stream's sha256 checked as they pass (IntegrityError
    naming the segment; a consumer has then seen only a prefix of the data).
    ``on_segment(done)`` runs after each segment is verified."""
    c = man.container
    with ThreadPoolExecutor(1) as pool:
        sha = hashlib.sha256()  # in this thread, while md5 runs in the worker
        done = 0
        for seg in man.segments:
            md5 = hashlib.md5()
            try:
                r = store.get(c, seg.name)
            except NotFoundError:
                raise IntegrityError(f"segment {c}/{seg.name} is missing") from None
            got = 0
            with r:
                if r.info.size != seg.size:
                    what = "short" if r.info.size < seg.size else "long"
                    raise IntegrityError(f"segment {c}/{seg.name} is {what}: {r.info.size} bytes, "
                                         f"expected {seg.size}")
                while True:
                    data = r.read(_CHUNK)
                    if not data:
                        break
                    got += len(data)
                    if got > seg.size:
                        raise IntegrityError(f"segment {c}/{seg.name} is longer than {seg.size} bytes")
                    fut = pool.submit(md5.update, data)  # hashlib drops the GIL on big buffers
                    sha.update(data)
                    last = got == seg.size
                    if not last:
                        yield data
                    fut.result()
                    if last:  # the segment's last bytes leave only once its md5 is known
                        break
            if got != seg.size:
                raise IntegrityError(f"segment {c}/{seg.name} is short: {got} bytes, expected {seg.size}")
            if md5.hexdigest() != seg.md5:
                raise IntegrityError(f"segment {c}/{seg.name} is altered or out of order: md5 "
                                     f"{md5.hexdigest()}, expected {seg.md5}")
            done += got
            if seg is man.segments[-1] and sha.hexdigest() != man.sha256:
                raise IntegrityError(f"{c}/{man.name}: sha256 of the joined stream does not match the manifest")
            yield data
            if on_segment is not None:
                on_segment(done)
        if not man.segments and sha.hexdigest() != man.sha256:
            raise IntegrityError(f"{c}/{man.name}: sha256 of the joined stream does not match the manifest")


def _write_segments(store: ObjectStore, man: SegmentManifest, out: BinaryIO,
                    progress: Optional[ProgressFn]) -> None:
    def segment_done(done: int) -> None:
        _start_writeback(out)
        if progress is not None:
            progress(done, man.size)

    for data in verified_chunks(store, man, segment_done):
        out.write(data)


def checked_manifest(store: ObjectStore, container: str, name: str) -> SegmentManifest:
    """The sidecar of ``container/name`` once the manifest object and the
    listing agree with it (no segment missing or extra); the segments' bytes
    are checked by :func:`verified_chunks`."""
    man = load_manifest(store, container, name)
    try:
        mobj = store.head(container, name)
    except NotFoundError:
        raise IntegrityError(f"manifest object {container}/{name} is missing") from None
    if mobj.size != 0 or mobj.metadata.get("x-object-manifest") != man.object_manifest:
        raise IntegrityError(f"{container}/{name} is not a large-object manifest for {man.object_manifest!r}")
    listed = [o.name for o in store.list(container, man.prefix)]
    expected = {s.name for s in man.segments}
    extra = [n for n in listed if n not in expected]
    if extra:
        raise IntegrityError(f"segment {container}/{extra[0]} is extra: not in the manifest of {name}"
                             + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    missing = [s.name for s in man.segments if s.name not in set(listed)]
    if missing:
        raise IntegrityError(f"segment {container}/{missing[0]} is missing"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return man


def join(store: ObjectStore, container: str, name: str, out: Union[BinaryIO, str, os.PathLike], *,
         progress: Optional[ProgressFn] = None) -> SegmentManifest:
    """Stream the segments of ``container/name`` into ``out`` (a writable file,
    or a path written atomically), verifying everything; returns the manifest."""
    man = checked_manifest(store, container, name)
    if hasattr(out, "write"):
        _write_segments(store, man, out, progress)  # type: ignore[arg-type]
        return man
    with atomic_file(out) as f:  # type: ignore[arg-type]
        _write_segments(store, man, f, progress)
    return man
