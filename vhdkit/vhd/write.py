"""vhdkit.vhd.write: create, convert, modify, repair and compare images.

Every function is a thin layer over the native core (csrc/vk_write.c,
csrc/vk_convert.c): Python opens files, makes writes atomic (a temporary file
in the output's directory, fsync, rename) and turns results into dataclasses
with ``to_dict()``.

Example::

    import vhdkit
    r = vhdkit.convert("disk.raw", "disk.vhd", type="dynamic")
    print(r.virtual_size, r.blocks_allocated)
"""
from __future__ import annotations

import os
import stat
import sys

from .. import errors
from .._lazy import contextmanager
from ..fileutil import atomic_fd, refuse_existing
from ..interrupts import Background
from ..native import check, ffi, lib, new_err
from . import layout

__all__ = [
    "create", "convert", "modify", "repair", "compare", "size_plan",
    "WriteResult", "ModifyResult", "RepairResult", "CompareResult", "SizePlan",
]

from .._record import factory, plain_dict, record

TYPE_CHECKING = False   # typing, dataclasses, uuid and datetime are imported where used (start-up)
if TYPE_CHECKING:
    import datetime as _dt
    import uuid as _uuid
    from typing import Callable, Iterator, Optional, Tuple, Union

    PathLike = Union[str, "os.PathLike[str]"]
    Progress = Callable[[int, Optional[int]], None]

_RULES = {"exact": lib.VK_RULE_EXACT, "chs": lib.VK_RULE_CHS, "azure": lib.VK_RULE_AZURE}
_KINDS = {"raw": lib.VK_OUT_RAW, "fixed": lib.VK_OUT_FIXED, "dynamic": lib.VK_OUT_DYNAMIC}
_KIND_NAMES = {v: k for k, v in _KINDS.items()}
_DISK_TYPES = layout.DISK_TYPES
_MAX_SIZE = layout.MAX_VIRTUAL_SIZE


# ---- result objects -------------------------------------------------------
class _Dict:
    def to_dict(self) -> dict:
        return plain_dict(self)


@record
class SizePlan(_Dict):
    """How a requested size becomes a VHD's current size and geometry."""
    requested: int
    size: int
    rule: str
    geometry: Tuple[int, int, int]
    adjusted: bool


@record
class WriteResult(_Dict):
    """What :func:`create` and :func:`convert` wrote."""
    path: str
    format: str                   # "raw" | "vhd"
    disk_type: Optional[str]      # "fixed" | "dynamic" | None for raw
    virtual_size: int
    requested_size: int
    size_rule: str
    size_adjusted: bool
    geometry: Optional[Tuple[int, int, int]]
    uuid: Optional[_uuid.UUID]
    timestamp: Optional[_dt.datetime]
    block_size: Optional[int]
    max_table_entries: Optional[int]
    blocks_allocated: Optional[int]
    input_bytes: int
    data_bytes: int
    file_size: int
    source: Optional[str] = None
    source_format: Optional[str] = None


@record
class ModifyResult(_Dict):
    path: str
    disk_type: str
    old_size: int
    new_size: int
    uuid: _uuid.UUID
    timestamp: _dt.datetime
    bat_relocated: bool
    writes: int


@record
class RepairResult(_Dict):
    path: str
    disk_type: str
    action: str          # "none" | "end-footer-restored" | "backup-footer-restored" | "end-footer-appended" | "fixed-tail-cut"
                         # | "log-replayed" (VHDX)
    footer_offset: int
    dry_run: bool
    #: Blocks whose data lay past the end of a cut-short image: after the
    #: repair they read as zeros (or from the parent).  Each is a dict
    #: ``{"block", "start", "end"}`` (virtual bytes [start, end)).  Non-empty
    #: only with ``force`` (or ``dry_run``): otherwise repair refuses.
    lost: list = factory(list)

    @property
    def changed(self) -> bool:
        return self.action != "none"


@record
class CompareResult(_Dict):
    a: str
    b: str
    identical: bool
    size_a: int
    size_b: int
    first_difference: Optional[int] = None   # byte offset, or None
    message: str = ""


