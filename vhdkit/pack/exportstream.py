"""One-pass export of a stored single dynamic VHD (the pipeline's fast path).

:class:`RenewedVhdStream` reads the disk member of a stored OVA, straight from
its offset in the archive, and yields the bytes of the exported VHD:

* the compressed member is hashed as it passes (in a pool thread, one chunk
  behind) and checked against the OVA manifest at the end;
* it is decompressed (ISA-L, in its own thread);
* the footer copy at offset 0 and the end footer (the last 512 bytes, held
  back until the end of the stream) get a new UUID, a new timestamp and their
  checksum -- every other byte, the virtual disk included, passes unchanged;
* the VHD's metadata -- both footers, the dynamic header, the BAT and the
  block bitmaps -- is copied, at its own offsets, into a sparse "skeleton"
  file as it passes.  At the end the native ``check`` validates the skeleton
  (same size and metadata as the file; only data sectors are holes), first
  with the stored footers, then with the renewed ones.

Only a stream that passed every check ends normally: a damaged member
(corrupt or truncated gzip, a manifest mismatch, a VHD that fails ``check``)
raises from the final ``read``, so a consumer such as
:func:`vhdkit.pack.segments.split` deletes what it wrote and publishes nothing.

A disk this pass cannot judge on its own -- not a dynamic VHD (a fixed disk
has no footer copy at offset 0), metadata placed after the block data it
describes, parent locators, a BAT over 16 MiB -- raises :class:`NotStreamable`
(as early as it is seen: for a fixed disk, at the first read); the caller then
takes the general path (unpack, check, coalesce).
"""
from __future__ import annotations

import hashlib
import io
import os
import queue
import threading
import time
import uuid as _uuid
from typing import List, Optional, Tuple

from ..errors import ArchiveError, IntegrityError, OutputLimitError, ValidationFailed, VhdkitError
from .ova import DiskOutputGuard
from ..vhd import layout
from ..vhd.layout import SECTOR, renew_footer

__all__ = ["NotStreamable", "RenewedVhdStream", "renew_footer"]

_CHUNK = 4 << 20
_MAX_BAT = 16 << 20  # bytes of BAT this pass keeps in memory
_MAX_META_OFFSET = 64 << 20  # the dynamic header must start before this


class NotStreamable(Exception):
    """The disk is valid input for the general path, but not for this pass."""


def _dynamic_footer(b: bytes) -> Optional[layout.Footer]:
    """The footer in ``b`` if it is a valid one of a dynamic disk."""
    f = layout.footer(b) if len(b) == SECTOR else None
    return f if f is not None and f.disk_type == layout.lib.VK_DISK_DYNAMIC else None


class _HashedSlice(io.RawIOBase):
    """``size`` bytes of ``f`` from its position, hashed as they pass -- in
    ``pool``'s thread, one chunk behind (hashlib drops the GIL), so hashing
    overlaps the decompression that consumes the bytes."""

    def __init__(self, f, size: int, algo: str, pool):
        from .segments import _Pipelined

        self.f, self.left = f, size
        self.h = _Pipelined(pool, hashlib.new(algo))

    def readable(self) -> bool:
        return True

    def read_chunk(self, n: int) -> bytes:
        """Up to ``n`` bytes as a fresh object (b"" at the member's end)."""
        want = min(n, self.left)
        if not want:
            return b""
        data = self.f.read(want)  # a fresh buffer: the hasher may still be reading the last one
        if not data:
            raise IntegrityError("the stored OVA is truncated")
        self.h.update(data)
        self.left -= len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read_chunk(len(b))
        memoryview(b)[:len(data)] = data
        return len(data)


