"""Tasks (import/export): create, list, show.  The pipeline that runs them is
elsewhere; the API exposes the registry's task records."""
from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .auth import caller
from .errors import ApiError
from .http import (call, clean_text, collection_links, json_object, query_pairs, read_json, registry,
                   write_call)
from .schemas import TASK_TYPES, UUID_PATTERN

_UUID = re.compile(UUID_PATTERN)


def task_summary(task) -> dict:
    """A task in a list: without input and result, as Glance lists them."""
    d = task.to_dict()
    d.pop("input", None)
    d.pop("result", None)
    return d


async def create_task(request: Request) -> JSONResponse:
    who = caller(request)
    body = json_object(await read_json(request))
    kind, task_input = body.get("type"), body.get("input")
    if kind not in TASK_TYPES or not isinstance(task_input, dict) or set(body) - {"type", "input"}:
        raise ApiError(400, f'The body must be {{"type": {"|".join(TASK_TYPES)}, "input": {{...}}}}')
    from ..tasks.pipeline import validate_task_input  # the worker's own checks, at the door

    validate_task_input(kind, task_input)
    task = (await write_call(request, registry(request).create_task, who, kind, task_input)).to_dict()
    return JSONResponse(task, status_code=201, headers={"Location": task["self"]})


async def list_tasks(request: Request) -> JSONResponse:
    who = caller(request)
    pairs = query_pairs(request)
    page = await call(registry(request).list_tasks, who, pairs)
    body = {"tasks": [task_summary(t) for t in page.tasks], "schema": "/v2/schemas/tasks"}
    body.update(collection_links("/v2/tasks", pairs, page.next_marker))
    return JSONResponse(body)


async def show_task(request: Request) -> JSONResponse:
    raw = request.path_params["task_id"]
    if not _UUID.match(raw):
        raise ApiError(404, "No task found with ID " + clean_text(raw, "The task id", status=404, max_len=64))
    task = await call(registry(request).show_task, caller(request), raw.lower())
    body = task.to_dict()
    if task.status == "processing":  # progress (declared in the task schema)
        body.update(stage=task.stage, bytes_done=task.bytes_done, bytes_total=task.bytes_total)
    return JSONResponse(body)


ROUTES = [
    Route("/v2/tasks", create_task, methods=["POST"]),
    Route("/v2/tasks", list_tasks, methods=["GET"]),
    Route("/v2/tasks/{task_id}", show_task, methods=["GET"]),
]
