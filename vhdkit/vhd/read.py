"""Reading and checking VHDs: the Python face of the native reader.

- :func:`open` returns a :class:`VhdStream`, an :class:`io.RawIOBase` over
  the virtual disk (fixed, dynamic, or differencing through its whole chain),
  so ``shutil.copyfileobj``, hashing and tarfile just work.  A VHDX opens the
  same way (its log replayed in memory, never written); :attr:`VhdInfo.vhdx`
  holds what only a VHDX has.
- :func:`info` describes the top layer (:class:`VhdInfo`), :func:`check`
  validates structure (:class:`CheckReport` of :class:`Problem`), :func:`probe`
  says cheaply whether a file is a VHD at all, :func:`map` lists extents.

Size rules (``size_rule``): ``"auto"`` follows qemu -- images whose creator is
``vpc `` or ``qemu`` use the CHS-derived size unless the geometry is at its
maximum, all others the footer's current size; ``"current"``, ``"chs"`` and
``"original"`` force one.  Errors are exceptions of :mod:`vhdkit.errors`.
"""
from __future__ import annotations

import io
import os
from _thread import allocate_lock as _lock

from .. import native
from .._record import asdict, factory, record
from ..errors import InvalidInputError
from . import layout
from .layout import DISK_TYPES

__all__ = [
    "open", "info", "check", "probe", "probe_format", "map",
    "VhdStream", "VhdInfo", "CheckReport", "Problem", "Extent", "Locator",
    "SIZE_RULES", "DISK_TYPES",
]

TYPE_CHECKING = False   # typing and dataclasses are not imported at run time: `vhdkit info` needs only this
if TYPE_CHECKING:
    import datetime as _dt
    import uuid as _uuid
    from typing import Any, Dict, List, Optional, Sequence, Union

    PathLike = Union[str, "os.PathLike[str]"]

#: size_rule names -> vk_size_rule
SIZE_RULES = {"auto": native.lib.VK_SIZE_AUTO, "current": native.lib.VK_SIZE_CURRENT,
              "chs": native.lib.VK_SIZE_CHS, "original": native.lib.VK_SIZE_ORIGINAL}
_RULE_NAMES = {v: k for k, v in SIZE_RULES.items()}
_MAX_READ = 1 << 30     # one native call reads at most this much


@record
class Locator:
    """A parent locator entry of a differencing disk."""
    code: str            # "W2ru", "W2ku", "MacX", ...
    data_space: int      # as stored: bytes (Microsoft) or sectors (spec)
    data_length: int
    data_offset: int
    path: Optional[str]  # decoded text, None if not decodable

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@record
class VhdInfo:
    """Facts about one VHD file (one layer of a chain)."""
    path: str
    disk_type: str                     # "fixed" | "dynamic" | "differencing"
    virtual_size: int
    size_rule: str                     # the rule applied: "current" | "chs" | "original"
    current_size: int
    original_size: int
    chs_size: int
    geometry: tuple                    # (cylinders, heads, sectors per track)
    creator_app: str
    creator_version: str               # "major.minor"
    creator_os: str
    uuid: _uuid.UUID
    timestamp: _dt.datetime
    saved_state: bool
    features: int
    file_size: int
    footer_size: int                   # 512, or 511 in very old images
    footer_source: str                 # "end" | "copy at offset 0"
    block_size: Optional[int] = None
    max_table_entries: Optional[int] = None
    bat_entries_used: Optional[int] = None
    allocated_bytes: int = 0
    parent_uuid: Optional[_uuid.UUID] = None
    parent_timestamp: Optional[_dt.datetime] = None
    parent_name: Optional[str] = None
    locators: List[Locator] = factory(list)
    format: str = "vhd"                # "vhd" | "vhdx"
    vhdx: Optional[Dict[str, Any]] = None   # VHDX headers, regions, metadata, BAT, log

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["uuid"] = str(self.uuid)
        d["timestamp"] = self.timestamp.isoformat()
        d["geometry"] = list(self.geometry)
        d["parent_uuid"] = str(self.parent_uuid) if self.parent_uuid else None
        d["parent_timestamp"] = self.parent_timestamp.isoformat() if self.parent_timestamp else None
        d["locators"] = [loc.to_dict() for loc in self.locators]
        return d