class _Inflater:
    """Reads the member (``raw``), decompresses it in its own thread (ISA-L
    drops the GIL) and hands the output over in chunks of at most ``_CHUNK``
    bytes through a small queue: memory stays bounded (a few chunks), whatever
    the compression ratio.  Any gzip stream is accepted, several members
    included; a corrupt or truncated one, trailing garbage or more output than
    ``bound`` raise ArchiveError from :meth:`get`."""

    _END = object()

    def __init__(self, raw: _HashedSlice, gz: bool, bound: int, name: str):
        self.raw, self.gz, self.bound, self.name = raw, gz, bound, name
        self.q: "queue.Queue" = queue.Queue(4)
        self.stop = threading.Event()
        self.exc: Optional[BaseException] = None
        self.t = threading.Thread(target=self._run, name="export-inflate", daemon=True)
        self.t.start()

    def _put(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped()

    def _run(self) -> None:
        try:
            if self.gz:
                self._inflate()
            else:
                while True:
                    data = self.raw.read_chunk(_CHUNK)
                    if not data:
                        break
                    self._put(data)
        except _Stopped:
            return
        except BaseException as e:  # noqa: BLE001 - handed to the reader
            self.exc = e
        try:
            self._put(self._END)
        except _Stopped:
            pass

    def _inflate(self) -> None:
        from isal import isal_zlib

        def fail(msg: str) -> None:
            raise ArchiveError(f"{self.name}: {msg}")

        out_total = 0
        d = None  # the current member's decompressor
        first = True
        while True:
            buf = self.raw.read_chunk(_CHUNK)
            if not buf:
                break
            waiting = False  # output may be waiting inside the decompressor
            while buf or waiting:
                if d is None:
                    if len(buf) < 10 and self.raw.left:
                        buf += self.raw.read_chunk(_CHUNK)  # a header split across reads
                    if buf[:2] != b"\x1f\x8b" or (len(buf) > 3 and buf[3] & 0xE0):
                        fail("not a gzip stream (bad magic)" if first else "garbage after the gzip stream")
                    d, first = isal_zlib.decompressobj(31), False
                try:
                    out = d.decompress(buf, _CHUNK)
                except isal_zlib.error as e:
                    fail(f"corrupt gzip data: {e}")
                if out:
                    out_total += len(out)
                    if out_total > self.bound:
                        fail(f"decompressed output exceeds the limit of {self.bound} bytes")
                    self._put(out)
                if d.eof:
                    buf, d, waiting = d.unused_data, None, False
                else:
                    buf, waiting = d.unconsumed_tail, len(out) == _CHUNK
        if first:
            fail("empty member, not a gzip stream")
        if d is not None:
            fail("truncated gzip stream (ended before its trailer)")

    def get(self) -> bytes:
        """The next chunk of output; b"" at the end."""
        item = self.q.get()
        if item is self._END:
            self.q.put(item)  # later calls see the end too
            if self.exc is not None:
                raise self.exc
            return b""
        return item

    def close(self) -> None:
        self.stop.set()
        self.t.join()


class _Stopped(Exception):
    pass


class RenewedVhdStream(io.RawIOBase):
    """The exported VHD's bytes, read from a stored OVA's disk member (see module doc).

    ``f`` is the archive opened unbuffered; ``offset``/``size`` locate the
    member; ``algo``/``want`` are its manifest hash; ``gz`` says it is gzip;
    ``bound`` caps the decompressed size; ``skeleton`` is a new file path for
    the metadata copy; ``pool`` a one-thread executor for the input hash.
    ``uuid``/``timestamp`` of the renewed footer (default: random, now)."""

    def __init__(self, f, offset: int, size: int, algo: str, want: str, *, gz: bool, bound: int,
                 skeleton: os.PathLike | str, pool, name: str = "disk",
                 uuid: Optional[_uuid.UUID] = None, timestamp: Optional[int] = None):
        f.seek(offset)
        self.name = name
        self.want, self.algo = want, algo
        self.raw = _HashedSlice(f, size, algo, pool)
        self.src = _Inflater(self.raw, gz, bound, f"its disk {name!r}")
        self.uuid = uuid or _uuid.uuid4()
        self.timestamp = int(time.time()) - layout.lib.VK_VHD_EPOCH if timestamp is None else timestamp
        self.skeleton = os.fspath(skeleton)
        self._skel = os.open(self.skeleton, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._pos = 0  # bytes of the stored VHD read from the decompressor
        self._tail = b""  # the last 512 bytes read: held back, they may be the end footer
        self._out = memoryview(b"")
        self._pieces: List[memoryview] = []
        self._started = self._done = False
        # metadata ranges to copy into the skeleton, sorted by start: (start, end)
        self._ranges: List[Tuple[int, int]] = [(0, SECTOR)]
        self._ri = 0  # ranges before this index are copied
        self._state = 0  # 0 need footer, 1 need header, 2 need BAT, 3 all known
        self._hdr_off = self._bat_off = self._bat_len = 0
        self._block = self._entries = self._bitmap = 0
        self.copy_footer = b""
        self.end_footer = b""
        self.size: Optional[int] = None  # the VHD's file size, known at the end
        self.expected_size: Optional[int] = None  # its likely size, once the BAT has passed

    # -- io
    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while not self._out:
            if self._pieces:
                self._out = self._pieces.pop(0)
                continue
            if self._done:
                return b""
            self._fill()
        if n is None or n < 0 or n >= len(self._out):
            data, self._out = self._out, memoryview(b"")
        else:
            data, self._out = self._out[:n], self._out[n:]
        return bytes(data)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        memoryview(b)[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self.src.close()
                os.close(self._skel)
            finally:
                super().close()

    # -- the pass
    def _read_src(self) -> bytes:
        try:
            return self.src.get()
        except (ArchiveError, IntegrityError) as e:
            raise IntegrityError(f"the stored image is damaged: {e.message}") from None

    def _fill(self) -> None:
        data = self._read_src()
        if not self._started:
            while data and len(data) < SECTOR:
                more = self._read_src()
                if not more:
                    break
                data += more
            if len(data) < SECTOR or _dynamic_footer(data[:SECTOR]) is None:
                raise NotStreamable("no dynamic VHD footer copy at offset 0")
            self._started = True
        if not data:
            self._pieces = [memoryview(self._finish())]
            self._done = True
            return
        start = self._pos
        self._pos += len(data)
        self._capture(data, start)
        if self._state == 3 and self._pos > self.expected_size + DiskOutputGuard.TAIL_SLACK:
            raise OutputLimitError(f"{self.name}: the disk is longer than its BAT allows "
                                   f"({self.expected_size} bytes)")
        if start == 0:
            self.copy_footer = bytes(data[:SECTOR])
            data = renew_footer(self.copy_footer, self.uuid, self.timestamp) + data[SECTOR:]
        if len(data) >= SECTOR:  # pass on the held-back tail, hold back the new one (no big copy)
            self._pieces = [memoryview(self._tail), memoryview(data)[:-SECTOR]]
            self._tail = data[-SECTOR:]
        else:
            both = self._tail + data
            self._pieces = [memoryview(both)[:-SECTOR]]
            self._tail = both[-SECTOR:]

    def _capture(self, data: bytes, start: int) -> None:
        """Copy the known metadata ranges that overlap ``data`` (at ``start``) into
        the skeleton; learn new ranges as soon as the ones before are complete."""
        end = start + len(data)
        while True:
            r = self._ranges
            while self._ri < len(r) and r[self._ri][0] < end:
                a, b = r[self._ri]
                if a < start:
                    raise NotStreamable(f"metadata at offset {a} lies before data already passed")
                hi = min(b, end)
                os.pwrite(self._skel, data[a - start:hi - start], a)
                if b > end:
                    r[self._ri] = (end, b)
                    break
                self._ri += 1
            if not self._advance(end):
                return

    def _add(self, ranges: List[Tuple[int, int]]) -> None:
        rest = self._ranges[self._ri:] + [(a, b) for a, b in ranges if b > a]
        rest.sort()
        self._ranges, self._ri = rest, 0

    def _advance(self, pos: int) -> bool:
        """Parse the next metadata structure if it is complete below ``pos``
        (and so captured); True if it was."""
        if self._state == 0 and pos >= SECTOR:
            data_offset = _dynamic_footer(os.pread(self._skel, SECTOR, 0)).data_offset  # checked at the start
            if data_offset % SECTOR or not SECTOR <= data_offset <= _MAX_META_OFFSET:
                raise NotStreamable("dynamic header offset out of the streamable range")
            self._hdr_off = data_offset
            self._add([(data_offset, data_offset + layout.DYNHDR_BYTES)])
            self._state = 1
            return True
        if self._state == 1 and pos >= self._hdr_off + layout.DYNHDR_BYTES:
            h = layout.dynamic_header(os.pread(self._skel, layout.DYNHDR_BYTES, self._hdr_off))
            if h is None:
                raise NotStreamable("dynamic header not recognised")
            if h.n_locators:
                raise NotStreamable("parent locators in a dynamic header")
            if h.table_offset % SECTOR or h.max_table_entries * 4 > _MAX_BAT:
                raise NotStreamable("dynamic header fields out of the streamable range")
            self._block, self._entries, self._bitmap = h.block_size, h.max_table_entries, h.bitmap_bytes
            self._bat_off, self._bat_len = h.table_offset, -(-h.max_table_entries * 4 // SECTOR) * SECTOR
            self._add([(h.table_offset, h.table_offset + self._bat_len)])
            self._state = 2
            return True
        if self._state == 2 and pos >= self._bat_off + self._bat_len:
            bat = os.pread(self._skel, self._entries * 4, self._bat_off)
            if len(bat) != self._entries * 4:
                raise NotStreamable("BAT not captured")
            bitmap = self._bitmap
            blocks = layout.bat_blocks(bat)
            self._add([(b, b + bitmap) for b in blocks])
            # the usual layout ends with the last block, then the footer (progress only)
            self.expected_size = max([self._bat_off + self._bat_len] + [b + bitmap + self._block for b in blocks]) \
                + SECTOR
            self._state = 3
            return True
        return False

    def _finish(self) -> bytes:
        """End of the stored VHD: verify everything, return the renewed end footer."""
        if self.raw.left:
            raise IntegrityError(f"the stored image is damaged: its disk {self.name!r} ends "
                                 f"{self.raw.left} bytes before the end of its archive member")
        got = self.raw.h.hexdigest()
        if got != self.want:
            raise IntegrityError(f"the stored image is damaged: its disk {self.name!r} does not match "
                                 f"the OVA manifest's {self.algo} (manifest {self.want}, read {got})")
        tail = self._tail
        if len(tail) != SECTOR or self._pos < 3 * SECTOR:
            raise NotStreamable("too short for a dynamic VHD")
        if self._state != 3:
            raise NotStreamable("the VHD ended before its metadata")
        self.size = self._pos
        self.end_footer = bytes(tail)
        if _dynamic_footer(tail) is None:
            # the end footer decides the type: e.g. a fixed disk whose first
            # sector happens to look like a dynamic footer
            raise NotStreamable("the end footer is not a dynamic VHD footer")
        os.pwrite(self._skel, tail, self._pos - SECTOR)
        os.ftruncate(self._skel, self._pos)
        # ranges still uncopied lie past the end of the file: check reports that (BAT_PAST_EOF)
        self._check("the stored VHD failed validation", ValidationFailed)
        renewed = renew_footer(tail, self.uuid, self.timestamp)
        os.pwrite(self._skel, renew_footer(self.copy_footer, self.uuid, self.timestamp), 0)
        os.pwrite(self._skel, renewed, self._pos - SECTOR)
        # the stored disk checked clean, so a problem now is in what this pass wrote
        self._check("the exported VHD's renewed metadata failed validation", VhdkitError)
        return renewed

    def _check(self, what: str, error: type) -> None:
        """Raise ``error`` naming the first problem ``check`` finds, if any."""
        from ..vhd import check

        rep = check(self.skeleton, parents=False)
        if not rep.ok:
            p = rep.problems[0]
            more = f" (and {len(rep.problems) - 1} more problems)" if len(rep.problems) > 1 else ""
            raise error(f"{what}: {p.code}: {p.message}{more}")
