"""CLI commands: registry (see vhdkit/cli/__init__.py).

``vhdkit image create|list|show|update|delete|upload|download|deactivate|reactivate``,
``vhdkit image tag add|remove``, ``vhdkit member add|list|show|accept|reject|remove``.
Identity and data directory: :func:`vhdkit.cli._common.identity_options` and
:func:`~vhdkit.cli._common.data_option`.  IMAGE arguments take an id, a name or
a unique id prefix.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

import click

from ..fileutil import atomic_fd, refuse_existing
from ..progress import Progress
from . import _reads, main
from ._common import (SIZE, caller_of, data_option, settings, emit, force_option, identity_options, json_option,
                      refuse_terminal, sized)


def _registry_options(f: Callable) -> Callable:
    """--data/--account/--roles; the command receives ``reg`` and ``caller``,
    and an ``image_id`` (or ``image_ids``) argument resolved from a name or a
    unique id prefix (see :func:`vhdkit.cli._reads.resolve_image`), an ``image``
    argument to the image itself."""

    @data_option("Registry data directory.")
    @identity_options
    @functools.wraps(f)
    def wrapper(data_dir, account, roles, **kw):
        who = caller_of(account, roles)
        return _reads.in_registry(settings(data_dir=data_dir), who, f, **kw)

    return wrapper


def _props(pairs: Sequence[str]) -> Dict[str, str]:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise click.BadParameter(f"expected KEY=VALUE, got {p!r}", param_hint="--property")
        out[k] = v
    return out


# ---------------------------------------------------------------- image

@main.group("image")
def image() -> None:
    """Images in the registry (OpenStack Images v2 semantics).

    Wherever a command takes IMAGE_ID, an image name or a unique id prefix
    (4 characters or more) works too, as in the openstack client; a name or
    prefix that matches several images is refused with the list of them.

    \b
    Example:
      vhdkit image create --name web --disk-format vhd --container-format ova --account A --roles admin
    """


_FMT = click.Choice(["vhd", "vhdx", "raw", "qcow2", "vmdk", "vdi", "iso", "ami", "ari", "aki", "ploop"])
_CFMT = click.Choice(["bare", "ovf", "ova", "aki", "ari", "ami", "docker", "compressed"])
_VIS = click.Choice(["public", "private", "shared", "community"])


@image.command("create")
@click.option("--name")
@click.option("--id", "new_id", help="Use this UUID instead of a new one.")
@click.option("--disk-format", type=_FMT)
@click.option("--container-format", type=_CFMT)
@click.option("--visibility", type=_VIS)
@click.option("--protected/--unprotected", default=None)
@click.option("--min-disk", type=int)
@click.option("--min-ram", type=int)
@click.option("--tag", "tags", multiple=True, help="Repeatable.")
@click.option("--property", "props", multiple=True, metavar="KEY=VALUE", help="Extra property; repeatable.")
@click.option("--file", "file", help="Upload this file right away (needs --disk-format and --container-format).")
@_registry_options
@json_option
def image_create(reg, caller, name, new_id, disk_format, container_format, visibility, protected,
                 min_disk, min_ram, tags, props, file, as_json):
    """Create an image (queued until data is uploaded).

    \b
    Example:
      vhdkit image create --name web --disk-format vhd --container-format bare --tag prod --file web.vhd
    """
    if file and not (disk_format and container_format):
        raise click.UsageError("--file needs --disk-format and --container-format (e.g. --disk-format vhd "
                               "--container-format bare); no image was created")
    body: Dict[str, Any] = _props(props)
    for k, v in (("name", name), ("id", new_id), ("disk_format", disk_format),
                 ("container_format", container_format), ("visibility", visibility),
                 ("protected", protected), ("min_disk", min_disk), ("min_ram", min_ram)):
        if v is not None:
            body[k] = v
    if tags:
        body["tags"] = list(tags)
    if file and file != "-":
        open(file, "rb").close()  # a file problem is reported before an image exists
    img = reg.create_image(caller, body)
    if file:
        from ..errors import VhdkitError

        try:
            img = _upload(reg, caller, img.id, file, None)
        except VhdkitError as exc:
            exc.message = (f"image {img.id} was created but uploading {file} failed: {exc.message}; upload again "
                           f"with `vhdkit image upload {img.id} FILE` or remove it with `vhdkit image delete {img.id}`")
            raise
    emit(img.to_dict(), as_json, _reads.kv)


@image.command("list")
@click.option("--name")
@click.option("--status")
@click.option("--visibility", type=click.Choice(["public", "private", "shared", "community", "all"]))
@click.option("--member-status", type=click.Choice(["pending", "accepted", "rejected", "all"]))
@click.option("--owner")
@click.option("--tag", "tags", multiple=True, help="Repeatable; all must match.")
@click.option("--property", "props", multiple=True, metavar="KEY=VALUE", help="Property filter; repeatable.")
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Any v2 list filter, e.g. size_min=1024, created_at=gte:2026-01-01T00:00:00Z.")
@click.option("--sort", help="e.g. name:asc,size:desc")
@click.option("--limit", type=int, help="Page size (default 25).")
@click.option("--marker", help="Start after this image id.")
@click.option("--all-pages", is_flag=True, help="Follow the next markers to the end.")
@_registry_options
@json_option
def image_list(reg, caller, name, status, visibility, member_status, owner, tags, props, filters, sort,
               limit, marker, all_pages, as_json):
    """List the images you can see.

    \b
    Example:
      vhdkit image list --tag a --tag b --visibility shared --sort name:asc --json
    """
    props_d, filter_pairs = _props(props), []
    for f in filters:
        k, sep, v = f.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {f!r}", param_hint="--filter")
        filter_pairs.append((k, v))
    params = _reads.list_query(name, status, visibility, member_status, owner, sort, limit, marker, tags,
                               props_d, filter_pairs)
    _reads.image_list(reg, caller, params, all_pages, as_json)


@image.command("show")
@click.argument("image", metavar="IMAGE_ID")
@_registry_options
@json_option
def image_show(reg, caller, image, as_json):
    """Show one image.

    \b
    Example:
      vhdkit image show 0b6d7a3e-9a83-4b3e-8a1c-0f7e0c9e2d11
    """
    _reads.image_show(reg, caller, image, as_json)


@image.command("update")
@click.argument("image_id")
@click.option("--name")
@click.option("--visibility", type=_VIS)
@click.option("--protected/--unprotected", default=None)
@click.option("--min-disk", type=int)
@click.option("--min-ram", type=int)
@click.option("--disk-format", type=_FMT)
@click.option("--container-format", type=_CFMT)
@click.option("--property", "props", multiple=True, metavar="KEY=VALUE", help="Add or replace; repeatable.")
@click.option("--remove-property", "removes", multiple=True, metavar="KEY", help="Repeatable.")
@click.option("--patch", "patch_json", metavar="JSON", help="A raw JSON-patch list, applied last.")
@_registry_options
@json_option
def image_update(reg, caller, image_id, name, visibility, protected, min_disk, min_ram, disk_format,
                 container_format, props, removes, patch_json, as_json):
    """Change an image (one atomic JSON-patch).

    \b
    Example:
      vhdkit image update ID --name web2 --property os_distro=ubuntu --remove-property old
    """
    ops: List[Dict[str, Any]] = []
    for k, v in (("name", name), ("visibility", visibility), ("protected", protected),
                 ("min_disk", min_disk), ("min_ram", min_ram), ("disk_format", disk_format),
                 ("container_format", container_format)):
        if v is not None:
            ops.append({"op": "replace", "path": f"/{k}", "value": v})
    esc = lambda k: k.replace("~", "~0").replace("/", "~1")  # noqa: E731
    ops += [{"op": "add", "path": "/" + esc(k), "value": v} for k, v in _props(props).items()]
    ops += [{"op": "remove", "path": "/" + esc(k)} for k in removes]
    if patch_json:
        import json

        try:
            extra = json.loads(patch_json)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--patch")
        ops += extra if isinstance(extra, list) else [extra]
    if not ops:
        raise click.UsageError("nothing to change")
    emit(reg.update_image(caller, image_id, ops).to_dict(), as_json, _reads.kv)


@image.command("delete")
@click.argument("image_ids", nargs=-1, required=True)
@_registry_options
@json_option
def image_delete(reg, caller, image_ids, as_json):
    """Delete images (protected ones refuse).

    \b
    Example:
      vhdkit image delete ID1 ID2
    """
    for i in image_ids:
        reg.delete_image(caller, i)
    emit({"deleted": list(image_ids)}, as_json, lambda o: "\n".join(f"deleted {i}" for i in o["deleted"]))


def _upload(reg, caller, image_id: str, path: str, virtual_size: Optional[int]):
    img = reg.show_image(caller, image_id)
    if not (img.disk_format and img.container_format):
        raise click.UsageError(f"image {image_id} needs a disk and container format before data: "
                               f"vhdkit image update {image_id} --disk-format vhd --container-format bare")
    if path == "-":
        stream = sys.stdin.buffer
        total = None
    else:
        stream = open(path, "rb")
        total = os.fstat(stream.fileno()).st_size
    try:
        with Progress("upload", total) as p:
            return reg.upload(caller, image_id, stream, size=total, virtual_size=virtual_size, progress=p)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


@image.command("upload")
@click.argument("image_id")
@click.argument("file")
@click.option("--virtual-size", type=SIZE, help="Record this virtual size (else read from a VHD).")
@_registry_options
@json_option
def image_upload(reg, caller, image_id, file, virtual_size, as_json):
    """Upload data (FILE or - for stdin) to a queued image; it becomes active.

    \b
    Example:
      vhdkit image upload ID disk.vhd
    """
    emit(_upload(reg, caller, image_id, file, virtual_size).to_dict(), as_json, _reads.kv)


@image.command("download")
@click.argument("image_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              help="Write here (default stdout, which must not be a terminal).")
@force_option
@click.option("--offset", type=SIZE, default=0, help="First byte.")
@click.option("--length", type=SIZE, default=None, help="Number of bytes.")
@click.option("--no-sync", is_flag=True,
              help="Do not fsync the output before renaming it into place (like cp): it is still "
                   "complete when it appears, but may be lost if the machine crashes soon after.")
@click.option("--verify", is_flag=True,
              help="Re-read the output and check its size, md5 and sha512 against the image's "
                   "size, checksum and os_hash_value (whole image to a file only).")
@_registry_options
@json_option
def image_download(reg, caller, image_id, output, force, offset, length, no_sync, verify, as_json):
    """Download an image's data (or a byte range).

    With -o FILE the data goes to a temporary .FILE.*.part (copied in the
    kernel), is fsynced (unless --no-sync), then renamed to FILE: FILE never
    holds part of the data, and a failed download leaves no temporary file
    (one left by a killed download goes with the next download of FILE).
    The data is not re-hashed by
    default: its size, md5 and sha512 were computed at upload and the blob is
    never rewritten; --verify checks them again.

    \b
    Example:
      vhdkit image download ID -o disk.vhd
    """
    refuse_terminal(output, "image data")
    refuse_existing(output, force)
    h = reg.open_data(caller, image_id)
    total = (h.size - offset) if length is None else min(length, max(h.size - offset, 0))
    if verify and (output == "-" or offset or (length is not None and length < h.size)):
        raise click.UsageError("--verify needs --output FILE and the whole image (no --offset/--length)")
    with Progress("download", total) as p:
        news = p if p.enabled else None  # none wanted: one in-kernel copy (as cp), not one per 256 MiB
        if output == "-":
            if as_json:
                raise click.UsageError("--json needs --output FILE (stdout carries the data)")
            n = reg.download(caller, image_id, sys.stdout.buffer, offset=offset, length=length, progress=news)
        else:
            with atomic_fd(output, ".part", sync=not no_sync) as fd, open(fd, "wb", closefd=False) as f:
                n = reg.download(caller, image_id, f, offset=offset, length=length, progress=news)
                f.flush()
                if verify:
                    _verify_download(fd, h.image)
    if output != "-":
        emit({"image_id": image_id, "output": output, "bytes": n, "checksum": h.checksum,
              "verified": verify}, as_json, lambda o: f"wrote {sized(o['bytes'])} to {o['output']}")


def _verify_download(fd: int, img: Any) -> None:
    from ..errors import IntegrityError
    from ..registry.blobs import file_digest

    d = file_digest(fd)
    want = (img.size, img.checksum, img.os_hash_value)
    if (d.size, d.md5, d.sha512) != want:
        raise IntegrityError(f"downloaded data of image {img.id} does not match its recorded size/checksums "
                             f"(got size {d.size} md5 {d.md5}; recorded size {want[0]} md5 {want[1]})")


def _action(name: str, method: str, help_text: str) -> None:
    @image.command(name, help=help_text)
    @click.argument("image_id")
    @_registry_options
    @json_option
    def cmd(reg, caller, image_id, as_json):
        emit(getattr(reg, method)(caller, image_id).to_dict(), as_json, _reads.kv)


_action("deactivate", "deactivate_image",
        "Deactivate an active image (its data cannot be downloaded).\n\n\b\nExample:\n  vhdkit image deactivate ID")
_action("reactivate", "reactivate_image",
        "Reactivate a deactivated image.\n\n\b\nExample:\n  vhdkit image reactivate ID")


@image.group("tag")
def image_tag() -> None:
    """Add or remove image tags.

    \b
    Example:
      vhdkit image tag add ID prod web
    """


def _tag_cmd(name: str, method: str, help_text: str) -> None:
    @image_tag.command(name, help=help_text)
    @click.argument("image_id")
    @click.argument("tags", nargs=-1, required=True)
    @_registry_options
    @json_option
    def cmd(reg, caller, image_id, tags, as_json):
        for t in tags:
            getattr(reg, method)(caller, image_id, t)
        emit({"id": image_id, "tags": reg.show_image(caller, image_id).tags}, as_json,
             lambda o: "tags: " + ", ".join(o["tags"]))


_tag_cmd("add", "add_tag", "Add tags (an existing tag is a no-op).\n\n\b\nExample:\n  vhdkit image tag add ID prod")
_tag_cmd("remove", "delete_tag", "Remove tags.\n\n\b\nExample:\n  vhdkit image tag remove ID prod")


# ---------------------------------------------------------------- member

@main.group("member")
def member() -> None:
    """Share images between accounts (members of shared images).

    IMAGE_ID may also be an image name or a unique id prefix (see `vhdkit image --help`).

    \b
    Example:
      vhdkit member add IMAGE_ID other-account --account A --roles cloudImages:admin
    """


_MEMBER_HEADERS = ["Image ID", "Member ID", "Status", "Updated"]


def _member_row(m: Dict[str, Any]):
    return (m["image_id"], m["member_id"], m["status"], m["updated_at"])


@member.command("add")
@click.argument("image_id")
@click.argument("member_id")
@_registry_options
@json_option
def member_add(reg, caller, image_id, member_id, as_json):
    """Share IMAGE_ID with account MEMBER_ID (it starts pending).

    \b
    Example:
      vhdkit member add IMAGE_ID acct-b
    """
    m = reg.add_member(caller, image_id, member_id).to_dict()
    emit(m, as_json, lambda o: _reads.table([_member_row(o)], _MEMBER_HEADERS))


@member.command("list")
@click.argument("image_id")
@_registry_options
@json_option
def member_list(reg, caller, image_id, as_json):
    """List an image's members (a member sees only itself).

    \b
    Example:
      vhdkit member list IMAGE_ID
    """
    ms = [m.to_dict() for m in reg.list_members(caller, image_id)]
    emit({"members": ms, "schema": "/v2/schemas/members"}, as_json,
         lambda o: _reads.table([_member_row(m) for m in o["members"]], _MEMBER_HEADERS))


@member.command("show")
@click.argument("image_id")
@click.argument("member_id", required=False)
@_registry_options
@json_option
def member_show(reg, caller, image_id, member_id, as_json):
    """Show one membership (default: your own).

    \b
    Example:
      vhdkit member show IMAGE_ID acct-b
    """
    emit(reg.show_member(caller, image_id, member_id or caller.account).to_dict(), as_json, _reads.kv)


def _status_cmd(name: str, status: str) -> None:
    @member.command(name, help=f"{name.capitalize()} an image shared with your account.\n\n\b\n"
                               f"Example:\n  vhdkit member {name} IMAGE_ID --account acct-b --roles admin")
    @click.argument("image_id")
    @click.argument("member_id", required=False)
    @_registry_options
    @json_option
    def cmd(reg, caller, image_id, member_id, as_json):
        m = reg.update_member(caller, image_id, member_id or caller.account, status).to_dict()
        emit(m, as_json, lambda o: _reads.table([_member_row(o)], _MEMBER_HEADERS))


_status_cmd("accept", "accepted")
_status_cmd("reject", "rejected")


@member.command("remove")
@click.argument("image_id")
@click.argument("member_id")
@_registry_options
@json_option
def member_remove(reg, caller, image_id, member_id, as_json):
    """Stop sharing IMAGE_ID with MEMBER_ID.

    \b
    Example:
      vhdkit member remove IMAGE_ID acct-b
    """
    reg.delete_member(caller, image_id, member_id)
    emit({"image_id": image_id, "member_id": member_id, "removed": True}, as_json,
         lambda o: f"removed {o['member_id']} from {o['image_id']}")
