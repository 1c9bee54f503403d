"""CLI commands: info, check, map (see vhdkit/cli/__init__.py)."""
from __future__ import annotations

import sys
from typing import Any, Dict, List

import click

from . import main
from ._common import emit, qemu_json_option, sized
from ..errors import VhdkitError

_RULES = ["auto", "current", "chs", "original"]


def _info_text(d: Dict[str, Any]) -> str:
    lines = [
        f"image: {d['path']}",
        f"type: {d['disk_type']}",
        f"virtual size: {sized(d['virtual_size'])} (rule: {d['size_rule']})",
        f"current size: {sized(d['current_size'])}",
        f"original size: {sized(d['original_size'])}",
        f"CHS size: {sized(d['chs_size'])} (geometry {'/'.join(str(g) for g in d['geometry'])})",
        f"creator: {d['creator_app']!r} {d['creator_version']} on {d['creator_os']!r}",
        f"uuid: {d['uuid']}",
        f"timestamp: {d['timestamp']}",
        f"saved state: {'yes' if d['saved_state'] else 'no'}",
        f"file size: {sized(d['file_size'])}",
    ]
    if d["block_size"] is not None:
        lines += [
            f"block size: {sized(d['block_size'])}",
            f"BAT entries used/max: {d['bat_entries_used']}/{d['max_table_entries']}",
            f"allocated: {sized(d['allocated_bytes'])}",
        ]
    if d["disk_type"] == "differencing":
        lines += [
            f"parent uuid: {d['parent_uuid']}",
            f"parent name: {d['parent_name']}",
            f"parent timestamp: {d['parent_timestamp']}",
        ]
        for loc in d["locators"]:
            lines.append(f"locator {loc['code']}: {loc['path']!r} (offset {loc['data_offset']}, "
                         f"length {loc['data_length']}, space {loc['data_space']})")
    if d.get("chain"):
        lines.append("chain:")
        for i, c in enumerate(d["chain"]):
            lines.append(f"  [{i}] {c['path']} ({c['disk_type']}, {c['uuid']})")
    if d.get("chain_error"):
        lines.append(f"chain: not resolved: {d['chain_error']}")
    return "\n".join(lines)


@main.command("info")
@click.argument("image")
@click.option("--parent", "parents", multiple=True, 
              help="Explicit parent path (repeat for deeper layers, the leaf's parent first).")
@click.option("--size-rule", type=click.Choice(_RULES), default="auto", show_default=True,
              help="How to choose the virtual size: by creator like qemu (auto), or force one.")
@qemu_json_option
def info_cmd(image: str, parents: tuple, size_rule: str, as_json: bool) -> None:
    """Show what a VHD is: type, sizes, geometry, creator, UUID, BAT, parent chain.

    \b
    Example:
      vhdkit info disk.vhd --json
      vhdkit info --output=json disk.vhd
    """
    from ..vhd import read

    inf = read.info(image, size_rule=size_rule)
    d = inf.to_dict()
    if inf.disk_type == "differencing":
        try:
            with read.open(image, parents=list(parents) or None, size_rule=size_rule) as s:
                d["chain"] = [c.to_dict() for c in s.chain]
        except VhdkitError as exc:
            d["chain"] = None
            d["chain_error"] = exc.message
    else:
        d["chain"] = [d.copy()]
    emit(d, as_json, _info_text)


@main.command("check")
@click.argument("image")
@click.option("--parents/--no-parents", default=True, show_default=True,
              help="Also resolve and check the parent chain of a differencing disk.")
@qemu_json_option
def check_cmd(image: str, parents: bool, as_json: bool) -> None:
    """Validate a VHD's structure; exit status 1 when any problem is found.

    Checks footer, footer copy, dynamic header, BAT layout, locators and the
    parent chain, as `vhd-util check` does.

    \b
    Example:
      vhdkit check disk.vhd --json
    """
    from ..vhd import read

    rep = read.check(image, parents=parents)

    def human(d: Dict[str, Any]) -> str:
        if d["ok"]:
            return f"{d['path']}: no problems found"
        out = [f"{d['path']}: {len(d['problems'])} problem(s)"]
        for p in d["problems"]:
            where = f" at offset {p['offset']}" if p["offset"] is not None else ""
            layer = f" [parent layer {p['layer']}]" if p["layer"] else ""
            out.append(f"  {p['code']}{where}{layer}: {p['message']}")
        return "\n".join(out)

    emit(rep.to_dict(), as_json, human)
    if not rep.ok:
        sys.exit(1)


@main.command("map")
@click.argument("image")
@click.option("--parent", "parents", multiple=True, 
              help="Explicit parent path (repeat for deeper layers).")
@qemu_json_option
def map_cmd(image: str, parents: tuple, as_json: bool) -> None:
    """Show which ranges of the virtual disk hold data, and in which layer (like qemu-img map).

    \b
    Example:
      vhdkit map child.vhd --json
    """
    from ..vhd import read

    with read.open(image, parents=list(parents) or None) as s:
        extents = s.map()
    rows: List[Dict[str, Any]] = [
        {"start": e.offset, "length": e.length, "data": e.allocated, "zero": not e.allocated,
         "depth": e.layer, "offset": e.file_offset, "file": e.path}
        for e in extents
    ]

    def human(rs: List[Dict[str, Any]]) -> str:
        out = [f"{'Offset':<20}{'Length':<20}{'Mapped to':<20}File"]
        for r in rs:
            if r["data"]:
                out.append(f"{hex(r['start']):<20}{hex(r['length']):<20}{hex(r['offset']):<20}{r['file']}")
        return "\n".join(out)

    emit(rows, as_json, human)
