"""Internal routes for workers on other hosts (``vhdkit worker --api URL``).

``POST /internal/v1/<op>`` with a JSON object; the answer is JSON.  These
routes are not part of the Images v2 API and never serve customers: every
request must carry ``X-Service-Token`` equal to the API host's
``VHDKIT_SERVICE_TOKEN`` (compared in constant time).  Without that setting on
the API host the routes answer 403 (disabled); a request without the header
401, with a wrong one 403.  Put them behind the same private network as the
workers; an authenticating proxy for customers should not forward
``/internal/``.

Operations (the registry calls a worker makes, see :mod:`vhdkit.remote`):
``claim``, ``heartbeat``, ``finish``, ``show_task`` (tasks and leases);
``show_image``, ``create_image``, ``delete_image``, ``open_data`` (the Swift
name of an image's data, which the worker reads from Swift itself) and
``register_blob`` (make an image active with data the worker stored in Swift).
Image operations act as the caller the worker names (the task's owner and its
roles, or the service identity for that account), so the registry's rules
apply exactly as for a local worker.

An API host that forwards to this one (``vhdkit serve --registry URL``, see
:class:`vhdkit.remote.RemoteRegistry`) also uses ``list_images``,
``update_image``, ``deactivate_image``, ``reactivate_image``, ``add_tag``,
``delete_tag``, the member operations, ``create_task``, ``list_tasks`` and the
upload protocol ``begin_upload`` / ``renew_upload`` / ``commit_upload`` /
``abort_upload`` (the image is held with a lease while the forwarding host
streams the data into Swift).  A registry error is answered with its type,
code and message beside the usual body (``error.type``, ``error.kind``,
``error.detail``), so the forwarding host raises the same error and its
customer sees the same answer.  A forwarding host's own internal routes
answer 421: workers point at the registry host.
"""
from __future__ import annotations

import hmac
import os
from typing import Optional

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .._record import asdict
from ..errors import InvalidInputError, VhdkitError
from ..registry import Caller
from ..registry.tasks import Lease
from .errors import ApiError, error_response, status_of
from .http import call, json_object, read_json, registry, write_call

TOKEN_ENV = "VHDKIT_SERVICE_TOKEN"
HEADER = "x-service-token"


def _authorize(request: Request) -> None:
    want = os.environ.get(TOKEN_ENV, "")
    if not want:
        raise ApiError(403, f"internal routes are disabled: the API host has no {TOKEN_ENV}")
    got = request.headers.get(HEADER)
    if not got:
        raise ApiError(401, "internal routes need the X-Service-Token header",
                       headers={"WWW-Authenticate": "X-Service-Token"})
    if not hmac.compare_digest(got.encode("utf-8", "surrogateescape"), want.encode("utf-8", "surrogateescape")):
        raise ApiError(403, "wrong service token")


def _caller(body: dict) -> Caller:
    c = body.get("caller")
    if not isinstance(c, dict) or not isinstance(c.get("account"), str):
        raise InvalidInputError("caller {account, roles, service} is required")
    if c.get("service") is True:
        return Caller.service(c["account"])
    roles = c.get("roles") or []
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise InvalidInputError("caller roles must be a list of strings")
    return Caller.parse(c["account"], roles)


def _str(body: dict, key: str) -> str:
    v = body.get(key)
    if not isinstance(v, str) or not v:
        raise InvalidInputError(f"{key} is required")
    return v


def _task(t) -> dict:
    return {"task": asdict(t) if t is not None else None}


def _image(img) -> dict:
    return {"image": asdict(img)}


async def _claim(request, reg, body):
    lease = float(body.get("lease_seconds") or 60)
    return _task(await write_call(request, reg.claim_task, _str(body, "worker_id"), lease_seconds=lease))


def _attempt(body: dict) -> Optional[int]:
    a = body.get("attempt")
    if a is not None and (isinstance(a, bool) or not isinstance(a, int)):
        raise InvalidInputError("attempt must be an integer")
    return a


async def _heartbeat(request, reg, body):
    kw = {k: body.get(k) for k in ("stage", "bytes_done", "bytes_total")}
    kw["attempt"] = _attempt(body)
    t = await write_call(request, reg.heartbeat, _str(body, "task_id"), _str(body, "worker_id"),
                         lease_seconds=float(body.get("lease_seconds") or 60), **kw)
    return _task(t)