@record
class Problem:
    """One finding of :func:`check`: a stable code, the file offset, a message."""
    code: str
    offset: Optional[int]
    message: str
    layer: int = 0        # 0 the image itself, 1 its parent, ...

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@record
class CheckReport:
    path: str
    problems: List[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def codes(self) -> List[str]:
        return [p.code for p in self.problems]

    def to_dict(self) -> Dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "problems": [p.to_dict() for p in self.problems]}


@record
class Extent:
    """A run of the virtual disk, like a line of ``qemu-img map``."""
    offset: int
    length: int
    allocated: bool
    layer: Optional[int]          # 0 = leaf, 1 = its parent, ...; None when zeros
    file_offset: Optional[int]    # where the data lies in that layer's file
    path: Optional[str] = None    # that layer's file

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# ---- native glue -----------------------------------------------------------

def _fspath(p: PathLike) -> bytes:
    return os.fsencode(os.fspath(p))


def _rule(size_rule: str) -> int:
    try:
        return SIZE_RULES[size_rule]
    except KeyError:
        raise InvalidInputError(f"unknown size rule {size_rule!r} (use one of {', '.join(SIZE_RULES)})") from None


class _Opts:
    """A vk_open_opts and the cdata it points to (kept alive together)."""

    def __init__(self, parents: Optional[Sequence[PathLike]], allowed_root: Optional[PathLike],
                 size_rule: str, top_only: bool = False, follow_locators: bool = True):
        ffi = native.ffi
        self.c = ffi.new("vk_open_opts *")
        self._keep: list = []
        if parents:
            strs = [ffi.new("char[]", _fspath(p)) for p in parents]
            arr = ffi.new("const char *[]", strs)
            self._keep += [strs, arr]
            self.c.parents = arr
            self.c.n_parents = len(strs)
        if allowed_root is not None:
            root = ffi.new("char[]", _fspath(allowed_root))
            self._keep.append(root)
            self.c.allowed_root = root
        self.c.size_rule = _rule(size_rule)
        self.c.top_only = 1 if top_only else 0
        self.c.no_locators = 0 if follow_locators else 1


def _str(cbuf) -> str:
    return native.ffi.string(cbuf).decode("utf-8", "replace")


_time = layout.to_datetime


def _iso(ts: int) -> str:
    """``_time(ts).isoformat()``, without datetime objects."""
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(native.lib.VK_VHD_EPOCH + int(ts)))


def _uuid_bytes(b, little_endian: bool = False) -> bytes:
    """A UUID's 16 bytes in RFC 4122 order; ``little_endian``: stored as
    Windows stores a GUID (first three fields little-endian), as in a VHDX."""
    b = bytes(b)
    return b[3::-1] + b[5:3:-1] + b[7:5:-1] + b[8:] if little_endian else b


def _uuid_text(b: bytes) -> str:
    """``str(uuid.UUID(bytes=b))``."""
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _guid(b) -> str:
    """A GUID stored as Windows stores it (first three fields little-endian)."""
    return _uuid_text(_uuid_bytes(b, little_endian=True))


#: VHDX payload block states (BAT entry bits 0-2) by number
VHDX_BLOCK_STATES = {native.lib.VKX_PAYLOAD_NOT_PRESENT: "not_present", native.lib.VKX_PAYLOAD_UNDEFINED: "undefined",
                     native.lib.VKX_PAYLOAD_ZERO: "zero", native.lib.VKX_PAYLOAD_UNMAPPED: "unmapped",
                     native.lib.VKX_PAYLOAD_FULLY_PRESENT: "fully_present",
                     native.lib.VKX_PAYLOAD_PARTIALLY: "partially_present"}


