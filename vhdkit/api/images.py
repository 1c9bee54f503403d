"""Images: create, list, show, update (JSON patch), delete, deactivate,
reactivate, data upload/download, tags."""
from __future__ import annotations

import re
from typing import Optional, Tuple

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .auth import caller
from ..errors import ConflictError
from .errors import ApiError
from .http import (JSON_PATCH_20, JSON_PATCHES, OCTET, UploadStream, call, clean_text, collection_links,
                   json_object, media_type, query_pairs, read_json, registry, require_content_type, settings,
                   write_call)
from ..registry import tag_problem
from ..registry.models import PATCH_OPS
from .schemas import UUID_PATTERN

_UUID = re.compile(UUID_PATTERN)


def image_id(request: Request) -> str:
    """The {image_id} path parameter; anything but a UUID is not found (as Glance)."""
    raw = request.path_params["image_id"]
    if not _UUID.match(raw):
        raise ApiError(404, "No image found with ID " + clean_text(raw, "The image id", status=404, max_len=64))
    return raw.lower()


def check_tag(tag, status: int = 400) -> str:
    """A tag, by the registry's rule (1..255 characters, no control characters or '/', not '.' or '..')."""
    problem = tag_problem(tag)
    if problem is not None:
        raise ApiError(status, problem[0].upper() + problem[1:])
    return tag


# ---- collection ----------------------------------------------------------------------

async def create_image(request: Request) -> JSONResponse:
    who = caller(request)
    body = json_object(await read_json(request))
    tags = body.get("tags")
    if isinstance(tags, list):
        for tag in tags:
            check_tag(tag)
    image = (await write_call(request, registry(request).create_image, who, body)).to_dict()
    headers = {"Location": image["self"]}
    methods = settings(request).enabled_import_methods()
    if methods:  # as Glance: clients (openstacksdk's use_import) look for it here
        headers["OpenStack-image-import-methods"] = ",".join(methods)
    return JSONResponse(image, status_code=201, headers=headers)


async def list_images(request: Request) -> JSONResponse:
    who = caller(request)
    pairs = query_pairs(request)
    page = await call(registry(request).list_images, who, pairs)
    body = {"images": [i.to_dict() for i in page.images], "schema": "/v2/schemas/images"}
    body.update(collection_links("/v2/images", pairs, page.next_marker))
    return JSONResponse(body)


# ---- one image ----------------------------------------------------------------------

async def show_image(request: Request) -> JSONResponse:
    image = await call(registry(request).show_image, caller(request), image_id(request))
    return JSONResponse(image.to_dict())


async def update_image(request: Request) -> JSONResponse:
    who = caller(request)
    iid = image_id(request)
    ops = await read_json(request, content_types=JSON_PATCHES)
    if not isinstance(ops, list):
        raise ApiError(400, "A JSON-patch body must be a list of operations")
    if media_type(request) == JSON_PATCH_20:
        ops = [_from_patch_20(json_object(op, "Each patch operation")) for op in ops]
    for op in ops:
        json_object(op, "Each patch operation")
        if op.get("path") == "/tags" and isinstance(op.get("value"), list):
            for tag in op["value"]:
                check_tag(tag)
    image = await write_call(request, registry(request).update_image, who, iid, ops)
    return JSONResponse(image.to_dict())


def _from_patch_20(op: dict) -> dict:
    """An operation of the 2.0 dialect (``{"replace": "/name", "value": ...}``)
    in the 2.1 form the registry takes: exactly one member names the operation
    and holds the path."""
    named = [k for k in PATCH_OPS if k in op]
    if len(named) != 1:
        raise ApiError(400, 'Operation objects must contain exactly one member named "add", "remove", or "replace"')
    out = {"op": named[0], "path": op[named[0]]}
    if "value" in op:
        out["value"] = op["value"]
    return out


async def delete_image(request: Request) -> Response:
    await write_call(request, registry(request).delete_image, caller(request), image_id(request))
    return Response(status_code=204)


async def deactivate(request: Request) -> Response:
    await write_call(request, registry(request).deactivate_image, caller(request), image_id(request))
    return Response(status_code=204)


async def reactivate(request: Request) -> Response:
    await write_call(request, registry(request).reactivate_image, caller(request), image_id(request))
    return Response(status_code=204)