async def _finish(request, reg, body):
    result = body.get("result")
    if result is not None and not isinstance(result, dict):
        raise InvalidInputError("result must be an object")
    t = await write_call(request, reg.finish, _str(body, "task_id"), _str(body, "worker_id"),
                         status=_str(body, "status"), result=result, message=str(body.get("message") or ""),
                         attempt=_attempt(body))
    return _task(t)


async def _unswept_failures(request, reg, body):
    limit = body.get("limit", 50)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise InvalidInputError("limit must be an integer from 1 to 1000")
    return {"tasks": [asdict(t) for t in await call(reg.unswept_failures, limit)]}


async def _mark_swept(request, reg, body):
    await write_call(request, reg.mark_swept, _str(body, "task_id"))
    return {}


async def _release(request, reg, body):
    await write_call(request, reg.release_task, _str(body, "task_id"), _str(body, "worker_id"), _attempt(body))
    return {}


async def _show_task(request, reg, body):
    return _task(await call(reg.show_task, _caller(body), _str(body, "task_id")))


async def _show_image(request, reg, body):
    return _image(await call(reg.show_image, _caller(body), _str(body, "image_id")))


async def _create_image(request, reg, body):
    fields = body.get("fields")
    if not isinstance(fields, dict):
        raise InvalidInputError("fields must be an object")
    return _image(await write_call(request, reg.create_image, _caller(body), fields))


async def _delete_image(request, reg, body):
    await write_call(request, reg.delete_image, _caller(body), _str(body, "image_id"))
    return {"deleted": body["image_id"]}


async def _open_data(request, reg, body):
    d = await call(reg.open_data, _caller(body), _str(body, "image_id"))
    if not reg.blobs.is_remote(d.rel):
        raise ApiError(409, f"image {d.image.id}: its data is on the API host's disk, not in Swift; a worker "
                            "on another host needs VHDKIT_BLOB_STORE=swift on the API host")
    return {"blob": d.rel, "size": d.size, "checksum": d.checksum, "image": asdict(d.image)}


async def _register_blob(request, reg, body):
    vs = body.get("virtual_size")
    img = await write_call(request, reg.register_blob, _caller(body), _str(body, "image_id"),
                           blob=_str(body, "blob"), size=body.get("size"), md5=_str(body, "md5"),
                           sha512=_str(body, "sha512"), virtual_size=vs if isinstance(vs, int) else None)
    return _image(img)


# ---- what an API host that forwards to this one needs (``vhdkit serve --registry``) ----

def _list(body: dict, key: str) -> list:
    v = body.get(key)
    if not isinstance(v, list):
        raise InvalidInputError(f"{key} must be a list")
    return v


def _pairs(body: dict) -> list:
    """Query parameters as [key, value] string pairs (the API host's parse of its query string)."""
    pairs = _list(body, "params")
    if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in pairs):
        raise InvalidInputError("params must be a list of [key, value] string pairs")
    return [tuple(p) for p in pairs]


def _obj(value) -> dict:
    return asdict(value)


async def _list_images(request, reg, body):
    page = await call(reg.list_images, _caller(body), _pairs(body))
    return {"images": [_obj(i) for i in page.images], "next_marker": page.next_marker}


async def _update_image(request, reg, body):
    return _image(await write_call(request, reg.update_image, _caller(body), _str(body, "image_id"),
                                   _list(body, "changes")))


def _image_action(method: str):
    async def op(request, reg, body):
        return _image(await write_call(request, getattr(reg, method), _caller(body), _str(body, "image_id")))
    return op


def _tag_action(method: str):
    async def op(request, reg, body):
        await write_call(request, getattr(reg, method), _caller(body), _str(body, "image_id"), _str(body, "tag"))
        return {}
    return op


async def _add_member(request, reg, body):
    return {"member": _obj(await write_call(request, reg.add_member, _caller(body), _str(body, "image_id"),
                                            _str(body, "member_id")))}


async def _list_members(request, reg, body):
    return {"members": [_obj(m) for m in await call(reg.list_members, _caller(body), _str(body, "image_id"))]}


async def _show_member(request, reg, body):
    return {"member": _obj(await call(reg.show_member, _caller(body), _str(body, "image_id"),
                                      _str(body, "member_id")))}


async def _update_member(request, reg, body):
    return {"member": _obj(await write_call(request, reg.update_member, _caller(body), _str(body, "image_id"),
                                            _str(body, "member_id"), _str(body, "status")))}


async def _delete_member(request, reg, body):
    await write_call(request, reg.delete_member, _caller(body), _str(body, "image_id"), _str(body, "member_id"))
    return {}


