"""CLI commands: packaging — compress, decompress, ova, segments, object.

Kept thin: every command parses its arguments, calls vhdkit.pack.streams / ova /
store / segments, and prints a result (``--json`` for scripts).  When the
payload itself goes to stdout (``-o -``), the ``--json`` summary goes to stderr.
"""
from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from typing import Iterator, Optional

import click

from . import main
from ._common import (SIZE, data_option, emit, force_option, identity_options, json_option, refuse_terminal,
                      settings, sized)
from ..errors import InvalidInputError
from ..fileutil import atomic_file, refuse_existing
from ..progress import Progress

_SUFFIX = {"gzip": ".gz", "zstd": ".zst"}


@contextmanager
def _in(path: str) -> Iterator:
    if path == "-":
        yield sys.stdin.buffer
    else:
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            from ..errors import NotFoundError

            raise NotFoundError(f"{path}: no such file") from None
        with f:
            yield f


def _emit_summary(obj: dict, as_json: bool, to_stdout: bool, human: str) -> None:
    if as_json:
        text = json.dumps(obj, indent=2, default=str)
        click.echo(text, err=not to_stdout)
    elif to_stdout:
        click.echo(human)


def _progress(label: str, total: Optional[int]) -> Progress:
    return Progress(label, total)


def _size_of(path: str) -> Optional[int]:
    if path == "-":
        return None
    try:
        st = os.stat(path)
        return st.st_size if os.path.isfile(path) else None
    except OSError:
        return None


# ------------------------------------------------------ compress/decompress
@main.command("compress")
@click.argument("input", default="-", metavar="[IN]")
@click.option("-o", "--output", help="Output file, or - for stdout (default IN.gz / IN.zst; stdout for stdin).")
@click.option("--format", "fmt", type=click.Choice(["gzip", "zstd"]), default="gzip", show_default=True)
@click.option("--level", type=int, help="gzip 0-9 (default 1, mapped onto ISA-L 0-3); zstd 1-22 (default 3).")
@click.option("--threads", type=int, default=0, help="Worker threads (default: all cores).")
@force_option
@json_option
def compress_cmd(input: str, output: Optional[str], fmt: str, level: Optional[int], threads: int, force: bool,
                 as_json: bool) -> None:
    """Compress IN (a file or - for stdin) with parallel gzip or zstd.

    \b
    Example:
      vhdkit compress disk.vhd -o disk.vhd.gz --level 1
    """
    from ..pack import streams

    out = output or ("-" if input == "-" else input + _SUFFIX[fmt])
    refuse_terminal(out, "compressed data")
    refuse_existing(out, force)
    total = _size_of(input)
    with _in(input) as src, _progress("compress", total) as prog:
        if out == "-":
            st = streams.compress(src, sys.stdout.buffer, format=fmt, level=level, threads=threads or None,
                                  progress=prog, total=total)
            sys.stdout.buffer.flush()
        else:
            with atomic_file(out) as f:
                st = streams.compress(src, f, format=fmt, level=level, threads=threads or None,
                                      progress=prog, total=total)
    d = dict(st.to_dict(), input=input, output=out)
    _emit_summary(d, as_json, out != "-", f"{input} -> {out}: {sized(st.bytes_in)} -> {sized(st.bytes_out)} "
                                          f"({100 * st.ratio:.1f}%)")


