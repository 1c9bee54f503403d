"""Differencing chains: snapshot, writing into a VHD, coalesce (into one new
VHD, or into the parent in place), reparent, and chain listing.

The work is done by the native core (csrc/vk_chain.c, csrc/vk_rw.c); this
module computes the parent references (name and locators), makes outputs
atomic, and shapes results.  The in-place merge is described in
docs/coalesce.md.
"""
from __future__ import annotations

import os

from .. import errors
from ..interrupts import Background
from ..native import check, ffi, lib, new_err
from ..progress import Progress
from . import layout
from . import read as _read
from . import write as _write

__all__ = [
    "VhdWriteStream",
    "SnapshotResult",
    "CoalesceResult",
    "MergeResult",
    "ReparentResult",
    "ChainLayer",
    "snapshot",
    "coalesce",
    "coalesce_into_parent",
    "reparent",
    "chain_info",
    "journal_path",
]

from .._record import factory, plain_dict, record

TYPE_CHECKING = False   # typing, dataclasses, uuid, datetime, urllib are imported where used (start-up)
if TYPE_CHECKING:
    import datetime as _dt
    import uuid as _uuid
    from typing import Any, Dict, List, Optional, Sequence, Union

    PathLike = Union[str, "os.PathLike[str]"]


def _b(p: PathLike) -> bytes:
    return os.fsencode(os.fspath(p))


_time = layout.to_datetime


def _u(cbuf) -> _uuid.UUID:
    import uuid as _uuid

    return _uuid.UUID(bytes=bytes(ffi.buffer(cbuf, 16)))


class _DictMixin:
    def to_dict(self) -> Dict[str, Any]:
        return plain_dict(self)


# ---- writing: vhdkit.open(path, "r+") -----------------------------------------

class VhdWriteStream(_read.VhdStream):
    """A read-write stream over a VHD (its leaf is written; the chain below
    is read for partial sectors).  ``write``/``pwrite`` take any offset and
    length inside the virtual size; ``flush`` and ``close`` fsync."""

    def __init__(self, path: PathLike, **kw: Any):
        super().__init__(path, **kw)
        err = new_err()
        try:
            check(lib.vk_image_make_writable(self._img, err), err)
        except BaseException:
            super().close()
            raise

    def writable(self) -> bool:
        return True

    def pwrite(self, data, offset: int) -> int:  # type: ignore[override]
        """Write ``data`` at ``offset`` without moving the position."""
        img = self._live()
        if offset < 0:
            raise errors.InvalidInputError("negative offset")
        mv = memoryview(data).cast("B")
        if len(mv) == 0:
            return 0
        err = new_err()
        self._chain = None   # allocated sizes change
        check(lib.vk_image_pwrite(img, ffi.from_buffer(mv), len(mv), offset, err), err)
        return len(mv)

    def write(self, data) -> int:  # type: ignore[override]
        n = self.pwrite(data, self._pos)
        self._pos += n
        return n

    def flush(self) -> None:
        if self.closed or getattr(self, "_img", None) is None:
            return
        err = new_err()
        check(lib.vk_image_flush(self._img, err), err)

    def close(self) -> None:
        if not self.closed:
            try:
                self.flush()
            finally:
                super().close()


# ---- parent references --------------------------------------------------------

def _parent_ref(parent_path: str, child_path: str):
    """Name and locators for a child at child_path pointing at parent_path:
    W2ru relative (Windows separators), W2ku absolute, MacX file URL."""
    import urllib.parse

    pabs = os.path.realpath(parent_path)
    cdir = os.path.dirname(os.path.realpath(child_path)) if os.path.exists(child_path) else \
        os.path.realpath(os.path.dirname(os.path.abspath(child_path)))
    rel = os.path.relpath(pabs, cdir)
    w2ru = rel.replace("/", "\\")
    if not w2ru.startswith(".."):
        w2ru = ".\\" + w2ru
    keep = [
        ffi.new("char[]", os.path.basename(pabs).encode("utf-8")),
        ffi.new("char[]", w2ru.encode("utf-8")),
        ffi.new("char[]", pabs.encode("utf-8")),
        ffi.new("char[]", ("file://" + urllib.parse.quote(pabs)).encode("utf-8")),
    ]
    ref = ffi.new("vk_parent_ref *")
    ref.name, ref.w2ru, ref.w2ku, ref.macx = keep
    return ref, keep


