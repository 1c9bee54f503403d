"""The caller's own object store over HTTP: containers, objects, and the
large objects (segments + sidecar manifest) that exports write.

    GET    /store/v1/containers                              {"containers": [{"name"}]}
    PUT    /store/v1/containers/{c}                          201 created, 204 it existed
    GET    /store/v1/containers/{c}/objects?prefix=&marker=&limit=
                                                             {"objects": [...], "next_marker"}
    GET    /store/v1/containers/{c}/objects/{name}           the bytes; a large-object manifest
                                                             answers the whole joined image, each
                                                             segment verified on the way
    DELETE /store/v1/containers/{c}/objects/{name}           204
    GET    /store/v1/containers/{c}/verify?name=NAME         joins and checks every segment against
                                                             the sidecar: {"ok", "problem", "segment"}

Every route acts on the store of the caller's own account (the account of
the identity, never one named in the request); container and object names
are checked by the store's own rules (:mod:`vhdkit.store.base`) before anything is
opened, and the store maps names to its own encoded file names, so no name is
ever followed as a path.  Errors name the container/object the caller gave,
never a server path.
"""
from __future__ import annotations

import re
from typing import Dict, FrozenSet
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import IntegrityError, InvalidInputError, NotFoundError
from ..registry.rbac import ADMINS, CREATORS, OBSERVERS
from .auth import caller
from .errors import ApiError
from .http import OCTET, call, clean_text, settings, write_call
from .images import _iterate

#: Roles that may use each store operation (the registry's roles: reading is
#: for every customer role, deleting for the customer admins, as for images).
STORE_ROLES: Dict[str, FrozenSet[str]] = {
    "list_objects": OBSERVERS | CREATORS | ADMINS,
    "read_object": OBSERVERS | CREATORS | ADMINS,
    "create_container": CREATORS | ADMINS,
    "delete_object": ADMINS,
}
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10000
MANIFEST_KEY = "x-object-manifest"


def _store(request: Request, op: str):
    """The object store of the caller's own account, after the role check."""
    from ..store import open_configured_store

    who = caller(request)
    if not who.has_any(STORE_ROLES[op]):
        raise ApiError(403, f"account {who.account} with roles [{', '.join(sorted(who.roles)) or 'none'}] "
                            f"may not {op.replace('_', ' ')}")
    cfg = settings(request)
    return open_configured_store(who.account, cfg.data_dir, config=cfg)   # data_dir None: the configured one


def _names(request: Request, *, obj: bool) -> tuple:
    from ..store import validate_container_name, validate_object_name

    try:
        container = validate_container_name(request.path_params["container"])
        if not obj:
            return container, None
        name = request.path_params.get("name") or request.query_params.get("name") or ""
        return container, validate_object_name(name)
    except InvalidInputError as exc:
        message = str(exc)
        raise ApiError(400, message if len(message) <= 300 else message[:300] + "...") from None


def _object_dict(info) -> dict:
    d = {"name": info.name, "size": info.size, "etag": info.etag, "last_modified": info.last_modified,
         "content_type": info.content_type}
    manifest = info.metadata.get(MANIFEST_KEY)
    if manifest is not None:
        d["large_object"] = {"segments_prefix": manifest.partition("/")[2],
                             "sidecar": info.metadata.get("vhdkit-sidecar"),
                             "size": _int_or_none(info.metadata.get("vhdkit-size"))}
    return d


def _int_or_none(v):
    return int(v) if isinstance(v, str) and v.isdigit() else None


async def list_containers(request: Request) -> JSONResponse:
    store = _store(request, "list_objects")
    names = await call(store.list_containers)
    return JSONResponse({"containers": [{"name": n} for n in names]})


async def create_container(request: Request) -> Response:
    store = _store(request, "create_container")
    container, _ = _names(request, obj=False)
    existed = container in await call(store.list_containers)
    await write_call(request, store.create_container, container)
    return Response(status_code=204 if existed else 201)


async def list_objects(request: Request) -> JSONResponse:
    store = _store(request, "list_objects")
    container, _ = _names(request, obj=False)
    q = request.query_params
    prefix = clean_text(q.get("prefix", ""), "The prefix")
    marker = q.get("marker")
    if marker is not None:
        clean_text(marker, "The marker")
    raw = q.get("limit", str(DEFAULT_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}")
    limit = int(raw)
    objs = await call(store.list, container, prefix, marker=marker, limit=limit + 1)
    body = {"objects": [_object_dict(o) for o in objs[:limit]]}
    if len(objs) > limit:
        body["next_marker"] = objs[limit - 1].name
    return JSONResponse(body)


def _attachment(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    ascii_name = re.sub(r"[^A-Za-z0-9._-]", "_", base)[:100] or "download"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(base, safe='')}"


async def download_object(request: Request) -> Response:
    """The object's bytes; for a large-object manifest the joined image,
    checked segment by segment (a bad segment ends the transfer early, so the
    client sees a failed download, never a silently short file)."""
    from ..pack import segments

    store = _store(request, "read_object")
    container, name = _names(request, obj=True)
    info = await call(store.head, container, name)
    headers = {"Content-Disposition": _attachment(name)}
    if MANIFEST_KEY in info.metadata:
        man = await call(segments.checked_manifest, store, container, name)
        headers["Content-Length"] = str(man.size)
        return StreamingResponse(_iterate(segments.verified_chunks(store, man)), media_type=OCTET,
                                 headers=headers)
    reader = await call(store.get, container, name)
    headers["Content-Length"] = str(reader.info.size)
    chunk = settings(request).chunk_size
    return StreamingResponse(_iterate(_read_chunks(reader, chunk)), media_type=OCTET, headers=headers)


def _read_chunks(reader, size: int):
    with reader:
        while True:
            data = reader.read(size)
            if not data:
                return
            yield data


async def delete_object(request: Request) -> Response:
    store = _store(request, "delete_object")
    container, name = _names(request, obj=True)
    await write_call(request, store.delete, container, name)
    return Response(status_code=204)


async def verify(request: Request) -> JSONResponse:
    """Join every segment of a large object against its sidecar manifest
    without keeping the data; names the first missing, extra or altered
    segment (answered 200: the check ran, its result is in the body)."""
    from ..pack import segments

    store = _store(request, "read_object")
    container, name = _names(request, obj=True)

    def run():
        try:
            man = segments.checked_manifest(store, container, name)
            for _ in segments.verified_chunks(store, man):
                pass
        except IntegrityError as exc:
            seg = re.search(r"segment \S+?/(\S+)", str(exc))
            return {"ok": False, "problem": str(exc), "segment": seg.group(1) if seg else None}
        except NotFoundError as exc:
            raise ApiError(404, str(exc)) from None
        return {"ok": True, "size": man.size, "sha256": man.sha256, "segments": len(man.segments)}

    return JSONResponse(await call(run))


ROUTES = [
    Route("/store/v1/containers", list_containers, methods=["GET"]),
    Route("/store/v1/containers/{container}", create_container, methods=["PUT"]),
    Route("/store/v1/containers/{container}/objects", list_objects, methods=["GET"]),
    Route("/store/v1/containers/{container}/verify", verify, methods=["GET"]),
    Route("/store/v1/containers/{container}/objects/{name:path}", download_object, methods=["GET"]),
    Route("/store/v1/containers/{container}/objects/{name:path}", delete_object, methods=["DELETE"]),
]