# ---- data ---------------------------------------------------------------------------

async def receive_data(request: Request, *, stage: bool = False) -> None:
    """Stream the request body into the image's data (``stage``: staged for
    an import, see api/imports.py) through the registry's one upload path."""
    who = caller(request)
    iid = image_id(request)
    require_content_type(request, OCTET)
    stream = UploadStream(request, settings(request))
    if stream.error is not None:
        raise stream.error
    kw = {"stage": True} if stage else {}
    try:
        # a customer's bytes: inspected (registry.inspect) on this host or a forwarding one
        await call(registry(request).upload, who, iid, stream, size=stream.declared, inspect=True,
                   limiter=request.app.state.upload_limiter, **kw)
    except Exception:
        if stream.error is not None:  # our limit or timeout made the registry give up
            raise stream.error from None
        raise


async def upload(request: Request) -> Response:
    await receive_data(request)
    return Response(status_code=204)


def parse_range(header: Optional[str], size: int) -> Optional[Tuple[int, int]]:
    """(start, end inclusive) for a single ``bytes=`` range, None for the
    whole body; :class:`ApiError` 416 when it cannot be satisfied."""
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # an unknown unit or several ranges: answer the whole body (RFC 9110)
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()) \
            or (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    if first == "":
        n = int(last)
        if n == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise _unsatisfiable(size)
    return start, end


def _unsatisfiable(size: int) -> ApiError:
    return ApiError(416, f"The requested range is not satisfiable (the image has {size} bytes)",
                    {"Content-Range": f"bytes */{size}"})


async def download(request: Request) -> Response:
    try:
        data = await call(registry(request).open_data, caller(request), image_id(request))
    except ConflictError as exc:
        if exc.code == "no_data":  # Glance: 204 No Content for an image without data
            return Response(status_code=204)
        raise
    rng = parse_range(request.headers.get("range"), data.size)
    start, end = rng if rng else (0, data.size - 1)
    headers = {"Content-Length": str(end - start + 1), "Accept-Ranges": "bytes"}
    if rng:
        headers["Content-Range"] = f"bytes {start}-{end}/{data.size}"
    elif data.checksum:
        headers["Content-MD5"] = data.checksum   # hex, as Glance sends it and glanceclient checks it
    chunks = data.iter(start, end + 1, settings(request).chunk_size)
    return StreamingResponse(_iterate(chunks), status_code=206 if rng else 200,
                             headers=headers, media_type=OCTET)


async def _iterate(chunks):
    """Pull a blocking chunk iterator in worker threads, closing it at the end."""
    it = iter(chunks)
    sentinel = object()
    try:
        while True:
            chunk = await anyio.to_thread.run_sync(next, it, sentinel)
            if chunk is sentinel:
                return
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            await anyio.to_thread.run_sync(close)


# ---- tags ---------------------------------------------------------------------------

async def add_tag(request: Request) -> Response:
    tag = check_tag(request.path_params["tag"])
    await write_call(request, registry(request).add_tag, caller(request), image_id(request), tag)
    return Response(status_code=204)


async def delete_tag(request: Request) -> Response:
    tag = check_tag(request.path_params["tag"], status=404)
    await write_call(request, registry(request).delete_tag, caller(request), image_id(request), tag)
    return Response(status_code=204)


ROUTES = [
    Route("/v2/images", create_image, methods=["POST"]),
    Route("/v2/images", list_images, methods=["GET"]),
    Route("/v2/images/{image_id}", show_image, methods=["GET"]),
    Route("/v2/images/{image_id}", update_image, methods=["PATCH"]),
    Route("/v2/images/{image_id}", delete_image, methods=["DELETE"]),
    Route("/v2/images/{image_id}/actions/deactivate", deactivate, methods=["POST"]),
    Route("/v2/images/{image_id}/actions/reactivate", reactivate, methods=["POST"]),
    Route("/v2/images/{image_id}/file", upload, methods=["PUT"]),
    Route("/v2/images/{image_id}/file", download, methods=["GET"]),
    Route("/v2/images/{image_id}/tags/{tag}", add_tag, methods=["PUT"]),
    Route("/v2/images/{image_id}/tags/{tag}", delete_tag, methods=["DELETE"]),
]