def _vhdx_info(img, layer: int) -> Dict[str, Any]:
    ffi, lib = native.ffi, native.lib
    err = native.new_err()
    x = ffi.new("vk_vhdx_info *")
    native.check(lib.vk_image_vhdx_info(img, layer, x, err), err)
    return {
        "creator": _str(x.creator),
        "headers": [{"valid": bool(x.header_valid[i]), "sequence_number": int(x.header_seq[i]),
                     "current": x.current_header == i + 1} for i in range(2)],
        "version": x.version, "log_version": x.log_version,
        "file_write_guid": _guid(x.file_write_guid), "data_write_guid": _guid(x.data_write_guid),
        "log": {"guid": _guid(x.log_guid), "offset": x.log_offset, "length": x.log_length,
                "replay_pending": bool(x.log_replay_pending), "entries": x.log_entries,
                "sequence_number": x.log_sequence if x.log_replay_pending else None},
        "region_table": {"copy": x.region_table, "entries": x.n_regions,
                         "bat": {"offset": x.bat_offset, "length": x.bat_length},
                         "metadata": {"offset": x.metadata_offset, "length": x.metadata_length}},
        "metadata": {"entries": x.n_metadata, "block_size": x.block_size,
                     "logical_sector_size": x.logical_sector_size,
                     "physical_sector_size": x.physical_sector_size,
                     "leave_blocks_allocated": bool(x.leave_blocks_allocated),
                     "has_parent": bool(x.has_parent), "virtual_size": x.virtual_size,
                     "page83_data": _guid(x.page83)},
        "bat": {"entries": x.bat_entries, "chunk_ratio": x.chunk_ratio, "payload_blocks": x.payload_blocks,
                "blocks_by_state": {name: int(x.blocks_by_state[n]) for n, name in VHDX_BLOCK_STATES.items()},
                "sector_bitmaps_present": x.sector_bitmaps_present},
        "parent_locator": None if not x.has_parent else {
            "entries": x.n_locator_entries,
            **{k: (_str(getattr(x, k)) or None) for k in
               ("parent_linkage", "parent_linkage2", "relative_path", "volume_path", "absolute_win32_path")}},
    }


def _layer_path(img, layer: int) -> str:
    ffi, err = native.ffi, native.new_err()
    pbuf = ffi.new("char[]", 4096)
    native.check(native.lib.vk_image_path(img, layer, pbuf, 4096, err), err)
    return os.fsdecode(ffi.string(pbuf))


def _layer_fields(img, layer: int) -> Dict[str, Any]:
    """A :class:`VhdInfo`'s fields, UUIDs as 16 bytes and times as seconds
    since the VHD epoch (see :func:`_layer_info`, :func:`_layer_dict`)."""
    ffi, lib = native.ffi, native.lib
    err = native.new_err()
    ci = ffi.new("vk_info *")
    native.check(lib.vk_image_info(img, layer, ci, err), err)
    vhdx = _vhdx_info(img, layer) if ci.format == 1 else None
    dynamic = ci.disk_type in (lib.VK_DISK_DYNAMIC, lib.VK_DISK_DIFF) or vhdx is not None
    diff = ci.disk_type == lib.VK_DISK_DIFF and vhdx is None
    locs: List[Locator] = []
    if dynamic and vhdx is None:
        cl = ffi.new("vk_locator_info *")
        for i in range(ci.n_locators):
            native.check(lib.vk_image_locator(img, layer, i, cl, err), err)
            locs.append(Locator(_str(cl.code), cl.data_space, cl.data_length, cl.data_offset,
                                _str(cl.path) if cl.valid else None))
    ver = ci.creator_version
    return dict(
        path=_layer_path(img, layer),
        disk_type=DISK_TYPES.get(ci.disk_type, str(ci.disk_type)),
        virtual_size=ci.virtual_size,
        size_rule=_RULE_NAMES[ci.size_rule],
        current_size=ci.current_size,
        original_size=ci.original_size,
        chs_size=ci.chs_size,
        geometry=(ci.cylinders, ci.heads, ci.sectors_per_track),
        creator_app=ffi.string(ci.creator_app).decode("latin-1"),
        creator_version=f"{ver >> 16}.{ver & 0xFFFF}",
        creator_os=ffi.string(ci.creator_os).decode("latin-1"),
        uuid=_uuid_bytes(ci.uuid, little_endian=vhdx is not None),
        timestamp=int(ci.timestamp),
        saved_state=bool(ci.saved_state),
        features=ci.features,
        file_size=ci.file_size,
        footer_size=ci.footer_size,
        footer_source="end" if ci.footer_source == 0 else "copy at offset 0",
        block_size=ci.block_size if dynamic else None,
        max_table_entries=ci.max_table_entries if dynamic else None,
        bat_entries_used=ci.bat_entries_used if dynamic else None,
        allocated_bytes=ci.allocated_bytes,
        parent_uuid=bytes(ci.parent_uuid) if diff else None,
        parent_timestamp=int(ci.parent_timestamp) if diff else None,
        parent_name=(_str(ci.parent_name) if ci.parent_name_valid else None) if diff else None,
        locators=locs,
        format="vhdx" if vhdx is not None else "vhd",
        vhdx=vhdx,
    )


