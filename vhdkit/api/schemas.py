"""JSON schemas served at /v2/schemas/*: exactly what this server accepts.

They follow Glance's published shapes (clients such as python-glanceclient
build their models and command-line options from them) but list only the
fields the registry implements; extra image properties are strings.
"""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .auth import caller
from ..registry.models import MAX_TAG, STATUSES
from .errors import ApiError

UUID_PATTERN = ("^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}"
                "-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$")

DISK_FORMATS = ["ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop"]
CONTAINER_FORMATS = ["ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed"]
IMAGE_STATUSES = list(STATUSES)
VISIBILITIES = ["community", "public", "private", "shared"]
MEMBER_STATUSES = ["pending", "accepted", "rejected"]
TASK_TYPES = ["import", "export"]
TASK_STATUSES = ["pending", "processing", "success", "failure"]
MAX_TAG_LENGTH = MAX_TAG  # the registry's rule


def _ro(schema: dict, description: str) -> dict:
    return dict(schema, readOnly=True, description=description)


IMAGE_PROPERTIES = {
    "id": _ro({"type": "string", "pattern": UUID_PATTERN}, "An identifier for the image"),
    "name": {"type": ["null", "string"], "maxLength": 255,
             "description": "Descriptive name for the image"},
    "status": _ro({"type": "string", "enum": IMAGE_STATUSES}, "Status of the image"),
    "visibility": {"type": "string", "enum": VISIBILITIES,
                   "description": "Scope of image accessibility"},
    "protected": {"type": "boolean",
                  "description": "If true, image will not be deletable."},
    "checksum": _ro({"type": ["null", "string"], "maxLength": 32},
                    "md5 hash of image contents."),
    "os_hash_algo": _ro({"type": ["null", "string"], "maxLength": 64},
                        "Algorithm to calculate the os_hash_value"),
    "os_hash_value": _ro({"type": ["null", "string"], "maxLength": 128},
                         "Hexdigest of the image contents using the algorithm in os_hash_algo."),
    "owner": {"type": ["null", "string"], "maxLength": 255,
              "description": "Owner of the image"},
    "size": _ro({"type": ["null", "integer"]}, "Size of image file in bytes"),
    "virtual_size": _ro({"type": ["null", "integer"]}, "Virtual size of image in bytes"),
    "container_format": {"type": ["null", "string"], "enum": [None] + CONTAINER_FORMATS,
                         "description": "Format of the container"},
    "disk_format": {"type": ["null", "string"], "enum": [None] + DISK_FORMATS,
                    "description": "Format of the disk"},
    "created_at": _ro({"type": "string"}, "Date and time of image registration"),
    "updated_at": _ro({"type": "string"}, "Date and time of the last image modification"),
    "tags": {"type": "array", "items": {"type": "string", "maxLength": MAX_TAG_LENGTH},
             "description": "List of strings related to the image"},
    "min_ram": {"type": "integer", "minimum": 0,
                "description": "Amount of ram (in MB) required to boot image."},
    "min_disk": {"type": "integer", "minimum": 0,
                 "description": "Amount of disk space (in GB) required to boot image."},
    "os_hidden": {"type": "boolean",
                  "description": "If true, image will not appear in default image list response."},
    "self": _ro({"type": "string"}, "An image self url"),
    "file": _ro({"type": "string"}, "An image file url"),
    "schema": _ro({"type": "string"}, "An image schema url"),
}

IMAGE = {
    "name": "image",
    "properties": IMAGE_PROPERTIES,
    "additionalProperties": {"type": "string"},
    "links": [
        {"rel": "self", "href": "{self}"},
        {"rel": "enclosure", "href": "{file}"},
        {"rel": "describedby", "href": "{schema}"},
    ],
}


