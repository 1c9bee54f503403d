"""JSON schemas of the v2 API (``/v2/schemas/{image,images,member,members,task,tasks}``),
built from the registry's own vocabulary so that they describe exactly what it accepts."""
from __future__ import annotations

import copy
from typing import Any, Dict

from ..errors import NotFoundError
from .models import (CONTAINER_FORMATS, DISK_FORMATS, MAX_NAME, MAX_TAG, MEMBER_STATUSES, READONLY_FIELDS,
                     STATUSES, TASK_STATUSES, TASK_TYPES, VISIBILITIES)

_UUID = r"^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"
_TIME = {"type": "string", "readOnly": True}


def _image() -> Dict[str, Any]:
    props: Dict[str, Any] = {
        "id": {"type": "string", "pattern": _UUID, "description": "An identifier for the image"},
        "name": {"type": ["null", "string"], "maxLength": MAX_NAME},
        "status": {"type": "string", "enum": list(STATUSES), "readOnly": True},
        "visibility": {"type": "string", "enum": list(VISIBILITIES)},
        "protected": {"type": "boolean"},
        "checksum": {"type": ["null", "string"], "maxLength": 32, "readOnly": True},
        "os_hash_algo": {"type": ["null", "string"], "maxLength": 64, "readOnly": True},
        "os_hash_value": {"type": ["null", "string"], "maxLength": 128, "readOnly": True},
        "owner": {"type": ["null", "string"], "maxLength": 255},
        "size": {"type": ["null", "integer"], "readOnly": True},
        "virtual_size": {"type": ["null", "integer"], "readOnly": True},
        "container_format": {"type": ["null", "string"], "enum": [None, *CONTAINER_FORMATS]},
        "disk_format": {"type": ["null", "string"], "enum": [None, *DISK_FORMATS]},
        "created_at": dict(_TIME),
        "updated_at": dict(_TIME),
        "tags": {"type": "array", "items": {"type": "string", "maxLength": MAX_TAG}},
        "min_ram": {"type": "integer", "minimum": 0},
        "min_disk": {"type": "integer", "minimum": 0},
        "os_hidden": {"type": "boolean"},
        "self": {"type": "string", "readOnly": True},
        "file": {"type": "string", "readOnly": True},
        "schema": {"type": "string", "readOnly": True},
    }
    for f in READONLY_FIELDS:
        props[f]["readOnly"] = True
    return {
        "name": "image", "properties": props,
        "additionalProperties": {"type": "string"},
        "links": [{"rel": "self", "href": "{self}"}, {"rel": "enclosure", "href": "{file}"},
                  {"rel": "describedby", "href": "{schema}"}],
    }


def _member() -> Dict[str, Any]:
    return {"name": "member", "properties": {
        "image_id": {"type": "string", "pattern": _UUID},
        "member_id": {"type": "string"},
        "status": {"type": "string", "enum": list(MEMBER_STATUSES)},
        "created_at": dict(_TIME), "updated_at": dict(_TIME),
        "schema": {"type": "string", "readOnly": True}}}


def _task() -> Dict[str, Any]:
    return {"name": "task", "properties": {
        "id": {"type": "string", "pattern": _UUID},
        "type": {"type": "string", "enum": list(TASK_TYPES)},
        "status": {"type": "string", "enum": list(TASK_STATUSES), "readOnly": True},
        "input": {"type": "object"},
        "result": {"type": ["null", "object"]},
        "owner": {"type": "string"},
        "message": {"type": "string"},
        "expires_at": {"type": ["null", "string"]},
        "created_at": dict(_TIME), "updated_at": dict(_TIME),
        "self": {"type": "string"}, "schema": {"type": "string"}},
        "links": [{"rel": "self", "href": "{self}"}, {"rel": "describedby", "href": "{schema}"}]}


def _collection(name: str, item: Dict[str, Any]) -> Dict[str, Any]:
    return {"name": name, "properties": {
        name: {"type": "array", "items": item},
        "schema": {"type": "string"}, "first": {"type": "string"}, "next": {"type": "string"}},
        "links": [{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"},
                  {"rel": "describedby", "href": "{schema}"}]}


def schema(name: str) -> Dict[str, Any]:
    """The schema ``name`` (image, images, member, members, task, tasks)."""
    single = {"image": _image, "member": _member, "task": _task}
    if name in single:
        return single[name]()
    if name.endswith("s") and name[:-1] in single:
        return _collection(name, copy.deepcopy(single[name[:-1]]()))
    raise NotFoundError(f"no schema named {name!r}")