def _layer_info(img, layer: int) -> VhdInfo:
    import uuid as _uuid   # here: `vhdkit info` and `check` need no UUID objects (see _layer_dict)

    f = _layer_fields(img, layer)
    f["uuid"], f["timestamp"] = _uuid.UUID(bytes=f["uuid"]), _time(f["timestamp"])
    if f["parent_uuid"] is not None:
        f["parent_uuid"], f["parent_timestamp"] = _uuid.UUID(bytes=f["parent_uuid"]), _time(f["parent_timestamp"])
    return VhdInfo(**f)


def _layer_dict(img, layer: int) -> Dict[str, Any]:
    """``_layer_info(img, layer).to_dict()``, without making UUID and datetime
    objects (their modules cost a command's start-up more than its work)."""
    f = _layer_fields(img, layer)
    f["uuid"], f["timestamp"] = _uuid_text(f["uuid"]), _iso(f["timestamp"])
    f["geometry"] = list(f["geometry"])
    if f["parent_uuid"] is not None:
        f["parent_uuid"], f["parent_timestamp"] = _uuid_text(f["parent_uuid"]), _iso(f["parent_timestamp"])
    f["locators"] = [loc.to_dict() for loc in f["locators"]]
    f["vhdx"] = asdict(f["vhdx"])
    return {n: f[n] for n in VhdInfo.__record_fields__}


def _open_native(path: PathLike, opts: _Opts):
    ffi, lib = native.ffi, native.lib
    err = native.new_err()
    out = ffi.new("vk_image **")
    native.check(lib.vk_image_open(_fspath(path), opts.c, out, err), err)
    return ffi.gc(out[0], lib.vk_image_close)


# ---- the stream --------------------------------------------------------------

