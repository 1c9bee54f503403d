"""CLI commands: create, convert, modify, repair, compare (see vhdkit/cli/__init__.py).

Thin layer over :mod:`vhdkit.vhd.write`: parse options, call, print.
"""
from __future__ import annotations

from typing import Optional

import click

from . import _reads, main
from ._common import (FORMAT, INPUT_FORMAT, SIZE, emit, fail, force_option, image_format, json_option,
                      output_format, refuse_terminal, settings, sized)
from ..progress import Progress

def _qemu_options(text: Optional[str]) -> dict:
    """qemu-img's ``-o`` for VHD output: subformat=dynamic|fixed, force_size=on|off."""
    out: dict = {}
    for item in filter(None, (text or "").split(",")):
        key, sep, val = item.partition("=")
        ok = {"subformat": ("dynamic", "fixed"), "force_size": ("on", "off")}.get(key)
        if not sep or ok is None or val not in ok:
            raise click.BadParameter(f"{item!r}: supported are subformat=dynamic|fixed and force_size=on|off",
                                     param_hint="-o")
        out[key] = val
    return out


def _size_note(r) -> None:
    if r.size_adjusted:
        click.echo(f"vhdkit: note: size rounded up from {r.requested_size} to {r.virtual_size} bytes "
                   f"({r.size_rule} rule)", err=True)


def _describe(d: dict) -> str:
    if d["format"] == "raw":
        return f"{d['path']}: raw, {sized(d['virtual_size'])}, {sized(d['data_bytes'])} of data written"
    s = (f"{d['path']}: {d['disk_type']} VHD, {sized(d['virtual_size'])}, "
         f"CHS {'/'.join(map(str, d['geometry']))}, uuid {d['uuid']}")
    if d["disk_type"] == "dynamic":
        s += f", {d['blocks_allocated']}/{d['max_table_entries']} blocks of {sized(d['block_size'])} allocated"
    return s


def _finish(r, out: str, as_json: bool) -> None:
    _size_note(r)
    if out != "-":                      # stdout carries the image itself
        emit(r.to_dict(), as_json, _describe)


_NO_SYNC_HELP = ("Do not fsync the output (like cp and qemu-img): still written to a temporary file and "
                 "renamed when complete, but it may be lost if the machine crashes soon after.")