@main.command("decompress")
@click.argument("input", default="-", metavar="[IN]")
@click.option("-o", "--output", help="Output file, or - for stdout (default: IN without .gz/.zst; stdout for stdin).")
@click.option("--format", "fmt", type=click.Choice(["auto", "gzip", "zstd"]), default="auto", show_default=True)
@click.option("--max-size", type=SIZE, help="Refuse output larger than this (gzip-bomb guard), e.g. 100G.")
@force_option
@json_option
def decompress_cmd(input: str, output: Optional[str], fmt: str, max_size: Optional[int], force: bool,
                   as_json: bool) -> None:
    """Decompress a gzip (any members) or zstd stream, verifying its checksums.

    \b
    Example:
      vhdkit decompress disk.vhd.gz -o disk.vhd --max-size 100G
    """
    from ..pack import streams

    out = output
    if out is None:
        if input == "-":
            out = "-"
        else:
            for suf in (".gz", ".zst", ".gzip"):
                if input.endswith(suf) and len(input) > len(suf):
                    out = input[: -len(suf)]
                    break
            else:
                raise click.UsageError("cannot derive the output name from IN; use -o")
    refuse_terminal(out, "decompressed data")
    refuse_existing(out, force)
    total = _size_of(input)
    with _in(input) as src, _progress("decompress", total) as prog:
        if out == "-":
            st = streams.decompress(src, sys.stdout.buffer, format=fmt, max_output=max_size,
                                    progress=prog, name=input, total=total)
            sys.stdout.buffer.flush()
        else:
            with atomic_file(out) as f:
                st = streams.decompress(src, f, format=fmt, max_output=max_size, progress=prog, name=input,
                                        total=total)
    d = dict(st.to_dict(), input=input, output=out)
    _emit_summary(d, as_json, out != "-", f"{input} -> {out}: {sized(st.bytes_in)} -> {sized(st.bytes_out)}")


# -------------------------------------------------------------------- ova
@main.group("ova")
def ova_group() -> None:
    """OVA packages of one VHD or a snapshot chain (0.vhd leaf ... N.vhd base).

    \b
    Example:
      vhdkit ova pack disk.vhd -o disk.ova
    """


def _ova_human(rep) -> str:
    lines = [f"{rep.path}: {rep.layout} layout, descriptor {rep.descriptor}, manifest {rep.manifest or '-'}"
             + (f" ({rep.manifest_algorithm})" if rep.manifest_algorithm else "")]
    for m in rep.members:
        extra = ""
        if m.kind == "disk":
            extra = f" capacity={m.capacity} compression={m.compression or 'none'}"
        lines.append(f"  {m.kind:11} {m.size:>14}  {m.name}{extra}")
    if rep.hashed:
        lines.append("OK" if rep.ok else "PROBLEMS:")
    for p in rep.problems:
        lines.append(f"  - {p}")
    return "\n".join(lines)


@ova_group.command("pack")
@click.argument("disks", nargs=-1, required=True, metavar="DISK.vhd [PARENT.vhd ...]")
@click.option("-o", "--output", required=True, help="The .ova to write.")
@click.option("--compress", "compression", type=click.Choice(["gzip", "none"]), default="gzip", show_default=True)
@click.option("--name", help="Package name (descriptor NAME.ovf; default from the disk or output).")
@click.option("--level", type=int, help="gzip level 0-9 (default 1).")
@click.option("--threads", type=int, default=0, help="Compression threads (default: all cores).")
@force_option
@json_option
def ova_pack(disks, output, compression, name, level, threads, force, as_json) -> None:
    """Pack a VHD (or a chain, leaf first) into an OVA.

    A differencing disk needs its whole chain (`vhdkit chain LEAF` lists
    it): alone it is refused, as the package could never be read.

    One pass: each disk is compressed once straight into a temporary archive
    next to OUT (sizes and hashes are filled in at the end), then renamed.

    \b
    Example:
      vhdkit ova pack leaf.vhd base.vhd -o snapshot.ova --name snap
    """
    from ..pack import ova

    refuse_existing(output, force)
    with _progress("pack", None) as prog:
        res = ova.pack(list(disks), output, compress=compression, name=name, level=level,
                       threads=threads or None, progress=prog)
    emit(res, as_json, lambda r: f"{r['output']}: {len(r['disks'])} disk(s), {sized(r['size'])}, "
                                 f"compression {r['compression']}")