class VhdStream(io.RawIOBase):
    """A read-only, seekable raw stream over the virtual disk of a VHD chain.

    Native reads run without the GIL; a lock serialises calls on one stream
    (the native handle caches a sector bitmap per layer).  For parallel
    reads, open the image once per thread.
    """

    def __init__(self, path: PathLike, *, parents: Optional[Sequence[PathLike]] = None,
                 allowed_root: Optional[PathLike] = None, size_rule: str = "auto", follow_locators: bool = True):
        super().__init__()
        self.name = os.fspath(path)
        self._img = _open_native(path, _Opts(parents, allowed_root, size_rule, follow_locators=follow_locators))
        self._size = int(native.lib.vk_image_size(self._img))
        self._pos = 0
        self._chain: Optional[List[VhdInfo]] = None
        self._lock = _lock()

    # -- io.RawIOBase
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def write(self, b) -> int:  # type: ignore[override]
        raise io.UnsupportedOperation(f"{self.name} is open for reading only: open it with mode 'r+' to write")

    def _live(self):
        if self.closed:
            raise ValueError("I/O operation on closed VHD stream")
        return self._img

    def readinto(self, b) -> int:
        img = self._live()
        mv = memoryview(b).cast("B")
        n = min(len(mv), max(0, self._size - self._pos))
        if n <= 0:
            return 0
        ffi, lib = native.ffi, native.lib
        buf = ffi.from_buffer(mv, require_writable=True)
        err = native.new_err()
        done = 0
        with self._lock:
            while done < n:
                step = min(n - done, _MAX_READ)
                native.check(lib.vk_image_pread(img, buf + done, step, self._pos + done, err), err)
                done += step
        self._pos += n
        return n

    def readall(self) -> bytes:
        return self.read(max(0, self._size - self._pos))

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        n = min(size, max(0, self._size - self._pos))
        buf = bytearray(n)
        got = self.readinto(buf)
        return bytes(buf[:got]) if got != n else bytes(buf)

    def pread(self, size: int, offset: int) -> bytes:
        """Read ``size`` bytes at ``offset`` without moving the position."""
        img = self._live()
        if offset < 0 or size < 0:
            raise InvalidInputError("negative offset or size")
        n = min(size, max(0, self._size - offset))
        buf = bytearray(n)
        if n:
            err = native.new_err()
            with self._lock:
                native.check(native.lib.vk_image_pread(img, native.ffi.from_buffer(buf), n, offset, err), err)
        return bytes(buf)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._live()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        img = getattr(self, "_img", None)
        if img is not None:
            with self._lock:
                self._img = None
                native.ffi.release(img)
        super().close()

    # -- VHD specifics
    @property
    def virtual_size(self) -> int:
        return self._size

    @property
    def depth(self) -> int:
        return int(native.lib.vk_image_depth(self._live()))

    @property
    def chain(self) -> List[VhdInfo]:
        """Info of every layer, leaf first."""
        if self._chain is None:
            img = self._live()
            self._chain = [_layer_info(img, i) for i in range(self.depth)]
        return list(self._chain)

    @property
    def info(self) -> VhdInfo:
        return self.chain[0]

    def chain_dicts(self) -> List[Dict[str, Any]]:
        """``[c.to_dict() for c in self.chain]``, made without UUID and datetime objects."""
        img = self._live()
        return [_layer_dict(img, i) for i in range(self.depth)]

    def map(self) -> List[Extent]:
        """Extents of the whole disk: allocated (in which layer) or zeros."""
        img = self._live()
        ffi, lib = native.ffi, native.lib
        cap = 256
        arr = ffi.new("vk_extent[]", cap)
        n_out = ffi.new("size_t *")
        err = native.new_err()
        paths = [_layer_path(img, i) for i in range(self.depth)]
        out: List[Extent] = []
        pos = 0
        while pos < self._size:
            with self._lock:
                native.check(lib.vk_image_map(img, pos, arr, cap, n_out, err), err)
            n = int(n_out[0])
            if n == 0:
                break
            for i in range(n):
                e = arr[i]
                layer = e.layer if e.allocated else None
                x = Extent(e.offset, e.length, bool(e.allocated), layer,
                           e.file_offset if e.allocated else None,
                           paths[layer] if layer is not None else None)
                if out and out[-1].allocated == x.allocated and out[-1].layer == x.layer and (
                        not x.allocated or out[-1].file_offset + out[-1].length == x.file_offset):
                    out[-1].length += x.length
                else:
                    out.append(x)
            pos = arr[n - 1].offset + arr[n - 1].length
            if n == cap and cap < 65536:
                cap *= 4
                arr = ffi.new("vk_extent[]", cap)
        return out

    def __repr__(self) -> str:
        return f"<VhdStream {self.name!r} size={self._size} pos={self._pos}>"


# ---- module API --------------------------------------------------------------

def open(path: PathLike, mode: str = "r", *, parents: Optional[Sequence[PathLike]] = None,
         allowed_root: Optional[PathLike] = None, size_rule: str = "auto", follow_locators: bool = True) -> VhdStream:
    """Open the virtual disk of a VHD (with its parent chain) as a binary
    stream: mode ``"r"`` (``"rb"``) to read (:class:`VhdStream`), ``"r+"``
    (``"r+b"``, ``"rb+"``) to read and write
    (:class:`vhdkit.vhd.chain.VhdWriteStream`).  There is no ``"w"``: make a
    new VHD with :func:`vhdkit.create` or :func:`vhdkit.convert`, then open it.

    ``parents``: explicit parent paths, the leaf's parent first (used before
    the locators).  ``allowed_root``: refuse parents outside this directory.
    ``follow_locators=False``: parents come only from ``parents`` (the mode
    for server code: a file's locators name paths its author chose; they are
    decoded for display but never followed).
    A bad mode raises ValueError, as :func:`io.open` does; writing to a
    stream opened ``"r"`` raises :class:`io.UnsupportedOperation`.
    """
    kw: Dict[str, Any] = dict(parents=parents, allowed_root=allowed_root, size_rule=size_rule,
                              follow_locators=follow_locators)
    if mode in ("r+", "r+b", "rb+"):   # writing: vhdkit.vhd.chain (chains helper)
        from .chain import VhdWriteStream
        return VhdWriteStream(path, **kw)
    if mode not in ("r", "rb"):
        raise InvalidInputError(f"invalid mode {mode!r}: vhdkit.open takes 'r' (read) or 'r+' (read and write); "
                                "make a new VHD with vhdkit.create or vhdkit.convert")
    return VhdStream(path, **kw)