def _open_img(path: PathLike, parents=None, allowed_root=None, follow_locators: bool = True):
    if isinstance(parents, (str, os.PathLike)):
        parents = [parents]
    return _read._open_native(path, _read._Opts(list(parents) if parents else None, allowed_root, "auto",
                                                follow_locators=follow_locators))


def _require(path: PathLike) -> str:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise errors.NotFoundError(f"no such file: {p}")
    return p


# ---- snapshot -------------------------------------------------------------------

@record
class SnapshotResult(_DictMixin):
    path: str
    parent: str
    uuid: _uuid.UUID
    timestamp: _dt.datetime
    virtual_size: int
    block_size: int
    max_table_entries: int
    parent_uuid: _uuid.UUID
    parent_timestamp: _dt.datetime
    file_size: int


def snapshot(parent: PathLike, child: PathLike, *, size: Optional[int] = None, block_size: Optional[int] = None,
             parents: Optional[Sequence[PathLike]] = None, allowed_root: Optional[PathLike] = None,
             overwrite: bool = False) -> SnapshotResult:
    """Create ``child``, a new empty differencing VHD over ``parent``.

    The parent's UUID and timestamp are copied, its file name goes into the
    header, and three locators are written (W2ru relative, W2ku absolute,
    MacX URL) so that the pair survives being moved as a directory.
    ``size`` (default: the parent's) may exceed the parent's size; reads past
    the parent's end are zeros.  ``block_size`` defaults to the parent's.
    """
    p, c = _require(parent), os.fspath(child)
    if os.path.exists(c) and os.path.samefile(p, c):
        raise errors.InvalidInputError("parent and child are the same file")
    img = _open_img(p, parents, allowed_root)
    try:
        ref, _keep = _parent_ref(p, c)
        res = ffi.new("vk_snapshot_result *")
        err = new_err()
        with _write._atomic_output(c, overwrite) as o:
            if o.stream:
                raise errors.UnsupportedError("a snapshot must be written to a file")
            check(lib.vk_snapshot(img, o.fd, int(size or 0), int(block_size or 0), ref, res, err), err)
    finally:
        ffi.release(img)
    return SnapshotResult(path=c, parent=os.path.realpath(p), uuid=_u(res.uuid), timestamp=_time(res.timestamp),
                          virtual_size=int(res.virtual_size), block_size=int(res.block_size),
                          max_table_entries=int(res.max_table_entries), parent_uuid=_u(res.parent_uuid),
                          parent_timestamp=_time(res.parent_timestamp), file_size=int(res.file_size))


# ---- coalesce into a new image ----------------------------------------------------

@record
class CoalesceResult(_DictMixin):
    path: str
    source: str
    format: str                 # "vhd" | "raw"
    disk_type: Optional[str]    # "dynamic" | "fixed" | None for raw
    virtual_size: int
    uuid: Optional[_uuid.UUID]
    timestamp: Optional[_dt.datetime]
    block_size: Optional[int]
    blocks_allocated: Optional[int]
    file_size: int
    layers: int                 # depth of the chain that was flattened
    data_needed: int            # bytes allocated somewhere in the chain
    bytes_read: int             # bytes read from the layer files (data + bitmaps)
    data_bytes: int             # non-zero data bytes written

    @property
    def read_ratio(self) -> float:
        return self.bytes_read / self.data_needed if self.data_needed else 0.0

    def to_dict(self) -> Dict[str, Any]:
        d = super().to_dict()
        d["read_ratio"] = round(self.read_ratio, 6)
        return d