@ova_group.command("info")
@click.argument("ova_path", metavar="OVA")
@json_option
def ova_info(ova_path, as_json) -> None:
    """List an OVA's members and disks (no hashing; see verify).

    \b
    Example:
      vhdkit ova info disk.ova --json
    """
    from ..pack import ova

    rep = ova.info(ova_path)
    emit(rep.to_dict(), as_json, lambda _d: _ova_human(rep))


@ova_group.command("verify")
@click.argument("ova_path", metavar="OVA")
@json_option
def ova_verify(ova_path, as_json) -> None:
    """Check the manifest both ways, the hashes and the descriptor; exit 1 on problems.

    \b
    Example:
      vhdkit ova verify disk.ova
    """
    from ..pack import ova

    with _progress("verify", None) as prog:
        rep = ova.verify(ova_path, progress=prog)
    emit(rep.to_dict(), as_json, lambda _d: _ova_human(rep))
    if not rep.ok:
        sys.exit(1)


@ova_group.command("unpack")
@click.argument("ova_path", metavar="OVA")
@click.option("-d", "--dest", required=True, help="Directory to create with the extracted files.")
@click.option("--no-decompress", is_flag=True, help="Keep gzip-compressed disks compressed.")
@click.option("--max-size", type=SIZE, help="Cap on each decompressed disk (default: its capacity + metadata).")
@click.option("--no-verify", is_flag=True, help="Extract even if the manifest does not verify.")
@json_option
def ova_unpack(ova_path, dest, no_decompress, max_size, no_verify, as_json) -> None:
    """Unpack an OVA safely into a new directory (nothing left behind on failure).

    The manifest is verified first; a snapshot chain 0.vhd … N.vhd is then
    relinked inside DEST (each N.vhd's parent locators name N+1.vhd, relative
    and absolute), so it reads without the packer's original files.

    \b
    Example:
      vhdkit ova unpack disk.ova -d ./disk
      vhdkit ova unpack snap.ova -d ./snap && vhdkit chain ./snap/0.vhd
    """
    from ..pack import ova

    with _progress("unpack", None) as prog:
        rep = ova.unpack(ova_path, dest, decompress=not no_decompress, max_output=max_size,
                         require_valid=not no_verify, progress=prog)
    emit(rep.to_dict(), as_json, lambda _d: "\n".join(
        f"{m.extracted_to} ({sized(m.extracted_size)})" for m in rep.members if m.extracted_to))


# ---------------------------------------------------------- object store
#: The store account when no identity is given (the directory store has no roles).
_DEFAULT_ACCOUNT = "default"


def _store_options(f):
    """--store plus the data directory and identity every command takes (see
    :func:`vhdkit.cli._common.identity_options`); the store checks no roles."""
    f = click.option("--store", "store_dir",
                     help="Store directory (default DATA/objects), or swift+http(s)://PROXY "
                          "with VHDKIT_SWIFT_AUTH_URL/USER/KEY set [env VHDKIT_STORE].")(f)
    return data_option()(identity_options(f))


def _open_store(store_dir: Optional[str], data_dir: Optional[str], account: Optional[str]):
    """The object store of ``account`` (default: account ``default``)."""
    from ..store import open_configured_store

    if store_dir and not store_dir.startswith(("swift+", "dir:", "file:")):
        store_dir = f"dir:{store_dir}"   # --store DIR: a directory
    cfg = settings(store=store_dir, data_dir=data_dir, account=account)
    return open_configured_store(cfg.account or _DEFAULT_ACCOUNT, config=cfg)


def _copy_out_options(**output):
    """CONTAINER NAME -o OUTPUT (``output``: its click.option settings) --force,
    the store options and --json: a command that copies an object out."""
    def decorate(f):
        for d in (json_option, _store_options, force_option, click.option("-o", "--output", **output),
                  click.argument("name"), click.argument("container")):
            f = d(f)
        return f
    return decorate