def _collection(name: str, item: dict) -> dict:
    return {
        "name": name,
        "properties": {
            name: {"type": "array", "items": item},
            "schema": {"type": "string"},
            "first": {"type": "string"},
            "next": {"type": "string"},
        },
        "links": [
            {"rel": "first", "href": "{first}"},
            {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    }


MEMBER = {
    "name": "member",
    "properties": {
        "created_at": {"type": "string", "description": "Date and time of image member creation"},
        "updated_at": {"type": "string", "description": "Date and time of last modification of image member"},
        "image_id": {"type": "string", "pattern": UUID_PATTERN,
                     "description": "An identifier for the image"},
        "member_id": {"type": "string", "description": "An identifier for the image member (tenantId)"},
        "status": {"type": "string", "enum": MEMBER_STATUSES,
                   "description": "The status of this image member"},
        "schema": _ro({"type": "string"}, "A member schema url"),
    },
}

MEMBERS = {
    "name": "members",
    "properties": {
        "members": {"type": "array", "items": MEMBER},
        "schema": {"type": "string"},
    },
    "links": [{"rel": "describedby", "href": "{schema}"}],
}

TASK_PROPERTIES = {
    "id": _ro({"type": "string", "pattern": UUID_PATTERN}, "An identifier for the task"),
    "type": {"type": "string", "enum": TASK_TYPES, "description": "The type of task represented by this content"},
    "status": _ro({"type": "string", "enum": TASK_STATUSES}, "The current status of this task"),
    "input": {"type": ["null", "object"], "description": "The parameters required by task, JSON blob"},
    "result": _ro({"type": ["null", "object"]}, "The result of current task, JSON blob"),
    "owner": _ro({"type": ["null", "string"]}, "An identifier for the owner of this task"),
    "message": _ro({"type": "string"}, "Human-readable informative message only included when appropriate"),
    "expires_at": _ro({"type": ["null", "string"]}, "Datetime when this resource would be subject to removal"),
    "created_at": _ro({"type": "string"}, "Datetime when this resource was created"),
    "updated_at": _ro({"type": "string"}, "Datetime when this resource was updated"),
    "self": _ro({"type": "string"}, "A task self url"),
    "schema": _ro({"type": "string"}, "A task schema url"),
    # vhdkit: progress of a running task, shown only while it is processing
    # (Glance clients accept it: this schema does not forbid extra fields).
    "stage": _ro({"type": ["null", "string"]}, "The stage a processing task is in (vhdkit)"),
    "bytes_done": _ro({"type": ["null", "integer"]}, "Bytes done in that stage (vhdkit)"),
    "bytes_total": _ro({"type": ["null", "integer"]}, "Bytes that stage will handle, if known (vhdkit)"),
}

TASK = {
    "name": "task",
    "properties": TASK_PROPERTIES,
    "links": [{"rel": "self", "href": "{self}"}, {"rel": "describedby", "href": "{schema}"}],
}

# A task in a list omits its input and result, as Glance's does.
_TASK_SUMMARY = dict(TASK, properties={k: v for k, v in TASK_PROPERTIES.items()
                                       if k not in ("input", "result", "stage", "bytes_done", "bytes_total")})

SCHEMAS = {
    "image": IMAGE,
    "images": _collection("images", IMAGE),
    "member": MEMBER,
    "members": MEMBERS,
    "task": TASK,
    "tasks": _collection("tasks", _TASK_SUMMARY),
}


def read_only_image_fields() -> frozenset:
    return frozenset(k for k, v in IMAGE_PROPERTIES.items() if v.get("readOnly"))


async def show_schema(request: Request) -> JSONResponse:
    from ..registry.rbac import require_role
    require_role("schemas", caller(request))   # docs/rbac.md: Observer, Creator or Admin
    name = request.path_params["name"]
    if name not in SCHEMAS:
        raise ApiError(404, f"No schema named {name!r}; there are {', '.join(sorted(SCHEMAS))}")
    return JSONResponse(SCHEMAS[name])


ROUTES = [Route("/v2/schemas/{name}", show_schema, methods=["GET"])]
