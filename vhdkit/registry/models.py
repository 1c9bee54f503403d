"""Registry vocabulary (field lists, statuses, formats) and the dataclasses the
:class:`~vhdkit.registry.Registry` returns.  ``to_dict()`` gives the OpenStack
Images v2 JSON shapes."""
from __future__ import annotations

from .._record import factory, record

TYPE_CHECKING = False   # typing, dataclasses, datetime and uuid are not imported at run time (start-up of `vhdkit image show`)
if TYPE_CHECKING:
    import datetime as _dt
    from typing import Any, Dict, List, Optional

# ---- vocabulary ----
STATUSES = ("queued", "saving", "active", "killed", "deleted", "deactivated",
            "uploading", "importing", "pending_delete")
#: allowed status transitions (Glance's image state machine, trimmed to what we do)
TRANSITIONS = {
    "queued": {"saving", "uploading", "importing", "active", "deleted", "killed"},
    "saving": {"active", "queued", "killed", "deleted"},
    # interoperable import: data staged (uploading), then imported
    "uploading": {"importing", "active", "queued", "killed", "deleted"},
    "importing": {"active", "queued", "killed", "deleted"},
    "active": {"deactivated", "pending_delete", "deleted"},
    "deactivated": {"active", "pending_delete", "deleted"},
    "killed": {"deleted"},
    "pending_delete": {"deleted"},
    "deleted": set(),
}
VISIBILITIES = ("public", "private", "shared", "community")
DISK_FORMATS = ("vhd", "vhdx", "raw", "qcow2", "vmdk", "vdi", "iso", "ami", "ari", "aki", "ploop")
CONTAINER_FORMATS = ("bare", "ovf", "ova", "aki", "ari", "ami", "docker", "compressed")
MEMBER_STATUSES = ("pending", "accepted", "rejected")
TASK_TYPES = ("import", "export")
TASK_STATUSES = ("pending", "processing", "success", "failure")

#: Base fields a caller can never set (docs/rbac.md): 403.
READONLY_FIELDS = ("id", "status", "checksum", "size", "virtual_size", "created_at",
                   "updated_at", "self", "file", "schema", "os_hash_algo", "os_hash_value")
#: Base fields a caller may set (create / PATCH) subject to update permission.
WRITABLE_FIELDS = ("name", "visibility", "protected", "disk_format", "container_format",
                   "min_disk", "min_ram", "tags", "os_hidden")
#: Base fields only the service identity may change.
RESERVED_FIELDS = ("owner", "locations", "direct_url", "deleted", "deleted_at")
#: Glance's reserved property namespace: no caller may create, change or
#: remove a property named so (403); the registry sets the few it shows
#: (import state: ``os_glance_import_task``, ``os_glance_failed_import``).
RESERVED_NAMESPACE = "os_glance_"
#: the id of the import running on an image (Glance's import lock), present
#: only while the image is ``importing``
IMPORT_TASK_PROPERTY = "os_glance_import_task"
#: the per-store import progress Glance keeps on an imported image; with one
#: store both stay empty, as on a single-store Glance
IMPORT_STORE_PROPERTIES = ("os_glance_importing_to_stores", "os_glance_failed_import")
BASE_FIELDS = READONLY_FIELDS + WRITABLE_FIELDS + ("owner",)
#: Sort keys accepted by list (whitelist; mapped to columns in query.py).
SORT_KEYS = ("name", "status", "container_format", "disk_format", "size", "id",
             "created_at", "updated_at", "virtual_size", "min_disk", "min_ram",
             "owner", "visibility")

#: JSON-patch operations an image update takes
PATCH_OPS = ("add", "remove", "replace")

MAX_NAME = 255
MAX_TAG = 255
MAX_PROPERTY_NAME = 255
MAX_PROPERTY_VALUE = 65535

#: Property names -- also every list-filter key the HTTP API lets through --
#: are 1..255 characters without control characters, not starting with ``.``
#: (os_distro, com.rackspace__1__options, owner_specified.openstack.md5; a
#: JSON-patch path may escape ``/`` and ``~`` in them).
#: (Character sets, not regular expressions: ``re`` is start-up cost of every registry command.)
_CONTROL = frozenset(map(chr, [*range(0x20), *range(0x7F, 0xA0)]))
#: Tags are 1..255 characters without control characters or ``/``, and not ``.`` or ``..``.
_TAG_FORBIDDEN = _CONTROL | {"/"}


def has_control(text: str) -> bool:
    """Whether ``text`` holds a control character (C0, DEL or C1): the one rule for names, tags and query text."""
    return not _CONTROL.isdisjoint(text)


def tag_problem(tag: Any) -> Optional[str]:
    """Why ``tag`` is not a valid tag (None when it is).  The one rule for the registry and the API."""
    if not isinstance(tag, str) or not tag:
        return "a tag must be a non-empty string"
    if len(tag) > MAX_TAG:
        return f"a tag may be at most {MAX_TAG} characters long (got {len(tag)})"
    if not _TAG_FORBIDDEN.isdisjoint(tag) or tag in (".", ".."):
        return "a tag may not contain control characters or '/', nor be '.' or '..'"
    return None