def _layout_options(f):
    """--type, --block-size, --size-rule, --azure (shared by create and convert)."""
    opts = [
        click.option("--type", "disk_type", type=click.Choice(["dynamic", "fixed"]), default=None,
                     help="VHD type [default: dynamic]."),
        click.option("--block-size", type=SIZE, default=None, help="Dynamic block size (512K..256M, default 2M)."),
        click.option("--size-rule", type=click.Choice(["exact", "chs"]), default="exact", show_default=True,
                     help="exact: keep the size; chs: round up to a CHS-representable size like Virtual PC."),
        click.option("--azure", is_flag=True, help="Fixed VHD whose size is a whole number of MiB (rounded up)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@main.command("create")
@click.argument("out")
@click.argument("size", type=SIZE)
@_layout_options
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--no-sync", is_flag=True, help=_NO_SYNC_HELP)
@json_option
def create_cmd(out, size, disk_type, block_size, size_rule, azure, force, no_sync, as_json):
    """Create an empty VHD of SIZE bytes (suffixes K, M, G, T).

    \b
    Example:
      vhdkit create disk.vhd 10G --type dynamic
    """
    from ..vhd.write import create
    r = create(out, size, type=disk_type or "dynamic", block_size=block_size, size_rule=size_rule, azure=azure,
               overwrite=force, sync=not no_sync)
    _finish(r, out, as_json)


@main.command("convert")
@click.argument("src")
@click.argument("dst")
@click.option("-f", "src_format", type=INPUT_FORMAT, default=None,
              help="Input format: vhd (or vpc), vhdx or raw (default: detected from the footer or the VHDX "
                   "identifier).")
@click.option("-O", "out_format", type=FORMAT, default=None,
              help="Output format: vhd (or vpc, qemu-img's name), a VHD of --type; or raw, a sparse raw file.  "
                   "Default: from DST's extension (.vhd/.vpc: vhd; .raw/.img: raw; stdout: vhd); "
                   "any other name needs -O.")
@click.option("-o", "qemu_opts", metavar="subformat=dynamic|fixed[,force_size=on|off]",
              help="qemu-img's VHD options: subformat is --type; force_size=off is --size-rule chs.")
@_layout_options
@click.option("--parent", "parents", multiple=True,
              help="Explicit parent path of a differencing SRC (leaf's parent first; repeatable).")
@click.option("-p", "--progress", "show_progress", is_flag=True,
              help="Show progress on stderr even when it is not a terminal (as qemu-img -p).")
@force_option
@click.option("--no-sync", is_flag=True, help=_NO_SYNC_HELP)
@json_option
def convert_cmd(src, dst, src_format, out_format, qemu_opts, disk_type, block_size, size_rule, azure, parents,
                show_progress, force, no_sync, as_json):
    """Convert SRC (raw, VHD or VHDX: fixed, dynamic, differencing flattened) to DST.

    "-" as SRC reads raw data from stdin; "-" as DST writes raw or fixed
    output to stdout (a dynamic VHD needs a file: its BAT is written last).
    DST appears only when complete, and is fsynced (durable) unless --no-sync;
    an existing DST is replaced only with --force.  qemu-img's spellings
    work: -O vpc, -o subformat=fixed, -p.

    \b
    Example:
      vhdkit convert disk.raw disk.vhd --type dynamic
      vhdkit convert -p -O vpc -o subformat=fixed disk.raw disk.vhd
    """
    from .. import native
    from ..vhd.write import convert

    native.set_options(io_threads=settings().io_threads)
    out_format = output_format(dst, out_format)
    qo = _qemu_options(qemu_opts)
    if qo and out_format != "vhd":
        raise click.UsageError("-o sets VHD options; the output format is raw")
    sub = qo.get("subformat")
    if sub and disk_type and sub != disk_type:
        raise click.UsageError(f"-o subformat={sub} contradicts --type {disk_type}")
    disk_type = disk_type or sub or "dynamic"
    if qo.get("force_size") == "off":
        size_rule = "chs"
    if dst == "-" and out_format == "vhd" and disk_type == "dynamic" and not azure:
        raise click.UsageError("a dynamic VHD cannot be streamed to stdout; use --type fixed, -O raw or a file")
    refuse_terminal(dst, "image data")
    with Progress(f"convert {src}", enabled=True if show_progress else None) as prog:
        r = convert(src, dst, src_format=image_format(src_format), out_format=out_format, type=disk_type,
                    block_size=block_size, size_rule=size_rule, azure=azure, parents=list(parents) or None,
                    progress=prog, sync=not no_sync, overwrite=force)
    _finish(r, dst, as_json)


@main.command("modify")
@click.argument("image")
@click.option("--new-uuid", is_flag=True, help="Give the image a new random UUID.")
@click.option("--uuid", default=None, help="Set this UUID.")
@click.option("--timestamp", default=None, help="'now' or an ISO 8601 time.")
@click.option("--creator", default=None, help="Creator application (up to 4 characters).")
@click.option("--size", type=SIZE, default=None, help="New virtual size.")
@click.option("--size-rule", type=click.Choice(["exact", "chs"]), default="exact", show_default=True)
@click.option("--force", is_flag=True, help="Allow shrinking below allocated data (it is discarded).")
@json_option
def modify_cmd(image, new_uuid, uuid, timestamp, creator, size, size_rule, force, as_json):
    """Rewrite footer/header fields of IMAGE in place (both footer copies).

    \b
    Example:
      vhdkit modify disk.vhd --new-uuid --size 20G
    """
    from ..vhd.write import modify
    if new_uuid and uuid is not None:
        raise click.UsageError("give either --new-uuid or --uuid, not both")
    r = modify(image, new_uuid=new_uuid, uuid=uuid, timestamp=timestamp, creator=creator, size=size,
               size_rule=size_rule, force=force)
    emit(r.to_dict(), as_json,
         lambda d: f"{d['path']}: {d['disk_type']}, size {sized(d['old_size'])} -> {sized(d['new_size'])}, "
                   f"uuid {d['uuid']}"
                   + (", BAT relocated" if d["bat_relocated"] else ""))


@main.command("repair")
@click.argument("image")
@click.option("--dry-run", "-n", is_flag=True, help="Only say what would be done (and what would be lost).")
@click.option("--force", is_flag=True,
              help="Repair even if blocks whose data lay past the end of a cut-short image then read as zeros.")
@json_option
def repair_cmd(image, dry_run, force, as_json):
    """Restore IMAGE's end footer from the copy at offset 0, or the reverse.

    A dynamic VHD cut short inside its data gets a new end footer after its
    last block, but the blocks whose data lay past the cut then read as
    zeros: that repair is refused, naming those blocks (virtual byte
    ranges), unless --force.  Exit 1 when refused.  Damage other than the
    footers (a dynamic header or BAT the reader refuses) is not repaired:
    exit 1 saying what is wrong.
    For a VHDX: write a pending log replay into the file (crash-safe: the log
    stays active until the replayed data is on disk).

    \b
    Example:
      vhdkit repair disk.vhd
    """
    from ..errors import DataLossError
    from ..vhd.write import describe_ranges, repair
    try:
        r = repair(image, dry_run=dry_run, force=force)
    except DataLossError as exc:
        if as_json:
            emit(dict(exc.to_dict(), path=image, refused=True), True)
        fail(click.get_current_context(), f"{exc.message}; --force repairs it anyway")

    def human(d):
        s = f"{d['path']}: {d['action']}" + (" (dry run)" if d["dry_run"] else "")
        if d["lost"]:
            s += (f"\n{'would lose' if d['dry_run'] else 'LOST'}: {len(d['lost'])} block(s) now read as zeros: "
                  f"{describe_ranges(d['lost'], most=len(d['lost']))}")
        return s

    emit(r.to_dict(), as_json, human)


@main.command("compare")
@click.argument("a")
@click.argument("b")
@click.option("-f", "a_format", type=INPUT_FORMAT, default=None, help="Format of A (vhd, vpc, vhdx or raw).")
@click.option("-F", "b_format", type=INPUT_FORMAT, default=None, help="Format of B (vhd, vpc, vhdx or raw).")
@json_option
def compare_cmd(a, b, a_format, b_format, as_json):
    """Compare the contents of two images (exit 0 identical, 1 different, 2 error).

    \b
    Example:
      vhdkit compare disk.vhd disk.raw
    """
    _reads.compare(a, b, a_format, b_format, as_json)
