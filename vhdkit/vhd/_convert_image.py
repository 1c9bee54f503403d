"""Glue between the writer and the reader: a VHD (chain) as the source of a
conversion or a comparison.  Uses the reader's native handle (read.py)."""
from __future__ import annotations

import os

TYPE_CHECKING = False   # typing is not imported at run time (start-up)
if TYPE_CHECKING:
    from typing import Callable

from ..native import check, ffi, lib, new_err
from . import read as _read


def _open(path: str, parents, allowed_root):
    if isinstance(parents, (str, os.PathLike)):
        parents = [parents]
    return _read._open_native(path, _read._Opts(list(parents) if parents else None, allowed_root, "auto"))


def convert_image(src: str, out_fd: int, opts, res, err, *, parents=None, allowed_root=None,
                  run: Callable) -> None:
    img = _open(src, parents, allowed_root)
    try:
        total = int(lib.vk_image_size(img))
        check(run(lambda: lib.vk_convert_image(img, out_fd, opts, res, err), total), err)
    finally:
        ffi.release(img)


def compare_images(a: str, b: str, a_format, b_format, *, parents, allowed_root, detect, result):
    handles = []
    sides = []
    try:
        for path, fmt in ((a, a_format), (b, b_format)):
            if not os.path.exists(path):
                from ..errors import NotFoundError
                raise NotFoundError(f"no such file: {path}")
            fmt = fmt or detect(path)
            if fmt in ("vhd", "vhdx"):
                img = _open(path, parents, allowed_root)
                handles.append(img)
                sides.append((img, -1))
            else:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                handles.append(fd)
                sides.append((ffi.NULL, fd))
        r = ffi.new("vk_compare_result *")
        err = new_err()
        check(lib.vk_compare(sides[0][0], sides[0][1], sides[1][0], sides[1][1], r, err), err)
    finally:
        for h in handles:
            if isinstance(h, int):
                os.close(h)
            else:
                ffi.release(h)
    identical = bool(r.identical)
    diff = None if identical else int(r.first_difference)
    if identical:
        msg = "Images are identical."
    else:
        msg = f"Content mismatch at offset {diff}!"
    return result(a=a, b=b, identical=identical, size_a=int(r.size_a), size_b=int(r.size_b),
                  first_difference=diff, message=msg)