# ---- helpers ----------------------------------------------------------------
def _ts_to_vhd(ts: Union[None, str, int, float, _dt.datetime]) -> Optional[int]:
    if ts is None:
        return None
    import datetime as _dt

    if isinstance(ts, str):
        if ts == "now":
            ts = _dt.datetime.now(_dt.timezone.utc)
        else:
            try:
                ts = _dt.datetime.fromisoformat(ts)
            except ValueError:
                raise errors.InvalidInputError(f"not a timestamp: {ts!r} (use 'now' or ISO 8601)") from None
    if isinstance(ts, (int, float)):
        ts = _dt.datetime.fromtimestamp(ts, _dt.timezone.utc)
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=_dt.timezone.utc)
    secs = layout.from_datetime(ts)
    if not 0 <= secs <= 0xFFFFFFFF:
        raise errors.InvalidInputError(f"timestamp {ts.isoformat()} is outside what a VHD stores (2000..2136)")
    return secs


_vhd_to_ts = layout.to_datetime


def _creator_bytes(creator: Optional[str]) -> Optional[bytes]:
    if creator is None:
        return None
    raw = creator.encode("latin-1", "strict") if isinstance(creator, str) else bytes(creator)
    if not 1 <= len(raw) <= 4:
        raise errors.InvalidInputError(f"creator application must be 1..4 characters, got {creator!r}")
    return raw.ljust(4, b" ") if len(raw) < 4 and raw != b"tap" else raw.ljust(4, b"\0")


def _as_uuid(u: Union[None, str, _uuid.UUID]) -> Optional[_uuid.UUID]:
    import uuid as _uuid

    if u is None or isinstance(u, _uuid.UUID):
        return u
    try:
        return _uuid.UUID(str(u))
    except ValueError:
        raise errors.InvalidInputError(f"not a UUID: {u!r}") from None


def _rule(size_rule: str, azure: bool) -> int:
    if azure:
        return _RULES["azure"]
    if size_rule not in ("exact", "chs"):
        raise errors.InvalidInputError(f"size rule must be 'exact' or 'chs', got {size_rule!r}")
    return _RULES[size_rule]


def size_plan(size: int, size_rule: str = "exact") -> SizePlan:
    """The virtual size and CHS geometry a VHD of ``size`` bytes gets."""
    p = ffi.new("vk_size_plan *")
    err = new_err()
    check(lib.vk_size_plan_make(int(size), _RULES.get(size_rule, -1), p, err), err)
    return SizePlan(int(p.requested), int(p.size), size_rule, (p.cylinders, p.heads, p.sectors), bool(p.adjusted))


def _fill_opts(kind: str, block_size: Optional[int], rule: int, uuid, timestamp, creator) -> "ffi.CData":
    o = ffi.new("vk_write_opts *")
    if kind not in _KINDS:
        raise errors.InvalidInputError(f"unknown output type {kind!r} (raw, fixed or dynamic)")
    o.kind = _KINDS[kind]
    o.block_size = int(block_size or 0)
    o.size_rule = rule
    u = _as_uuid(uuid)
    if u is not None:
        o.has_uuid = 1
        ffi.memmove(o.uuid, u.bytes, 16)
    t = _ts_to_vhd(timestamp)
    if t is not None:
        o.has_timestamp = 1
        o.timestamp = t
    c = _creator_bytes(creator)
    if c is not None:
        ffi.memmove(o.creator_app, c, 4)
    return o


class _Output:
    """The output of a write: its fd, whether it is a stream, and the early
    writeback that makes the final fsync short."""

    #: Start writing back (fdatasync) after this many new input bytes, so the
    #: disk works while the converter still produces and the final fsync only
    #: waits for the tail.
    WRITEBACK_STEP = 256 << 20

    def __init__(self, fd: int, stream: bool, sync: bool) -> None:
        self.fd, self.stream, self.sync = fd, stream, sync
        self._synced_at = 0
        self._busy = False

    def writeback(self, done: int) -> None:
        """Called from the progress loop with the input bytes processed."""
        if not self.sync or self.stream or self._busy or done - self._synced_at < self.WRITEBACK_STEP:
            return
        self._synced_at = done
        self._busy = True
        import threading

        def flush() -> None:
            try:
                os.fdatasync(self.fd)
            except OSError:
                pass        # the final fsync reports a real error
            finally:
                self._busy = False

        threading.Thread(target=flush, name="vhdkit-writeback", daemon=True).start()


