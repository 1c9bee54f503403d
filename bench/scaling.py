"""Scaling sweep: convert, coalesce and check at several virtual sizes and
allocation levels, so the harness can fit cost against allocated data and
against virtual size separately.

Points: 256 MiB, 1 GiB, 4 GiB × 10 / 50 / 100 % allocated, plus 16 GiB at 10 %
("16 GiB sparse").  For chains, the three layers together hold the stated share
of the virtual size (base 60 %, each child 20 % of it).
"""
from __future__ import annotations

from .gen import GiB, MiB, ChainSpec, DiskSpec
from .suite import WorkloadDef
from . import workloads as W


def points(quick: bool) -> list[tuple[int, float]]:
    if quick:
        return [(4 * MiB, 0.5), (8 * MiB, 0.5), (16 * MiB, 0.1), (16 * MiB, 1.0)]
    pts = [(s, a) for s in (256 * MiB, GiB, 4 * GiB) for a in (0.1, 0.5, 1.0)]
    return pts + [(16 * GiB, 0.1)]


def _label(size: int, a: float) -> str:
    return f"{size // MiB}M" if size < GiB else f"{size // GiB}G"


def defs(quick: bool) -> list[WorkloadDef]:
    out = []
    for size, a in points(quick):
        tag = f"{_label(size, a)}-a{int(a * 100)}"

        def conv(ctx, size=size, a=a):
            spec = DiskSpec(size, random=a / 2, text=a / 2, seed=11)
            w = W.convert_raw_dynamic(ctx, spec)
            w.params.update(alloc_frac=a, alloc_bytes=spec.allocated_bytes)
            return w

        def coal(ctx, size=size, a=a):
            spec = ChainSpec(size, allocs=(0.6 * a, 0.2 * a, 0.2 * a), seed=13)
            w = W.coalesce(ctx, spec)
            w.variants = w.variants[:2]          # vhdkit and qemu-img on the flattened raw
            w.params.update(alloc_frac=a, alloc_bytes=spec.layer_bytes())
            return w

        def chk(ctx, size=size, a=a):
            spec = DiskSpec(size, random=a, seed=17, hollow=True)
            w = W._meta(ctx, "check", spec)
            w.variants = [w.variants[0], w.variants[3], w.variants[1]]   # CLI, API in process, vhdiinfo
            w.params = {**W._disk_params(spec), "alloc_frac": a, "alloc_bytes": spec.allocated_bytes}
            return w

        out += [
            WorkloadDef(f"scale.convert.{tag}", "scaling", f"raw → dynamic VHD, {tag}", conv, [("convert",)]),
            WorkloadDef(f"scale.coalesce.{tag}", "scaling", f"coalesce depth-3 chain, {tag}", coal, [("coalesce",)]),
            WorkloadDef(f"scale.check.{tag}", "scaling", f"check dynamic VHD, {tag}", chk, [("check",)]),
        ]
    for d in out:
        d.scaling = d.name.split(".")[1]
    return out
