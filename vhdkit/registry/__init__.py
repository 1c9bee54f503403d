"""vhdkit.registry: a file-based image registry with sharing, roles and
protected properties (OpenStack Images v2 semantics).

    from vhdkit.registry import Registry, Caller
    reg = Registry("/data")                       # or None: the configured data directory
    me = Caller.parse("acct-a", "cloudImages:admin")
    img = reg.create_image(me, name="web", disk_format="vhd", container_format="bare")
    reg.upload_file(me, img.id, "disk.vhd")
    reg.list_images(me, {"tag": ["a", "b"], "sort": "name:asc"}).to_dict()
"""
from __future__ import annotations

from .core import Registry
from .data import DEFAULT_SIZE_CAP, ImageData
from .models import (BASE_FIELDS, CONTAINER_FORMATS, DEFAULT_QUOTAS, DISK_FORMATS, MEMBER_STATUSES,
                     READONLY_FIELDS, RESERVED_FIELDS, SORT_KEYS, STATUSES, TASK_STATUSES, TASK_TYPES,
                     TRANSITIONS, VISIBILITIES, WRITABLE_FIELDS, Image, ImageList, Member,
                     Task, TaskList, property_name_problem, tag_problem)
from .rbac import (ADMINS, ALL_ROLES, CREATORS, CUSTOMER_ROLES, MATRIX, OBSERVERS, SERVICE, Caller, Rule)

#: Names re-exported from modules that opening a registry and reading one
#: image do not need (list queries, a rules file's parser): imported on first
#: use, so that ``vhdkit image show|download`` start faster.
_LAZY = {"DEFAULT_RULES": "protections", "PropertyProtections": "protections",
         "DEFAULT_LIMIT": "query", "MAX_LIMIT": "query", "parse_list_params": "query"}


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Registry", "ImageData", "Caller", "Rule", "MATRIX", "PropertyProtections", "DEFAULT_RULES",
    "Image", "ImageList", "Member", "Task", "TaskList", "parse_list_params",
    "ADMINS", "CREATORS", "OBSERVERS", "CUSTOMER_ROLES", "ALL_ROLES", "SERVICE",
    "STATUSES", "TRANSITIONS", "VISIBILITIES", "DISK_FORMATS", "CONTAINER_FORMATS", "MEMBER_STATUSES",
    "TASK_TYPES", "TASK_STATUSES", "READONLY_FIELDS", "WRITABLE_FIELDS", "RESERVED_FIELDS", "BASE_FIELDS",
    "SORT_KEYS", "property_name_problem", "tag_problem", "DEFAULT_QUOTAS", "DEFAULT_LIMIT", "MAX_LIMIT", "DEFAULT_SIZE_CAP",
]