def coalesce(leaf: PathLike, out: PathLike, *, type: str = "dynamic", out_format: str = "vhd",
             block_size: Optional[int] = None, parents: Optional[Sequence[PathLike]] = None,
             allowed_root: Optional[PathLike] = None, overwrite: bool = True,
             progress: Optional[Progress] = None, sync: bool = True,
             follow_locators: bool = True) -> CoalesceResult:
    """Flatten the chain ending at ``leaf`` into one standalone image ``out``
    (a dynamic or fixed VHD, or raw with ``out_format="raw"``), in one
    streaming pass: each allocated sector is read once, from the topmost
    layer that holds it; all-zero blocks stay unallocated.  The output gets a
    new UUID, the current time and no parent fields; it appears atomically.
    ``follow_locators=False``: the chain is exactly ``leaf`` + ``parents``
    (see :func:`vhdkit.vhd.read.open`)."""
    src, dst = _require(leaf), os.fspath(out)
    if out_format not in ("vhd", "raw"):
        raise errors.InvalidInputError(f"output format must be 'vhd' or 'raw', got {out_format!r}")
    if out_format == "vhd" and type not in ("dynamic", "fixed"):
        raise errors.InvalidInputError(f"type must be 'dynamic' or 'fixed', got {type!r}")
    kind = "raw" if out_format == "raw" else type
    if dst == "-" and kind == "dynamic":
        raise errors.UnsupportedError("a dynamic VHD cannot be streamed to stdout; use a file, fixed or raw")
    if dst != "-" and os.path.exists(dst) and os.path.samefile(src, dst):
        raise errors.InvalidInputError("source and destination are the same file")
    img = _open_img(src, parents, allowed_root, follow_locators)
    try:
        depth = int(lib.vk_image_depth(img))
        for i in range(depth):
            lay = ffi.new("char[]", 4096)
            e = new_err()
            check(lib.vk_image_path(img, i, lay, 4096, e), e)
            if dst != "-" and os.path.exists(dst) and os.path.samefile(ffi.string(lay).decode(), dst):
                raise errors.InvalidInputError(f"{dst} is a layer of the chain being coalesced")
        need = ffi.new("uint64_t *")
        err = new_err()
        check(lib.vk_image_allocated(img, need, err), err)
        lib.vk_image_reset_bytes_read(img)
        opts = _write._fill_opts(kind, block_size, 0, None, None, None)
        res = ffi.new("vk_write_result *")
        total = int(lib.vk_image_size(img))
        with _write._atomic_output(dst, overwrite, sync) as o:
            opts.stream_out = int(o.stream)
            rc = _write._run(lambda: lib.vk_convert_image(img, o.fd, opts, res, err), opts, total, progress, o)
            check(rc, err)
        bytes_read = int(lib.vk_image_bytes_read(img))
    finally:
        ffi.release(img)
    w = _write._result(res, dst, "exact")
    return CoalesceResult(path=dst, source=os.path.realpath(src), format=w.format, disk_type=w.disk_type,
                          virtual_size=w.virtual_size, uuid=w.uuid, timestamp=w.timestamp, block_size=w.block_size,
                          blocks_allocated=w.blocks_allocated, file_size=w.file_size, layers=depth,
                          data_needed=int(need[0]), bytes_read=bytes_read, data_bytes=w.data_bytes)


# ---- coalesce into the parent, in place ---------------------------------------------

@record
class MergeResult(_DictMixin):
    child: str
    parent: str
    bytes_merged: int
    bytes_read: int
    blocks_allocated: int
    writes: int
    resumed: bool


def journal_path(parent: PathLike) -> str:
    """Where the in-place merge keeps its journal: next to the parent."""
    p = os.path.realpath(os.fspath(parent))
    return os.path.join(os.path.dirname(p), "." + os.path.basename(p) + ".coalesce-journal")


