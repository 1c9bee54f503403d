"""CLI commands: info, check, map (see vhdkit/cli/__init__.py); their work is in :mod:`vhdkit.cli._reads`."""
from __future__ import annotations

from typing import Tuple

import click

from . import _reads, main
from ._common import qemu_json_option

_RULES = ["auto", "current", "chs", "original"]


#: No click.Path check: a file problem is the operation's one-line error, exit 1 (cli/_common.py).
_IMAGES = click.argument("images", metavar="IMAGE...", nargs=-1, required=True)


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
    _reads.info(images, parents, size_rule, as_json)


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
    _reads.check(images, parents, as_json)


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
    _reads.map_(image, parents, as_json)
