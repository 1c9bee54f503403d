"""CLI commands: info, check, map (see vhdkit/cli/__init__.py)."""
from __future__ import annotations

import sys
from typing import Any, Callable, Dict, List, Tuple

import click

from . import main
from ._common import cli_message, emit, qemu_json_option, sized
from ..errors import VhdkitError

_RULES = ["auto", "current", "chs", "original"]


def _vhdx_text(d: Dict[str, Any]) -> List[str]:
    x = d["vhdx"]
    md, bat, log, rt = x["metadata"], x["bat"], x["log"], x["region_table"]
    lines = [
        f"image: {d['path']}",
        "format: vhdx",
        f"type: {d['disk_type']}",
        f"virtual size: {sized(d['virtual_size'])}",
        f"creator: {x['creator']!r}",
        f"file size: {sized(d['file_size'])}",
        f"allocated: {sized(d['allocated_bytes'])}",
    ]
    for i, h in enumerate(x["headers"]):
        lines.append(f"header {i + 1}: {'valid' if h['valid'] else 'INVALID'}, sequence {h['sequence_number']}"
                     + (" (current)" if h["current"] else ""))
    lines += [
        f"data write guid: {x['data_write_guid']}",
        f"region table: copy {rt['copy']}, {rt['entries']} entries; BAT at {rt['bat']['offset']} "
        f"({rt['bat']['length']} bytes), metadata at {rt['metadata']['offset']} ({rt['metadata']['length']} bytes)",
        f"block size: {md['block_size']}",
        f"sector size: logical {md['logical_sector_size']}, physical {md['physical_sector_size']}",
        f"leave blocks allocated: {'yes' if md['leave_blocks_allocated'] else 'no'}",
        f"has parent: {'yes' if md['has_parent'] else 'no'}",
        f"page 83 data: {md['page83_data']}",
        f"BAT: {bat['entries']} entries, chunk ratio {bat['chunk_ratio']}, {bat['payload_blocks']} payload blocks: "
        + ", ".join(f"{k} {v}" for k, v in bat["blocks_by_state"].items() if v),
        f"log: {log['length']} bytes at {log['offset']}, "
        + (f"REPLAY PENDING ({log['entries']} entries; reads show the replayed disk, "
           "'vhdkit repair' writes it)" if log["replay_pending"] else "clean"),
    ]
    pl = x.get("parent_locator")
    if pl:
        for k in ("parent_linkage", "parent_linkage2", "relative_path", "volume_path", "absolute_win32_path"):
            if pl.get(k):
                lines.append(f"parent locator {k}: {pl[k]}")
    return lines


def _each(images: Tuple[str, ...], as_json: bool, one: Callable[[str], Tuple[Dict[str, Any], bool]],
          human: Callable[[Dict[str, Any]], str]) -> None:
    """Run ``one(image) -> (result, ok)`` for every IMAGE in one process (start-up
    is paid once).  One IMAGE: its result printed as always, its error the
    command's error.  Several: with --json one compact JSON object per line,
    else the human texts separated by a blank line; an image that cannot be
    read is reported (``{"path", "error"}`` with --json, one line on stderr
    otherwise) and the scan goes on; exit status 1 if any image failed."""
    if len(images) == 1:
        d, ok = one(images[0])
        emit(d, as_json, human)
        if not ok:
            sys.exit(1)
        return
    import json

    failed = False
    for n, image in enumerate(images):
        try:
            d, ok = one(image)
        except VhdkitError as exc:
            failed = True
            if as_json:
                click.echo(json.dumps({"path": image, "error": exc.to_dict()}))
            else:
                click.echo(f"vhdkit: error: {image}: {cli_message(exc)}", err=True)
            continue
        failed = failed or not ok
        click.echo(json.dumps(d, default=str) if as_json else ("\n" if n else "") + human(d))
    if failed:
        sys.exit(1)


#: No click.Path check: a file problem is the operation's one-line error, exit 1 (cli/_common.py).
_IMAGES = click.argument("images", metavar="IMAGE...", nargs=-1, required=True)


def _info_text(d: Dict[str, Any]) -> str:
    if d.get("format") == "vhdx":
        return "\n".join(_vhdx_text(d) + _chain_text(d))
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
    return "\n".join(lines + _chain_text(d))


def _chain_text(d: Dict[str, Any]) -> List[str]:
    lines = []
    if d.get("chain"):
        lines.append("chain:")
        for i, c in enumerate(d["chain"]):
            lines.append(f"  [{i}] {c['path']} ({c.get('format', 'vhd')} {c['disk_type']}, {c['uuid']})")
    if d.get("chain_error"):
        lines.append(f"chain: not resolved: {d['chain_error']}")
    return lines


@main.command("info")
@_IMAGES
@click.option("--parent", "parents", multiple=True,
              help="Explicit parent path (repeat for deeper layers, the leaf's parent first).")
@click.option("--size-rule", type=click.Choice(_RULES), default="auto", show_default=True,
              help="How to choose the virtual size: by creator like qemu (auto), or force one.")
@qemu_json_option
def info_cmd(images: Tuple[str, ...], parents: tuple, size_rule: str, as_json: bool) -> None:
    """Show what a VHD or VHDX is: type, sizes, geometry, creator, UUID, BAT, parent chain.

    For a VHDX: both headers (which is current), the region table, the
    metadata, BAT entries by state, the parent locator and the log state.

    Several images are described in one run: with --json one JSON object per
    line ({"path", "error"} for one that cannot be read); exit status 1 if any
    could not be read.

    \b
    Example:
      vhdkit info disk.vhd --json
      vhdkit info --output=json disk.vhd
      vhdkit info --json images/*.vhd
    """
    from ..vhd import read

    def one(image: str) -> Tuple[Dict[str, Any], bool]:
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
        return d, True

    _each(images, as_json, one, _info_text)


@main.command("check")
@_IMAGES
@click.option("--parents/--no-parents", default=True, show_default=True,
              help="Also resolve and check the parent chain of a differencing disk.")
@qemu_json_option
def check_cmd(images: Tuple[str, ...], parents: bool, as_json: bool) -> None:
    """Validate a VHD's structure; exit status 1 when any problem is found.

    Checks footer, footer copy, dynamic header, BAT layout, locators and the
    parent chain, as `vhd-util check` does.  For a VHDX: signatures, CRC-32C
    of headers, region tables and log entries, overlapping regions, BAT
    entries inside the file and not overlapping, block states valid for the
    disk type, and a log replay still pending (VHDX_LOG_REPLAY_PENDING).
    Several images are checked in one run: with --json one JSON object per
    line; exit status 1 if any has problems.

    \b
    Example:
      vhdkit check disk.vhd --json
      vhdkit check --json images/*.vhd
    """
    from ..vhd import read

    def one(image: str) -> Tuple[Dict[str, Any], bool]:
        rep = read.check(image, parents=parents)
        return rep.to_dict(), rep.ok

    def human(d: Dict[str, Any]) -> str:
        if d["ok"]:
            return f"{d['path']}: no problems found"
        out = [f"{d['path']}: {len(d['problems'])} problem(s)"]
        for p in d["problems"]:
            where = f" at offset {p['offset']}" if p["offset"] is not None else ""
            layer = f" [parent layer {p['layer']}]" if p["layer"] else ""
            out.append(f"  {p['code']}{where}{layer}: {p['message']}")
        return "\n".join(out)

    _each(images, as_json, one, human)


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