def property_name_problem(name: Any) -> Optional[str]:
    """Why ``name`` is not a valid property name (None when it is).  The one rule for the registry and the API."""
    if not isinstance(name, str) or not name or len(name) > MAX_PROPERTY_NAME:
        shown = name[:40] if isinstance(name, str) else name
        return f"invalid property name {shown!r}: it must be 1..{MAX_PROPERTY_NAME} characters"
    if has_control(name) or name.startswith("."):
        return f"invalid property name {name[:40]!r}: no control characters, and not starting with '.'"
    return None


DEFAULT_QUOTAS = {"tags": 128, "properties": 128, "members": 128}


def new_uuid() -> str:
    """A new random id (uuid4, canonical text)."""
    import uuid

    return str(uuid.uuid4())


def now_text(ts: Optional[_dt.datetime] = None) -> str:
    """Stored timestamp text: fixed width, so text order is time order."""
    import datetime as _dt

    ts = ts or _dt.datetime.now(_dt.timezone.utc)
    return ts.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def api_time(stored: Optional[str]) -> Optional[str]:
    """'2026-01-02T03:04:05.123456Z' -> '2026-01-02T03:04:05Z' (the v2 format)."""
    if stored is None:
        return None
    return stored[:19] + "Z"


@record
class Image:
    id: str
    name: Optional[str]
    status: str
    visibility: str
    protected: bool
    owner: str
    created_at: str            # stored form (microseconds); to_dict() shows v2 form
    updated_at: str
    checksum: Optional[str] = None
    os_hash_algo: Optional[str] = None
    os_hash_value: Optional[str] = None
    size: Optional[int] = None
    virtual_size: Optional[int] = None
    disk_format: Optional[str] = None
    container_format: Optional[str] = None
    min_disk: int = 0
    min_ram: int = 0
    os_hidden: bool = False
    tags: List[str] = factory(list)
    properties: Dict[str, str] = factory(dict)

    def to_dict(self) -> Dict[str, Any]:
        """Glance's image JSON: extra properties at top level, links."""
        d: Dict[str, Any] = {
            "id": self.id, "name": self.name, "status": self.status,
            "visibility": self.visibility, "protected": self.protected,
            "checksum": self.checksum, "os_hash_algo": self.os_hash_algo,
            "os_hash_value": self.os_hash_value, "size": self.size,
            "virtual_size": self.virtual_size, "disk_format": self.disk_format,
            "container_format": self.container_format, "min_disk": self.min_disk,
            "min_ram": self.min_ram, "os_hidden": self.os_hidden, "owner": self.owner, "tags": list(self.tags),
            "created_at": api_time(self.created_at), "updated_at": api_time(self.updated_at),
            "self": f"/v2/images/{self.id}", "file": f"/v2/images/{self.id}/file",
            "schema": "/v2/schemas/image",
        }
        for k, v in self.properties.items():
            d.setdefault(k, v)
        return d


@record
class ImageList:
    images: List[Image]
    next_marker: Optional[str]   # id of the last image when more follow, else None

    def to_dict(self) -> Dict[str, Any]:
        return {"images": [i.to_dict() for i in self.images], "schema": "/v2/schemas/images",
                "first": "/v2/images", **({"next_marker": self.next_marker} if self.next_marker else {})}


@record
class Member:
    image_id: str
    member_id: str
    status: str
    created_at: str
    updated_at: str

    def to_dict(self) -> Dict[str, Any]:
        return {"image_id": self.image_id, "member_id": self.member_id, "status": self.status,
                "created_at": api_time(self.created_at), "updated_at": api_time(self.updated_at),
                "schema": "/v2/schemas/member"}


@record
class Task:
    id: str
    type: str
    status: str
    input: Dict[str, Any]
    result: Optional[Dict[str, Any]]
    message: str
    owner: str
    created_at: str
    updated_at: str
    expires_at: Optional[str] = None
    # lease / progress (not part of the v2 shape; see to_dict(internal=True))
    worker_id: Optional[str] = None
    lease_expires_at: Optional[str] = None
    attempts: int = 0
    stage: Optional[str] = None
    bytes_done: Optional[int] = None
    bytes_total: Optional[int] = None
    #: roles of the caller that created the task (the pipeline acts with them)
    owner_roles: List[str] = factory(list)

    def to_dict(self, internal: bool = False) -> Dict[str, Any]:
        d: Dict[str, Any] = {
            "id": self.id, "type": self.type, "status": self.status, "input": self.input,
            "result": self.result, "owner": self.owner, "message": self.message,
            "expires_at": api_time(self.expires_at), "created_at": api_time(self.created_at),
            "updated_at": api_time(self.updated_at), "self": f"/v2/tasks/{self.id}",
            "schema": "/v2/schemas/task",
        }
        if internal:
            d.update(worker_id=self.worker_id, lease_expires_at=api_time(self.lease_expires_at),
                     attempts=self.attempts, stage=self.stage, bytes_done=self.bytes_done,
                     bytes_total=self.bytes_total, owner_roles=list(self.owner_roles))
        return d


@record
class TaskList:
    tasks: List[Task]
    next_marker: Optional[str]

    def to_dict(self) -> Dict[str, Any]:
        return {"tasks": [t.to_dict() for t in self.tasks], "schema": "/v2/schemas/tasks",
                "first": "/v2/tasks", **({"next_marker": self.next_marker} if self.next_marker else {})}