def _run(fn: Callable[[], int], opts, total: Optional[int], progress: Optional[Progress],
         out: Optional[_Output] = None) -> int:
    """Run a native call on a worker thread (cffi releases the GIL) so that the
    caller's thread can report progress and turn Ctrl-C into a clean cancel."""
    counter = ffi.new("uint64_t *")
    cancel = ffi.new("int *")
    opts.progress = counter
    opts.cancel = cancel
    job = Background(fn, "vhdkit-native")
    try:
        job.start()
        while not job.wait(0.05):
            done = int(counter[0])
            if out is not None:
                out.writeback(done)
            if progress is not None:
                progress(done, total)
    except BaseException:
        cancel[0] = 1
        if job.started:
            job.wait()    # the native call uses opts, res and err: they must outlive it
        raise
    if progress is not None:
        progress(int(counter[0]), total)
    return job.result


@contextmanager
def _atomic_output(dst: PathLike, overwrite: bool, sync: bool = True) -> Iterator[_Output]:
    """Yield the output.  A named output is written to a temporary file in its
    directory (locked while it is written, so a later write of the same name
    removes one left by a killed process), fsynced unless ``sync`` is false,
    and renamed into place only on success."""
    if str(dst) == "-":
        sys.stdout.flush()
        yield _Output(sys.stdout.fileno(), True, False)
        return
    dst = os.fspath(dst)
    refuse_existing(dst, overwrite)
    if os.path.isdir(dst):
        raise errors.InvalidInputError(f"{dst} is a directory")
    d = os.path.dirname(os.path.abspath(dst))
    from contextlib import ExitStack   # loaded by this function's decorator already (see vhdkit._lazy)

    stack = ExitStack()
    try:
        fd = stack.enter_context(atomic_fd(dst, ".part", sync))
    except FileNotFoundError as e:
        if not os.path.isdir(d):
            raise errors.NotFoundError(f"directory {d} does not exist") from None
        # the directory exists but refuses new files (e.g. /proc, /sys)
        raise errors.StorageError(f"cannot create a file in {d}: this directory does not accept new files "
                                  f"({e.strerror})", sys_errno=e.errno or 0) from None
    except OSError as e:
        raise errors.from_oserror(e, f"cannot create a file in {d}") from None
    with stack:
        yield _Output(fd, False, sync)


def _result(res, path: str, rule_name: str) -> WriteResult:
    import uuid as _uuid

    kind = _KIND_NAMES.get(int(res.kind), "raw")
    is_vhd = kind != "raw"
    return WriteResult(
        path=path,
        format="vhd" if is_vhd else "raw",
        disk_type=kind if is_vhd else None,
        virtual_size=int(res.plan.size),
        requested_size=int(res.plan.requested),
        size_rule=rule_name if is_vhd else "exact",
        size_adjusted=bool(res.plan.adjusted) if is_vhd else False,
        geometry=(res.plan.cylinders, res.plan.heads, res.plan.sectors) if is_vhd else None,
        uuid=_uuid.UUID(bytes=bytes(ffi.buffer(res.uuid, 16))) if is_vhd else None,
        timestamp=_vhd_to_ts(res.timestamp) if is_vhd else None,
        block_size=int(res.block_size) if kind == "dynamic" else None,
        max_table_entries=int(res.max_table_entries) if kind == "dynamic" else None,
        blocks_allocated=int(res.blocks_allocated) if kind == "dynamic" else None,
        input_bytes=int(res.input_bytes),
        data_bytes=int(res.data_bytes),
        file_size=int(res.file_size),
    )