#: Native objects of merges abandoned by an interruption (see :func:`_poll`).
_ABANDONED: list = []


def _poll(fn, done, total, progress, keep=()):
    """Run a native call on a worker thread (cffi releases the GIL) and
    report ``done()`` to ``progress`` meanwhile.  An interruption of the
    caller leaves the merge to finish or to be stopped by the process's exit
    (as safe as a kill: the journal lets a rerun finish it); the native
    objects it uses (``keep``) are kept alive for it."""
    if progress is None:
        return fn()
    job = Background(fn, "vhdkit-merge")
    try:
        job.start()
        while not job.wait(0.1):
            progress(done(), total)
    except BaseException:
        if job.running:
            _ABANDONED.append(keep)
        raise
    progress(done(), total)
    return job.result


def coalesce_into_parent(child: PathLike, *, parents: Optional[Sequence[PathLike]] = None,
                         allowed_root: Optional[PathLike] = None,
                         progress: Optional[Progress] = None) -> MergeResult:
    """Merge ``child`` into its parent in place (what ``vhd-util coalesce``
    does): every sector the child holds is written into the parent.
    Crash-safe and resumable: see docs/coalesce.md.  The child is left as it
    is (it reads the same as before); discard it or keep it as an empty
    overlay."""
    c = _require(child)
    img = _open_img(c, parents, allowed_root)
    try:
        if int(lib.vk_image_depth(img)) < 2:
            raise errors.InvalidInputError(f"{c} is not a differencing disk: it has no parent to merge into")
        buf = ffi.new("char[]", 4096)
        err = new_err()
        check(lib.vk_image_path(img, 1, buf, 4096, err), err)
        ppath = ffi.string(buf).decode()
        res = ffi.new("vk_merge_result *")
        jp = journal_path(ppath)
        total = _read._layer_info(img, 0).allocated_bytes if progress is not None else None
        jpb = _b(jp)
        rc = _poll(lambda: lib.vk_coalesce_into_parent(img, jpb, res, err),
                   (lambda: int(res.bytes_merged)), total, progress, keep=(img, jpb, res, err))
        check(rc, err)
    finally:
        if not any(k and k[0] is img for k in _ABANDONED):
            ffi.release(img)
    return MergeResult(child=os.path.realpath(c), parent=ppath, bytes_merged=int(res.bytes_merged),
                       bytes_read=int(res.bytes_read), blocks_allocated=int(res.blocks_allocated),
                       writes=int(res.writes), resumed=bool(res.resumed))


# ---- reparent ------------------------------------------------------------------

@record
class ReparentResult(_DictMixin):
    child: str
    parent: str
    parent_uuid: _uuid.UUID
    parent_timestamp: _dt.datetime
    unsafe: bool


def reparent(child: PathLike, new_parent: PathLike, *, unsafe: bool = False,
             parents: Optional[Sequence[PathLike]] = None, allowed_root: Optional[PathLike] = None,
             follow_locators: bool = True) -> ReparentResult:
    """Point the differencing disk ``child`` at ``new_parent``: parent UUID,
    timestamp, name and locators are rewritten.  The new parent must carry
    the UUID the child expects unless ``unsafe`` (like ``qemu-img rebase
    -u``); a new parent whose own chain contains the child is refused.
    ``parents`` are explicit parents of ``new_parent``."""
    c, p = _require(child), _require(new_parent)
    if os.path.samefile(c, p):
        raise errors.ChainError(f"{c} cannot be its own parent")
    img = _open_img(p, parents, allowed_root, follow_locators)
    try:
        ref, _keep = _parent_ref(p, c)
        err = new_err()
        check(lib.vk_reparent(_b(c), img, ref, int(bool(unsafe)), err), err)
        info = _read._layer_info(img, 0)
    finally:
        ffi.release(img)
    return ReparentResult(child=os.path.realpath(c), parent=info.path, parent_uuid=info.uuid,
                          parent_timestamp=info.timestamp, unsafe=bool(unsafe))