async def _create_task(request, reg, body):
    task_input = body.get("input")
    if not isinstance(task_input, dict):
        raise InvalidInputError("input must be an object")
    return _task(await write_call(request, reg.create_task, _caller(body), _str(body, "type"), task_input))


async def _list_tasks(request, reg, body):
    page = await call(reg.list_tasks, _caller(body), _pairs(body))
    return {"tasks": [_obj(t) for t in page.tasks], "next_marker": page.next_marker}


def _seconds(body: dict) -> float:
    v = body.get("lease_seconds")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidInputError("lease_seconds must be a number")
    return float(v)


async def _begin_upload(request, reg, body):
    token, img = await write_call(request, reg.begin_remote_upload, _caller(body), _str(body, "image_id"),
                                  lease_seconds=_seconds(body))
    return {"token": token, "blob": reg.blobs.final_rel(img.id, token), "size_cap": reg.size_cap,
            "image": _obj(img)}


async def _renew_upload(request, reg, body):
    await write_call(request, reg.renew_remote_upload, _str(body, "image_id"), _str(body, "token"),
                     lease_seconds=_seconds(body))
    return {}


async def _commit_upload(request, reg, body):
    vs = body.get("virtual_size")
    img = await write_call(request, reg.commit_remote_upload, _caller(body), _str(body, "image_id"),
                           _str(body, "token"), size=body.get("size"), md5=body.get("md5"),
                           sha512=body.get("sha512"), virtual_size=vs)
    return _image(img)


async def _abort_upload(request, reg, body):
    await write_call(request, reg.abort_remote_upload, _str(body, "image_id"), _str(body, "token"))
    return {}


class _Fenced:
    """The registry as a call carrying a worker's lease sees it: each method
    runs with the lease fenced (``Registry.fenced``) in the thread that runs it."""

    def __init__(self, reg, lease) -> None:
        self._reg, self._lease = reg, lease

    def __getattr__(self, name: str):
        attr = getattr(self._reg, name)
        if not callable(attr):
            return attr

        def fenced(*a, **kw):
            with self._reg.fenced(self._lease):
                return attr(*a, **kw)
        return fenced


OPS = {"claim": _claim, "heartbeat": _heartbeat, "finish": _finish, "show_task": _show_task,
       "unswept_failures": _unswept_failures, "mark_swept": _mark_swept, "release": _release,
       "show_image": _show_image, "create_image": _create_image, "delete_image": _delete_image,
       "open_data": _open_data, "register_blob": _register_blob,
       # an API host forwarding to this one
       "list_images": _list_images, "update_image": _update_image,
       "deactivate_image": _image_action("deactivate_image"), "reactivate_image": _image_action("reactivate_image"),
       "add_tag": _tag_action("add_tag"), "delete_tag": _tag_action("delete_tag"),
       "add_member": _add_member, "list_members": _list_members, "show_member": _show_member,
       "update_member": _update_member, "delete_member": _delete_member,
       "create_task": _create_task, "list_tasks": _list_tasks,
       "begin_upload": _begin_upload, "renew_upload": _renew_upload, "commit_upload": _commit_upload,
       "abort_upload": _abort_upload}


async def internal(request: Request) -> JSONResponse:
    _authorize(request)
    op = OPS.get(request.path_params["op"])
    if op is None:
        raise ApiError(404, "no such internal operation")
    reg = registry(request)
    upstream = getattr(reg, "api_url", None)
    if upstream is not None:
        raise ApiError(421, f"this API host forwards to the registry host {upstream}: point workers and "
                            "other API hosts at that one")
    body = json_object(await read_json(request))
    try:
        if body.get("lease") is not None:
            reg = _Fenced(reg, Lease.parse(body["lease"]))
        return JSONResponse(await op(request, reg, body))
    except VhdkitError as exc:
        # the caller re-raises the same error (type, code, message): a forwarding
        # API host answers its customer exactly as this host would
        return error_response(status_of(exc), exc.message,
                              extra={"type": type(exc).__name__, "kind": exc.code, "detail": exc.message})


async def _refuse(request: Request) -> JSONResponse:
    _authorize(request)
    raise ApiError(405, "internal operations are POST /internal/v1/<op>")


ROUTES = [
    Route("/internal/v1/{op}", internal, methods=["POST"]),
    Route("/internal/v1/{op}", _refuse, methods=["GET", "PUT", "DELETE", "PATCH"]),
]
