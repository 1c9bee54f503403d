"""CLI commands: snapshot, coalesce, reparent, chain (see vhdkit/cli/__init__.py).

Thin layer over :mod:`vhdkit.vhd.chain`: parse options, call, print.
"""
from __future__ import annotations

import click

from . import _reads, main
from ._common import FORMAT, SIZE, emit, force_option, json_option, output_format, refuse_terminal, sized
from ..progress import Progress


@main.command("snapshot")
@click.argument("parent")
@click.argument("child")
@click.option("--size", type=SIZE, default=None, help="Virtual size of CHILD (default: the parent's; may be larger).")
@click.option("--block-size", type=SIZE, default=None, help="Block size of CHILD (default: the parent's).")
@click.option("--parent", "parents", multiple=True,
              help="Explicit parent path of a differencing PARENT (its parent first; repeatable).")
@click.option("--force", is_flag=True, help="Replace CHILD if it exists.")
@json_option
def snapshot_cmd(parent, child, size, block_size, parents, force, as_json):
    """Create CHILD, an empty differencing VHD over PARENT.

    The parent's UUID and timestamp are recorded, and three locators
    (W2ru relative, W2ku absolute, MacX URL) so the chain survives being
    moved as a directory.

    \b
    Example:
      vhdkit snapshot base.vhd snap1.vhd
    """
    from ..vhd.chain import snapshot
    r = snapshot(parent, child, size=size, block_size=block_size, parents=list(parents) or None, overwrite=force)
    emit(r.to_dict(), as_json,
         lambda d: f"{d['path']}: differencing VHD over {d['parent']}, {sized(d['virtual_size'])}, "
                   f"block size {sized(d['block_size'])}, uuid {d['uuid']}")


@main.command("coalesce")
@click.argument("leaf")
@click.option("-o", "--output", "out", default=None, help="Write the flattened chain to this new file.")
@click.option("-O", "out_format", type=FORMAT, default=None,
              help="-o's format: vhd (or vpc) or raw; default from its extension (as convert).")
@click.option("--type", "disk_type", type=click.Choice(["dynamic", "fixed"]), default="dynamic", show_default=True)
@click.option("--block-size", type=SIZE, default=None, help="Dynamic output block size (default 2M).")
@click.option("--into-parent", is_flag=True, help="Merge LEAF into its parent in place (crash-safe, resumable).")
@click.option("--parent", "parents", multiple=True,
              help="Explicit parent path of LEAF (leaf's parent first; repeatable).")
@click.option("--no-sync", is_flag=True,
              help="-o: do not fsync the output (it is still renamed into place only when complete).")
@force_option
@json_option
def coalesce_cmd(leaf, out, out_format, disk_type, block_size, into_parent, parents, no_sync, force, as_json):
    """Flatten the chain ending at LEAF into one standalone image (-o), or
    merge LEAF into its parent in place (--into-parent).

    -o reads each allocated sector once, from the topmost layer holding it,
    and writes a new VHD (new UUID, no parent) or raw file atomically
    (fsynced unless --no-sync).
    --into-parent writes every sector of LEAF into its parent; an
    interrupted merge leaves the parent consistent and rerunning completes it
    (docs/coalesce.md).

    \b
    Example:
      vhdkit coalesce snap2.vhd -o export.vhd --type dynamic
      vhdkit coalesce snap2.vhd --into-parent
    """
    from ..vhd import chain
    if into_parent == (out is not None):
        raise click.UsageError("give either -o OUT or --into-parent")
    if into_parent:
        with Progress(f"merge {leaf}") as prog:
            r = chain.coalesce_into_parent(leaf, parents=list(parents) or None, progress=prog)
        emit(r.to_dict(), as_json,
             lambda d: f"merged {d['bytes_merged']} bytes of {d['child']} into {d['parent']} "
                       f"({d['blocks_allocated']} new blocks{', resumed' if d['resumed'] else ''})")
        return
    out_format = output_format(out, out_format)
    refuse_terminal(out, "image data")
    with Progress(f"coalesce {leaf}") as prog:
        r = chain.coalesce(leaf, out, type=disk_type, out_format=out_format, block_size=block_size,
                           parents=list(parents) or None, progress=prog, sync=not no_sync, overwrite=force)
    if out != "-":
        emit(r.to_dict(), as_json,
             lambda d: f"{d['path']}: {d['disk_type'] or 'raw'}, {sized(d['virtual_size'])} from {d['layers']} "
                       f"layers; read {sized(d['bytes_read'])} for {sized(d['data_needed'])} of data "
                       f"(ratio {d['read_ratio']:.4f})")


@main.command("reparent")
@click.argument("child")
@click.argument("new_parent")
@click.option("--unsafe", is_flag=True, help="Skip the UUID check (like qemu-img rebase -u).")
@click.option("--parent", "parents", multiple=True, help="Explicit parent path of NEW_PARENT (repeatable).")
@json_option
def reparent_cmd(child, new_parent, unsafe, parents, as_json):
    """Point the differencing disk CHILD at NEW_PARENT (UUID, timestamp,
    name and locators rewritten), after checking NEW_PARENT is the disk
    CHILD expects.

    \b
    Example:
      vhdkit reparent 0.vhd 1.vhd
    """
    from ..vhd.chain import reparent
    r = reparent(child, new_parent, unsafe=unsafe, parents=list(parents) or None)
    emit(r.to_dict(), as_json, lambda d: f"{d['child']}: parent is now {d['parent']} (uuid {d['parent_uuid']})")


@main.command("chain")
@click.argument("leaf")
@click.option("--parent", "parents", multiple=True, help="Explicit parent path of LEAF (repeatable).")
@json_option
def chain_cmd(leaf, parents, as_json):
    """List the chain from LEAF to its base: UUIDs, sizes, allocated bytes
    and how each parent was found.

    \b
    Example:
      vhdkit chain snap2.vhd --json
    """
    _reads.chain(leaf, parents, as_json)