def info(path: PathLike, *, size_rule: str = "auto", parents: Optional[Sequence[PathLike]] = None,
         allowed_root: Optional[PathLike] = None) -> VhdInfo:
    """Describe the VHD at ``path`` (its own layer; parents are not opened)."""
    img = _open_native(path, _Opts(parents, allowed_root, size_rule, top_only=True))
    try:
        return _layer_info(img, 0)
    finally:
        native.ffi.release(img)


def info_dict(path: PathLike, *, size_rule: str = "auto", parents: Optional[Sequence[PathLike]] = None,
              allowed_root: Optional[PathLike] = None) -> Dict[str, Any]:
    """``info(...).to_dict()``, made without UUID and datetime objects: the
    command line's way (their modules cost more start-up than its work);
    not in ``__all__``, the API's is :func:`info`."""
    img = _open_native(path, _Opts(parents, allowed_root, size_rule, top_only=True))
    try:
        return _layer_dict(img, 0)
    finally:
        native.ffi.release(img)


def check(path: PathLike, *, parents: Union[bool, Sequence[PathLike]] = True,
          allowed_root: Optional[PathLike] = None, size_rule: str = "auto",
          max_problems: int = 1000, follow_locators: bool = True) -> CheckReport:
    """Validate a VHD's structure (and, with ``parents``, its chain).

    Problems are reported, not raised; an unreadable file gives one problem.
    ``parents`` may also be a list of explicit parent paths;
    ``follow_locators`` as for :func:`open`.
    """
    ffi, lib = native.ffi, native.lib
    explicit = None if isinstance(parents, bool) else list(parents)
    opts = _Opts(explicit, allowed_root, size_rule, follow_locators=follow_locators)
    cap = max(1, int(max_problems))
    arr = ffi.new("vk_problem[]", cap)
    n = ffi.new("size_t *")
    err = native.new_err()
    native.check(lib.vk_check(_fspath(path), opts.c, 1 if parents is not False else 0, arr, cap, n, err), err)
    total = int(n[0])
    probs = []
    for i in range(min(total, cap)):
        p = arr[i]
        off = int(p.offset)
        probs.append(Problem(_str(p.code), None if off >= 2**64 - 1 else off, _str(p.msg), int(p.layer)))
    if total > cap:
        probs.append(Problem("TOO_MANY_PROBLEMS", None, f"{total - cap} more problems not listed"))
    return CheckReport(os.fspath(path), probs)


def probe(path: PathLike) -> Optional[str]:
    """"fixed" | "dynamic" | "differencing" if ``path`` looks like a VHD, else None."""
    err = native.new_err()
    t = native.ffi.new("uint32_t *")
    native.check(native.lib.vk_probe(_fspath(path), t, err), err)
    return DISK_TYPES.get(int(t[0]))


def probe_format(path: PathLike) -> Optional[str]:
    """"vhdx" if ``path`` starts with the VHDX identifier, "vhd" if it has a
    VHD footer, else None (raw, or something else)."""
    err = native.new_err()
    x = native.ffi.new("int *")
    native.check(native.lib.vk_probe_vhdx(_fspath(path), x, err), err)
    if x[0]:
        return "vhdx"
    return "vhd" if probe(path) is not None else None


def map(path: PathLike, **kw: Any) -> List[Extent]:  # noqa: A001 - mirrors `qemu-img map`
    """Allocation map of the virtual disk (see :meth:`VhdStream.map`)."""
    with open(path, **kw) as s:
        return s.map()


