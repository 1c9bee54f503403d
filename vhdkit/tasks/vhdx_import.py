"""Import of a VHDX (``"import_from_format": "vhdx"``, :mod:`vhdkit.tasks.pipeline`).

The VHDX is validated with the rigour of a VHD import -- a VHDX at all
(else 396, saying what the file is), not differencing (721), virtual and
file size within the limits (413, 609), ``check`` clean (397) -- then
converted to a dynamic VHD (all-zero blocks unallocated), which the import
validates and packs like any VHD; the image's disk_format is ``vhd``.

A log replay still pending (the VHDX was not closed cleanly) is not a
failure: the conversion reads the disk as the replayed log makes it, in
memory, so the replay happens on the import's own copy and the customer's
object is never written.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import VhdkitError

#: check's code for a pending log replay, which the conversion replays
LOG_PENDING = "VHDX_LOG_REPLAY_PENDING"


def to_vhd(src: Path, dst: Path, cfg) -> Path:
    """Validate the VHDX at ``src`` and convert it into the dynamic VHD ``dst``."""
    from .pipeline import TaskFailed
    from ..vhd import check, convert, info, probe_format

    size = src.stat().st_size
    if size > cfg.max_file_size:
        raise TaskFailed(609, f"the file is {size} bytes; the limit is {cfg.max_file_size}")
    kind = probe_format(src)
    if kind == "vhd":
        raise TaskFailed(396, "the object is a VHD, not a VHDX: import it with import_from_format 'vhd'")
    if kind != "vhdx":
        raise TaskFailed(396, "the object is not a VHDX (no 'vhdxfile' identifier at its start)")
    try:
        vi = info(src)
    except VhdkitError as e:
        raise TaskFailed(397, f"the VHDX cannot be opened: {e.message}") from None
    if vi.disk_type == "differencing":
        raise TaskFailed(721, "the VHDX is a differencing disk: it has a parent disk; "
                              "merge it into a standalone VHDX or VHD first")
    if vi.virtual_size > cfg.max_virtual_size:
        raise TaskFailed(413, f"the virtual size is {vi.virtual_size} bytes; "
                              f"the limit is {cfg.max_virtual_size}")
    problems = [p for p in check(src, parents=False).problems if p.code != LOG_PENDING]
    if problems:
        p = problems[0]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise TaskFailed(397, f"the VHDX failed validation: {p.code}: {p.message}{more}")
    try:
        convert(src, dst, src_format="vhdx", type="dynamic", sync=False)
    except VhdkitError as e:
        raise TaskFailed(397, f"the VHDX cannot be converted: {e.message}") from None
    return dst