# ---- create -------------------------------------------------------------------
def create(path: PathLike, size: int, *, type: str = "dynamic", block_size: Optional[int] = None,
           size_rule: str = "exact", azure: bool = False, uuid=None, timestamp=None,
           creator: Optional[str] = None, overwrite: bool = False, sync: bool = True) -> WriteResult:
    """Create an empty VHD of ``size`` bytes (``type`` "fixed" or "dynamic").

    ``size_rule="exact"`` keeps the size (rounded up to a sector), ``"chs"``
    rounds up to a CHS-representable size like Virtual PC; ``azure=True``
    makes a fixed VHD rounded up to a whole MiB.  ``path`` may be "-" for a
    fixed VHD written to stdout.  ``sync=False`` skips the fsync (the file
    is still renamed into place only when complete).
    """
    if azure:
        type = "fixed"
    if type not in ("fixed", "dynamic"):
        raise errors.InvalidInputError(f"type must be 'fixed' or 'dynamic', got {type!r}")
    if size > _MAX_SIZE:
        raise errors.OutOfRangeError(f"size {size} bytes is over the VHD limit of 2040 GiB")
    rule = _rule(size_rule, azure)
    opts = _fill_opts(type, block_size, rule, uuid, timestamp, creator)
    res = ffi.new("vk_write_result *")
    err = new_err()
    with _atomic_output(path, overwrite, sync) as out:
        opts.stream_out = int(out.stream)
        check(lib.vk_create(out.fd, int(size), opts, res, err), err)
    return _result(res, os.fspath(path), "azure" if azure else size_rule)


# ---- convert ------------------------------------------------------------------
def _detect_format(path: str) -> str:
    """'vhdx' if the file starts with the VHDX identifier, 'vhd' if it has a
    VHD footer (a fixed VHD, which is raw data plus a footer, is detected as
    VHD), else 'raw'."""
    from .read import probe_format
    return probe_format(path) or "raw"