def _store_to_output(output: str, force: bool, what: str, store_dir: Optional[str], data_dir: Optional[str],
                     account: Optional[str]):
    """The store to copy ``what`` from, once ``output`` may be written: not a
    terminal, not an existing file unless forced."""
    refuse_terminal(output, what)
    refuse_existing(output, force)
    return _open_store(store_dir, data_dir, account)


@main.group("object")
def object_group() -> None:
    """Objects in your account's object store (containers of named objects).

    The account is --account or VHDKIT_ACCOUNT (account "default" when
    neither is set); the store is DATA/objects, or --store / VHDKIT_STORE.

    \b
    Example:
      vhdkit object put images disk.vhd ./disk.vhd
      vhdkit object create-container exports
    """


def _parse_meta(items) -> dict:
    meta = {}
    for it in items:
        if "=" not in it:
            raise InvalidInputError(f"metadata {it!r} is not KEY=VALUE")
        k, v = it.split("=", 1)
        meta[k] = v
    return meta


@object_group.command("create-container")
@click.argument("container")
@_store_options
@json_option
def object_create_container(container, store_dir, data_dir, account, roles, as_json) -> None:
    """Create CONTAINER (nothing happens if it exists), e.g. to receive exports.

    \b
    Example:
      vhdkit object create-container exports --account A
    """
    st = _open_store(store_dir, data_dir, account)
    existed = container in st.list_containers()
    st.create_container(container)
    emit({"container": container, "created": not existed}, as_json,
         lambda d: f"{'created container' if d['created'] else 'container exists:'} {container}")


@object_group.command("put")
@click.argument("container")
@click.argument("name")
@click.argument("source", default="-", metavar="[FILE|-]")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Object metadata (repeatable).")
@_store_options
@json_option
def object_put(container, name, source, meta, store_dir, data_dir, account, roles, as_json) -> None:
    """Store FILE (or stdin) as CONTAINER/NAME, atomically (container created if needed).

    \b
    Example:
      vhdkit object put images disk.vhd disk.vhd --meta os=linux
    """
    st = _open_store(store_dir, data_dir, account)
    st.create_container(container)
    with _in(source) as f:
        info = st.put(container, name, f, metadata=_parse_meta(meta))
    emit(info.to_dict(), as_json, lambda d: f"{container}/{name}: {sized(d['size'])}, etag {d['etag']}")


