"""The commands a script calls per image, without click: info, check, map,
chain, compare, image show, image list.

Each is a plain function of its parsed options; the click commands
(:mod:`vhdkit.cli.inspect`, ``chains``, ``convert``, ``registry``) and the
fast path (:mod:`vhdkit.cli._fast`) both call it, so they behave alike.
"""
from __future__ import annotations

import sys

from ._plain import cli_message, echo, emit, image_format, open_registry, sized
from ..errors import VhdkitError


def _vhdx_text(d: dict) -> list:
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


def _each(images: tuple, as_json: bool, one, human) -> None:
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
    from ._jsontext import dumps

    failed = False
    for n, image in enumerate(images):
        try:
            d, ok = one(image)
        except VhdkitError as exc:
            failed = True
            if as_json:
                echo(dumps({"path": image, "error": exc.to_dict()}))
            else:
                echo(f"vhdkit: error: {image}: {cli_message(exc)}", err=True)
            continue
        failed = failed or not ok
        echo(dumps(d, default=str) if as_json else ("\n" if n else "") + human(d))
    if failed:
        sys.exit(1)


def _info_text(d: dict) -> str:
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


def _chain_text(d: dict) -> list:
    lines = []
    if d.get("chain"):
        lines.append("chain:")
        for i, c in enumerate(d["chain"]):
            lines.append(f"  [{i}] {c['path']} ({c.get('format', 'vhd')} {c['disk_type']}, {c['uuid']})")
    if d.get("chain_error"):
        lines.append(f"chain: not resolved: {d['chain_error']}")
    return lines

def info(images: tuple, parents: tuple, size_rule: str, as_json: bool) -> None:
    """``vhdkit info``."""
    from ..vhd import read

    def one(image: str) -> tuple:
        d = read.info_dict(image, size_rule=size_rule)
        if d["disk_type"] == "differencing":
            try:
                with read.open(image, parents=list(parents) or None, size_rule=size_rule) as s:
                    d["chain"] = s.chain_dicts()
            except VhdkitError as exc:
                d["chain"] = None
                d["chain_error"] = exc.message
        else:
            d["chain"] = [d.copy()]
        return d, True

    _each(images, as_json, one, _info_text)


def _check_text(d: dict) -> str:
    if d["ok"]:
        return f"{d['path']}: no problems found"
    out = [f"{d['path']}: {len(d['problems'])} problem(s)"]
    for p in d["problems"]:
        where = f" at offset {p['offset']}" if p["offset"] is not None else ""
        layer = f" [parent layer {p['layer']}]" if p["layer"] else ""
        out.append(f"  {p['code']}{where}{layer}: {p['message']}")
    return "\n".join(out)


def check(images: tuple, parents: bool, as_json: bool) -> None:
    """``vhdkit check``."""
    from ..vhd import read

    def one(image: str) -> tuple:
        rep = read.check(image, parents=parents)
        return rep.to_dict(), rep.ok

    _each(images, as_json, one, _check_text)


def _map_text(rs: list) -> str:
    out = [f"{'Offset':<20}{'Length':<20}{'Mapped to':<20}File"]
    for r in rs:
        if r["data"]:
            out.append(f"{hex(r['start']):<20}{hex(r['length']):<20}{hex(r['offset']):<20}{r['file']}")
    return "\n".join(out)


def map_(image: str, parents: tuple, as_json: bool) -> None:
    """``vhdkit map``."""
    from ..vhd import read

    with read.open(image, parents=list(parents) or None) as s:
        extents = s.map()
    rows = [
        {"start": e.offset, "length": e.length, "data": e.allocated, "zero": not e.allocated,
         "depth": e.layer, "offset": e.file_offset, "file": e.path}
        for e in extents
    ]
    emit(rows, as_json, _map_text)


def _human_chain(layers) -> str:
    lines = []
    for d in layers:
        how = f", parent found by {d['parent_found_by']}" if d["parent_found_by"] else ""
        lines.append(f"{d['index']}: {d['path']}  {d['disk_type']}, {sized(d['virtual_size'])}, "
                     f"{sized(d['allocated_bytes'])} allocated, uuid {d['uuid']}{how}")
    return "\n".join(lines)


def chain(leaf: str, parents: tuple, as_json: bool) -> None:
    """``vhdkit chain``."""
    from ..vhd.chain import chain_dicts

    layers = chain_dicts(leaf, parents=list(parents) or None)
    emit(layers, as_json, _human_chain)


def compare(a: str, b: str, a_format, b_format, as_json: bool) -> None:
    """``vhdkit compare``: exit 0 identical, 1 different, 2 error."""
    from ..vhd.write import compare as compare_images

    try:
        r = compare_images(a, b, a_format=image_format(a_format), b_format=image_format(b_format))
    except VhdkitError as exc:
        echo(f"vhdkit: error: {exc.message}", err=True)
        sys.exit(2)
    emit(r.to_dict(), as_json, lambda d: d["message"])
    sys.exit(0 if r.identical else 1)


# ---------------------------------------------------------------- registry