# ---- chain listing -------------------------------------------------------------

@record
class ChainLayer(_DictMixin):
    index: int                  # 0 = the leaf
    path: str
    disk_type: str
    uuid: _uuid.UUID
    virtual_size: int
    allocated_bytes: int
    file_size: int
    block_size: Optional[int]
    parent_uuid: Optional[_uuid.UUID]
    parent_name: Optional[str]
    parent_found_by: Optional[str]   # how this layer's parent was found: "explicit",
    #                                  "W2ru", "W2ku", "MacX", "parent name"; None for the base
    locators: List[Dict[str, Any]] = factory(list)


def _candidate(code: str, text: str, child_dir: str) -> Optional[str]:
    """The local path a locator names, as the native resolver reads it."""
    if code == "MacX":
        import urllib.parse

        s = text
        for pre in ("file://localhost/", "file://"):
            if s.startswith(pre):
                s = s[len(pre) - 1:] if pre.endswith("/") else s[len(pre):]
                break
        s = urllib.parse.unquote(s)
    elif code in ("W2ru", "W2ku"):
        s = text.replace("\\", "/")
    else:
        return None
    if not s or (len(s) >= 2 and s[1] == ":"):
        return None
    if s.startswith("/"):
        return s
    while s.startswith("./"):
        s = s[2:]
    return os.path.join(child_dir, s)


def _found_by(layer: Dict[str, Any], parent_path: str) -> Optional[str]:
    """How the layer (``VhdInfo.to_dict()``) names ``parent_path``: the locator code, or "parent name"."""
    d = os.path.dirname(layer["path"])
    target = os.path.realpath(parent_path)
    ordered = [loc for loc in layer["locators"] if loc["path"] and loc["code"] in ("W2ru", "W2ku", "MacX")]
    for want_abs in (False, True):
        for loc in ordered:
            cand = _candidate(loc["code"], loc["path"] or "", d)
            if cand is None:
                continue
            is_abs = loc["code"] == "MacX" or (loc["path"] or "").replace("\\", "/").startswith("/")
            if is_abs != want_abs:
                continue
            if os.path.exists(cand) and os.path.realpath(cand) == target:
                return loc["code"]
    name = layer["parent_name"]
    if name and os.path.realpath(os.path.join(d, os.path.basename(name.replace("\\", "/")))) == target:
        return "parent name"
    return None


def chain_dicts(leaf: PathLike, *, parents: Optional[Sequence[PathLike]] = None,
                allowed_root: Optional[PathLike] = None) -> List[Dict[str, Any]]:
    """``[x.to_dict() for x in chain_info(...)]``, made without UUID objects:
    the command line's way (their module costs more start-up than its work)."""
    p = _require(leaf)
    plist = [parents] if isinstance(parents, (str, os.PathLike)) else list(parents or [])
    with _read.open(p, parents=plist or None, allowed_root=allowed_root) as s:
        layers = s.chain_dicts()
    out = []
    for i, L in enumerate(layers):
        how = None
        if i + 1 < len(layers):
            how = "explicit" if i < len(plist) else _found_by(L, layers[i + 1]["path"])
        row = dict(L, index=i, parent_found_by=how)
        out.append({n: row[n] for n in ChainLayer.__record_fields__})
    return out


def chain_info(leaf: PathLike, *, parents: Optional[Sequence[PathLike]] = None,
               allowed_root: Optional[PathLike] = None) -> List[ChainLayer]:
    """The chain from ``leaf`` to its base: each layer's UUID, sizes,
    allocated bytes, and how its parent was found."""
    import uuid as _uuid

    out: List[ChainLayer] = []
    for row in chain_dicts(leaf, parents=parents, allowed_root=allowed_root):
        row["uuid"] = _uuid.UUID(row["uuid"])
        row["parent_uuid"] = _uuid.UUID(row["parent_uuid"]) if row["parent_uuid"] else None
        out.append(ChainLayer(**row))
    return out