def convert(src: PathLike, dst: PathLike, *, src_format: Optional[str] = None, out_format: str = "vhd",
            type: str = "dynamic", block_size: Optional[int] = None, size_rule: str = "exact",
            azure: bool = False, uuid=None, timestamp=None, creator: Optional[str] = None,
            parents=None, allowed_root=None, overwrite: bool = True,
            progress: Optional[Progress] = None, sync: bool = True) -> WriteResult:
    """Convert ``src`` (raw, or any VHD or VHDX vhdkit reads: fixed, dynamic,
    or a differencing leaf whose chain is flattened) into ``dst``.

    ``out_format`` "raw" writes a sparse raw file; "vhd" writes ``type``
    "fixed" or "dynamic" (all-zero blocks are not allocated).  ``src`` "-" is
    raw data on stdin; ``dst`` "-" streams raw or fixed output to stdout.
    ``src_format`` None detects the format from the footer (or the VHDX
    identifier); a ``src_format`` the file is not is refused.

    The output appears only when complete (temporary file + rename).  With
    ``sync`` (the default) it is also durable: written back to disk while the
    conversion runs and fsynced before the rename.  ``sync=False`` skips
    that, like ``qemu-img convert`` and ``cp``: the result may be lost (never
    half-written) if the machine crashes soon after.
    """
    srcs, dsts = os.fspath(src), os.fspath(dst)
    if out_format not in ("raw", "vhd"):
        raise errors.InvalidInputError(f"output format must be 'raw' or 'vhd', got {out_format!r}")
    if azure:
        type = "fixed"
    if out_format == "vhd" and type not in ("fixed", "dynamic"):
        raise errors.InvalidInputError(f"type must be 'fixed' or 'dynamic', got {type!r}")
    kind = "raw" if out_format == "raw" else type
    if dsts == "-" and kind == "dynamic":
        raise errors.UnsupportedError("a dynamic VHD cannot be streamed to stdout (its BAT is written last); "
                                      "write it to a file, or use --type fixed or -O raw")
    if src_format not in (None, "raw", "vhd", "vhdx"):
        raise errors.InvalidInputError(f"input format must be 'raw', 'vhd' or 'vhdx', got {src_format!r}")
    if srcs == "-":
        if src_format == "vhd":
            raise errors.UnsupportedError("a VHD cannot be read from stdin (its footer is at the end); "
                                          "give a file name")
        src_format = "raw"
    elif not os.path.exists(srcs):
        raise errors.NotFoundError(f"no such file: {srcs}")
    elif os.path.isdir(srcs):
        raise errors.InvalidInputError(f"{srcs} is a directory (give a file)")
    elif src_format is None:
        src_format = _detect_format(srcs)
    elif src_format in ("vhd", "vhdx"):
        real = _detect_format(srcs)
        if real in ("vhd", "vhdx") and real != src_format:
            raise errors.FormatError(f"{srcs} is a {real.upper()}, not a {src_format.upper()}")
    if srcs != "-" and dsts != "-" and os.path.exists(dsts) and os.path.samefile(srcs, dsts):
        raise errors.InvalidInputError("source and destination are the same file")
    rule = _rule(size_rule, azure and kind == "fixed")
    opts = _fill_opts(kind, block_size, rule, uuid, timestamp, creator)
    res = ffi.new("vk_write_result *")
    err = new_err()
    rule_name = "azure" if azure else size_rule
    if src_format == "raw":
        in_fd = sys.stdin.fileno() if srcs == "-" else os.open(srcs, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(in_fd)
            total = st.st_size if srcs != "-" or stat.S_ISREG(st.st_mode) else None
            with _atomic_output(dst, overwrite, sync) as out:
                opts.stream_out = int(out.stream)
                rc = _run(lambda: lib.vk_convert_raw(in_fd, 0xFFFFFFFFFFFFFFFF, out.fd, opts, res, err),
                          opts, total, progress, out)
                check(rc, err)
        finally:
            if srcs != "-":
                os.close(in_fd)
    else:
        from ._convert_image import convert_image
        with _atomic_output(dst, overwrite, sync) as out:
            opts.stream_out = int(out.stream)
            convert_image(srcs, out.fd, opts, res, err, parents=parents, allowed_root=allowed_root,
                          run=lambda fn, total: _run(fn, opts, total, progress, out))
    r = _result(res, dsts, rule_name)
    r.source, r.source_format = srcs, src_format
    return r


# ---- modify / repair ---------------------------------------------------------
def modify(path: PathLike, *, new_uuid: bool = False, uuid=None, timestamp=None, creator: Optional[str] = None,
           size: Optional[int] = None, size_rule: str = "exact", force: bool = False) -> ModifyResult:
    """Rewrite footer fields (both copies) and, for ``size``, the BAT in place.

    Growing a dynamic image uses spare BAT entries or relocates the BAT;
    the grown region reads zeros (stale BAT entries past the old size and
    bytes past it in its last block are cleared first).  Fixed images grow
    or shrink.  Shrinking below allocated (non-zero) data needs ``force``.  Writes are ordered so that an interrupted run leaves an
    image :func:`repair` restores.
    """
    if new_uuid and uuid is not None:
        raise errors.InvalidInputError("give either new_uuid or uuid, not both")
    import uuid as _uuid

    o = ffi.new("vk_modify_opts *")
    u = _uuid.uuid4() if new_uuid else _as_uuid(uuid)
    if u is not None:
        o.set_uuid = 1
        ffi.memmove(o.uuid, u.bytes, 16)
    t = _ts_to_vhd(timestamp)
    if t is not None:
        o.set_timestamp, o.timestamp = 1, t
    c = _creator_bytes(creator)
    if c is not None:
        o.set_creator = 1
        ffi.memmove(o.creator_app, c, 4)
    if size is not None:
        o.set_size, o.size = 1, int(size)
        o.size_rule = _rule(size_rule, False)
    o.force = int(bool(force))
    res = ffi.new("vk_modify_result *")
    err = new_err()
    try:
        check(lib.vk_modify(os.fsencode(path), o, res, err), err)
    except errors.NoSpaceError as exc:
        if size is None or force or exc.errno:   # errno set: the disk is full, not a refused shrink
            raise
        raise errors.NoSpaceError(exc.message, offset=exc.offset, override=("force", "discard it")) from None
    return ModifyResult(
        path=os.fspath(path), disk_type=_DISK_TYPES.get(int(res.disk_type), "unknown"),
        old_size=int(res.old_size), new_size=int(res.new_size),
        uuid=_uuid.UUID(bytes=bytes(ffi.buffer(res.uuid, 16))), timestamp=_vhd_to_ts(res.timestamp),
        bat_relocated=bool(res.bat_relocated), writes=int(res.writes))


_ACTIONS = {lib.VK_REPAIR_NONE: "none", lib.VK_REPAIR_END_RESTORED: "end-footer-restored",
            lib.VK_REPAIR_COPY_RESTORED: "backup-footer-restored", lib.VK_REPAIR_END_APPENDED: "end-footer-appended",
            lib.VK_REPAIR_FIXED_CUT: "fixed-tail-cut"}


def repair(path: PathLike, *, dry_run: bool = False, force: bool = False) -> RepairResult:
    """Restore a damaged end footer from the copy at offset 0, or the copy at
    0 from the end footer (like ``vhd-util repair``).  Refuses when both are
    damaged or when they disagree in a way that cannot be decided, and
    (:class:`~vhdkit.errors.FormatError` and kin, "cannot repair ...") when
    the footers are fine but the dynamic header or BAT is damaged, which
    restoring footers cannot mend.

    A dynamic image cut short inside its data gets a new end footer after
    its last block, and the blocks whose data lay past the cut then read as
    zeros (or from the parent): that repair is refused with
    :class:`~vhdkit.errors.DataLossError` naming those blocks (its ``lost``)
    unless ``force``; ``RepairResult.lost`` names them again.

    A VHDX whose log holds entries never applied gets the log replayed into
    the file (action ``log-replayed``), crash-safe as the VHDX specification
    makes it: the log stays active until the replayed data is on disk."""
    if _detect_format(os.fspath(path)) == "vhdx":
        xr = ffi.new("vk_vhdx_repair_result *")
        err = new_err()
        check(lib.vk_vhdx_repair(os.fsencode(path), int(bool(dry_run)), xr, err), err)
        from .read import info as _info
        return RepairResult(path=os.fspath(path), disk_type=_info(path).disk_type,
                            action="log-replayed" if xr.log_entries else "none", footer_offset=0,
                            dry_run=bool(dry_run))
    p = os.fsencode(path)
    err = new_err()
    probe = ffi.new("vk_repair_result *")
    check(lib.vk_repair(p, lib.VK_REPAIR_DRY_RUN, probe, err), err)   # how many blocks would be lost
    n = int(probe.lost_count)
    res = ffi.new("vk_repair_result *")
    arr = ffi.new("vk_lost_range[]", n) if n else ffi.NULL
    res.lost, res.lost_cap = arr, n
    flags = (lib.VK_REPAIR_DRY_RUN if dry_run else 0) | (lib.VK_REPAIR_FORCE if force else 0)
    rc = lib.vk_repair(p, flags, res, err)
    lost = [{"block": int(arr[i].block), "start": int(arr[i].start), "end": int(arr[i].end)}
            for i in range(min(n, int(res.lost_count)))]
    if rc < 0 and res.lost_count and not force:   # refused (VK_E_CONFLICT): it would lose them
        raise errors.DataLossError(
            f"repairing {os.fspath(path)} would lose data: {int(res.lost_count)} block(s) lay past the end of "
            f"the cut file and would read as zeros ({describe_ranges(lost)})", lost=lost)
    check(rc, err)
    return RepairResult(path=os.fspath(path), disk_type=_DISK_TYPES.get(int(res.disk_type), "unknown"),
                        action=_ACTIONS.get(int(res.action), "unknown"),
                        footer_offset=int(res.footer_offset), dry_run=bool(dry_run), lost=lost)


def describe_ranges(lost: list, most: int = 6) -> str:
    """``virtual bytes [a, b) (block i), ...`` for the first ``most`` of ``lost``."""
    s = ", ".join(f"[{r['start']}, {r['end']}) (block {r['block']})" for r in lost[:most])
    more = f" and {len(lost) - most} more" if len(lost) > most else ""
    return f"virtual bytes {s}{more}"


# ---- compare ------------------------------------------------------------------
def compare(a: PathLike, b: PathLike, *, a_format: Optional[str] = None, b_format: Optional[str] = None,
            parents=None, allowed_root=None) -> CompareResult:
    """Compare the virtual-disk contents of two images of any supported format
    (raw, fixed, dynamic, differencing).  Like ``qemu-img compare``, a size
    difference counts only if the longer image holds non-zero data there."""
    from ._convert_image import compare_images
    return compare_images(os.fspath(a), os.fspath(b), a_format, b_format, parents=parents,
                          allowed_root=allowed_root, detect=_detect_format, result=CompareResult)