def in_registry(cfg, who, f, **kw):
    """Run ``f(reg=..., caller=who, **kw)`` on the registry the settings
    ``cfg`` name, an ``image_id`` (or ``image_ids``) in ``kw`` resolved from a
    name or a unique id prefix first (see :func:`resolve_image`), an ``image``
    to the image itself (see :func:`find_image`)."""
    with open_registry(cfg) as reg:
        if kw.get("image") is not None:
            kw["image"] = find_image(reg, who, kw["image"])
        if kw.get("image_id") is not None:
            kw["image_id"] = resolve_image(reg, who, kw["image_id"])
        if kw.get("image_ids"):
            kw["image_ids"] = tuple(resolve_image(reg, who, i) for i in kw["image_ids"])
        return f(reg=reg, caller=who, **kw)


_HEX = frozenset("0123456789abcdef-")
#: The shortest id prefix that names an image (as git's shortest abbreviation).
_MIN_PREFIX = 4


def resolve_image(reg, who, ref: str) -> str:
    """The id of the image ``ref`` names, as the ``openstack`` client finds
    one: an exact id, else a unique name among the images the caller can see,
    else a unique id prefix of at least 4 characters.  Several matches are an
    error listing them; no match is left to the command (its not-found
    message names ``ref``)."""
    from ..errors import NotFoundError

    try:
        return reg.show_image(who, ref).id
    except NotFoundError:
        return _by_name_or_prefix(reg, who, ref)


def find_image(reg, who, ref: str):
    """The image ``ref`` names (see :func:`resolve_image`) as ``reg.show_image``
    returns it: read once when ``ref`` is its id."""
    from ..errors import NotFoundError

    try:
        return reg.show_image(who, ref)
    except NotFoundError:
        return reg.show_image(who, _by_name_or_prefix(reg, who, ref))


def _by_name_or_prefix(reg, who, ref: str) -> str:
    """:func:`resolve_image` after no image has the id ``ref``."""
    from ..errors import InvalidInputError

    found, what = list(_all_visible(reg, who, [("name", ref)])), "the name"
    prefix = ref.lower()
    if not found and len(prefix) >= _MIN_PREFIX and set(prefix) <= _HEX:
        found, what = [], "the id prefix"
        for i in _all_visible(reg, who, [("sort", "id:asc")]):
            if i.id.startswith(prefix):
                found.append(i)
            elif i.id > prefix:
                break
    if len(found) == 1:
        return found[0].id
    if found:
        listing = ", ".join(f"{i.id} ({i.name or 'no name'}, {i.status}, owner {i.owner})" for i in found)
        raise InvalidInputError(f"{len(found)} images match {what} {ref!r}: {listing}; give the id of one")
    return ref


def _all_visible(reg, who, params):
    params = [("visibility", "all"), ("limit", "1000")] + params
    while True:
        page = reg.list_images(who, params)
        yield from page.images
        if not page.next_marker:
            return
        params = [p for p in params if p[0] != "marker"] + [("marker", page.next_marker)]


def table(rows, headers) -> str:
    cells = [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[n]) for r in cells]) for n, h in enumerate(headers)]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def kv(d: dict) -> str:
    from ._jsontext import dumps  # imported where used: `image download` prints none

    w = max((len(k) for k in d), default=0)
    out = []
    for k, v in d.items():
        if isinstance(v, (list, dict)):
            v = dumps(v, ensure_ascii=False)
        elif k in ("size", "virtual_size") and isinstance(v, int):
            v = sized(v)
        out.append(f"{k.ljust(w)}  {'' if v is None else v}")
    return "\n".join(out)


def image_show(reg, caller, image, as_json: bool) -> None:
    """``vhdkit image show``: ``image`` as :func:`find_image` found it."""
    emit(image.to_dict(), as_json, kv)


def list_query(name, status, visibility, member_status, owner, sort, limit, marker, tags, props: dict,
               filters: list) -> list:
    """``vhdkit image list``'s options as the v2 list query's (key, value) pairs."""
    params = []
    for k, v in (("name", name), ("status", status), ("visibility", visibility),
                 ("member_status", member_status), ("owner", owner), ("sort", sort),
                 ("limit", limit), ("marker", marker)):
        if v is not None:
            params.append((k, str(v)))
    params += [("tag", t) for t in tags]
    params += list(props.items())
    return params + list(filters)


def image_list(reg, caller, params: list, all_pages: bool, as_json: bool) -> None:
    """``vhdkit image list``: ``params`` the v2 list query as (key, value) pairs."""
    images = []
    while True:
        page = reg.list_images(caller, params)
        images += page.images
        if not all_pages or not page.next_marker:
            break
        params = [p for p in params if p[0] != "marker"] + [("marker", page.next_marker)]
    out = {"images": [i.to_dict() for i in images]}
    if page.next_marker and not all_pages:
        out["next_marker"] = page.next_marker
    emit(out, as_json, lambda o: table(
        [(i["id"], i["name"], i["status"], i["visibility"], sized(i["size"]), i["owner"])
         for i in o["images"]],
        ["ID", "Name", "Status", "Visibility", "Size", "Owner"])
        + (f"\n(more: --marker {o['next_marker']})" if "next_marker" in o else ""))