@object_group.command("get")
@_copy_out_options(default="-", show_default=True, help="Output file or - for stdout (which must not be a terminal).")
def object_get(container, name, output, force, store_dir, data_dir, account, roles, as_json) -> None:
    """Write CONTAINER/NAME to a file (atomically) or stdout.

    \b
    Example:
      vhdkit object get images disk.vhd -o disk.vhd
    """
    from ..pack.streams import copy_stream

    st = _store_to_output(output, force, "object data", store_dir, data_dir, account)
    with st.get(container, name) as r:
        if output == "-":
            copy_stream(r, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            with atomic_file(output) as f:
                copy_stream(r, f)
        info = r.info
    _emit_summary(info.to_dict(), as_json, output != "-", f"{container}/{name} -> {output}: {sized(info.size)}")


@object_group.command("stat")
@click.argument("container")
@click.argument("name")
@_store_options
@json_option
def object_stat(container, name, store_dir, data_dir, account, roles, as_json) -> None:
    """Show an object's size, etag and metadata.

    \b
    Example:
      vhdkit object stat images disk.vhd --json
    """
    info = _open_store(store_dir, data_dir, account).head(container, name)
    emit(info.to_dict(), as_json, _stat_text)


def _stat_text(d: dict) -> str:
    """``key: value`` lines as ``swift stat`` prints them: ISO time, one line per metadata key."""
    import datetime as _dt

    when = _dt.datetime.fromtimestamp(d["last_modified"], _dt.timezone.utc)
    lines = [f"container: {d['container']}", f"object: {d['name']}", f"size: {sized(d['size'])}",
             f"etag: {d['etag']}", f"content type: {d['content_type']}",
             f"last modified: {when.isoformat(timespec='seconds').replace('+00:00', 'Z')}"]
    return "\n".join(lines + [f"meta {k}: {v}" for k, v in sorted(d["metadata"].items())])


@object_group.command("list")
@click.argument("container", required=False)
@click.option("--prefix", default="", help="Only names starting with this.")
@_store_options
@json_option
def object_list(container, prefix, store_dir, data_dir, account, roles, as_json) -> None:
    """List containers, or the objects of CONTAINER.

    \b
    Example:
      vhdkit object list images --prefix disk.vhd-
    """
    st = _open_store(store_dir, data_dir, account)
    if container is None:
        names = st.list_containers()
        emit(names, as_json, lambda d: "\n".join(d))
        return
    objs = [o.to_dict() for o in st.list(container, prefix)]
    emit(objs, as_json, lambda d: "\n".join(f"{o['size']:>14} {o['etag']} {o['name']}" for o in d))


@object_group.command("delete")
@click.argument("container")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@_store_options
@json_option
def object_delete(container, names, store_dir, data_dir, account, roles, as_json) -> None:
    """Delete objects.

    \b
    Example:
      vhdkit object delete images disk.vhd
    """
    st = _open_store(store_dir, data_dir, account)
    for n in names:
        st.delete(container, n)
    emit({"deleted": list(names)}, as_json, lambda d: "\n".join(f"deleted {container}/{n}" for n in d["deleted"]))


# -------------------------------------------------------------- segments
@main.group("segments")
def segments_group() -> None:
    """Large objects as verified segments (NAME-00001 ... + manifest + sidecar).

    \b
    Example:
      vhdkit segments split disk.vhd --name disk.vhd --segment-size 200M --container images
    """


@segments_group.command("split")
@click.argument("input", metavar="IN|-")
@click.option("--name", required=True, help="Large-object name (segments are NAME-00001 ...).")
@click.option("--container", required=True)
@click.option("--segment-size", type=SIZE, default="200M", show_default=True)
@click.option("--digits", type=int, default=5, show_default=True, help="Segment number width.")
@_store_options
@json_option
def segments_split(input, name, container, segment_size, digits, store_dir, data_dir, account, roles,
                   as_json) -> None:
    """Upload IN as segments with a zero-byte manifest and a JSON sidecar.

    \b
    Example:
      vhdkit segments split disk.vhd --name disk.vhd --segment-size 200M --container images
    """
    from ..pack import segments

    st = _open_store(store_dir, data_dir, account)
    total = _size_of(input)
    with _in(input) as f, _progress("split", total) as prog:
        man = segments.split(st, container, name, f, segment_size=segment_size, digits=digits,
                             total=total, progress=prog)
    emit(man.to_dict(), as_json, lambda d: f"{container}/{name}: {len(d['segments'])} segment(s), "
                                           f"{sized(d['size'])}, sha256 {d['sha256']}")


@segments_group.command("join")
@_copy_out_options(required=True, help="Output file (written atomically) or - for stdout.")
def segments_join(container, name, output, force, store_dir, data_dir, account, roles, as_json) -> None:
    """Join and verify the segments of CONTAINER/NAME.

    \b
    Example:
      vhdkit segments join images disk.vhd -o disk.vhd
    """
    from ..pack import segments

    st = _store_to_output(output, force, "the joined object", store_dir, data_dir, account)
    with _progress("join", None) as prog:
        if output == "-":
            man = segments.join(st, container, name, sys.stdout.buffer, progress=prog)
            sys.stdout.buffer.flush()
        else:
            man = segments.join(st, container, name, output, progress=prog)
    _emit_summary(man.to_dict(), as_json, output != "-",
                  f"{container}/{name} -> {output}: {sized(man.size)} verified (sha256 {man.sha256})")
