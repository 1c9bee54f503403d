"""Image members: share an image with another account, list, show, accept or
reject (the member itself), remove (the owner)."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..registry.rbac import is_account_id
from .auth import caller
from .errors import ApiError
from .http import call, json_object, read_json, registry, write_call
from .images import image_id
from .schemas import MEMBER_STATUSES


# Like Glance, the member bodies need only their one key; others (openstacksdk
# sends the whole member resource back) are ignored.

def _member_path(request: Request) -> str:
    member = request.path_params["member_id"]
    if not is_account_id(member):
        raise ApiError(404, "No such member of this image")
    return member


async def create_member(request: Request) -> JSONResponse:
    who = caller(request)
    iid = image_id(request)
    body = json_object(await read_json(request))
    member = body.get("member")
    if not is_account_id(member):
        raise ApiError(400, 'The body must be {"member": "<account id>"} with a valid account id')
    member = await write_call(request, registry(request).add_member, who, iid, member)
    return JSONResponse(member.to_dict())


async def list_members(request: Request) -> JSONResponse:
    members = await call(registry(request).list_members, caller(request), image_id(request))
    return JSONResponse({"members": [m.to_dict() for m in members], "schema": "/v2/schemas/members"})


async def show_member(request: Request) -> JSONResponse:
    member = await call(registry(request).show_member, caller(request), image_id(request), _member_path(request))
    return JSONResponse(member.to_dict())


async def update_member(request: Request) -> JSONResponse:
    who = caller(request)
    iid = image_id(request)
    member = _member_path(request)
    body = json_object(await read_json(request))
    status = body.get("status")
    if status not in MEMBER_STATUSES:
        raise ApiError(400, 'The body must be {"status": "pending"|"accepted"|"rejected"}')
    updated = await write_call(request, registry(request).update_member, who, iid, member, status)
    return JSONResponse(updated.to_dict())


async def delete_member(request: Request) -> Response:
    await write_call(request, registry(request).delete_member, caller(request), image_id(request), _member_path(request))
    return Response(status_code=204)


ROUTES = [
    Route("/v2/images/{image_id}/members", create_member, methods=["POST"]),
    Route("/v2/images/{image_id}/members", list_members, methods=["GET"]),
    Route("/v2/images/{image_id}/members/{member_id}", show_member, methods=["GET"]),
    Route("/v2/images/{image_id}/members/{member_id}", update_member, methods=["PUT"]),
    Route("/v2/images/{image_id}/members/{member_id}", delete_member, methods=["DELETE"]),
]
