"""Images and their tags (:class:`ImageService`), and what every service
asks of an image first: load it for an operation, 404 unless the caller may
see it, then its role and scope (see :mod:`.rbac`), and hide the properties
the caller's roles may not read (:mod:`.protections`)."""
from __future__ import annotations

import os

from ..errors import ConflictError, ForbiddenError, InvalidInputError, NotFoundError
from . import db as _db
from .models import (CONTAINER_FORMATS, DISK_FORMATS, MAX_NAME, MAX_PROPERTY_VALUE, PATCH_OPS, READONLY_FIELDS,
                     RESERVED_FIELDS, RESERVED_NAMESPACE, TRANSITIONS, VISIBILITIES, WRITABLE_FIELDS, Image,
                     ImageList, new_uuid, property_name_problem, tag_problem)
from .rbac import Caller, require_role, require_scope

TYPE_CHECKING = False   # typing and uuid are not imported at run time (start-up of `vhdkit image show`)
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping
    from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

    from .context import Context
    from .protections import PropertyProtections
    from .query import Params
# .protections (a rules file's parser) and .query (list filters and sorting)
# are imported where they are used: opening a registry and reading one image
# need neither (start-up time of `vhdkit image show`).

#: set one property (an upsert both engines know, SQLite >= 3.24)
SET_PROPERTY = ("INSERT INTO image_properties (image_id, name, value) VALUES (?, ?, ?) "
                "ON CONFLICT (image_id, name) DO UPDATE SET value = excluded.value")

_IMAGE_COLS = ("id, name, status, visibility, protected, owner, created_at, updated_at, checksum, "
               "os_hash_algo, os_hash_value, size, virtual_size, disk_format, container_format, "
               "min_disk, min_ram, os_hidden")


def _validate_uuid(image_id: str) -> str:
    import uuid

    try:
        return str(uuid.UUID(str(image_id)))
    except ValueError:
        raise InvalidInputError(f"invalid image id {image_id!r}: expected a UUID") from None


def _check_tag(tag: Any) -> str:
    problem = tag_problem(tag)
    if problem is not None:
        raise InvalidInputError(problem)
    return tag


def _check_prop_name(name: str) -> str:
    problem = property_name_problem(name)
    if problem is not None:
        raise InvalidInputError(problem)
    return name


def _check_field(name: str, value: Any, caller: Caller) -> Any:
    """Validate a writable base field's value; returns the stored value."""
    if name == "name":
        if value is not None and (not isinstance(value, str) or len(value) > MAX_NAME or "\x00" in value):
            raise InvalidInputError(f"name must be a string of at most {MAX_NAME} characters, or null")
        return value
    if name == "visibility":
        if value not in VISIBILITIES:
            raise InvalidInputError(f"invalid visibility {value!r}: expected one of {', '.join(VISIBILITIES)}")
        if value == "public" and not caller.is_service:
            raise ForbiddenError("only the service may make an image public")
        return value
    if name in ("protected", "os_hidden"):
        if not isinstance(value, bool):
            raise InvalidInputError(f"{name} must be true or false")
        return int(value)
    if name in ("disk_format", "container_format"):
        allowed = DISK_FORMATS if name == "disk_format" else CONTAINER_FORMATS
        if value is not None and value not in allowed:
            raise InvalidInputError(f"invalid {name} {value!r}: expected one of {', '.join(allowed)}")
        return value
    if name in ("min_disk", "min_ram"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 2**63:
            raise InvalidInputError(f"{name} must be a non-negative integer")
        return value
    if name == "tags":
        if not isinstance(value, list):
            raise InvalidInputError("tags must be a list of strings")
        out: List[str] = []
        for t in value:
            if _check_tag(t) not in out:
                out.append(t)
        return out
    raise InvalidInputError(f"unknown field {name!r}")  # pragma: no cover


def _check_not_reserved(name: str) -> None:
    """403 for a property in Glance's reserved namespace (Glance's wording)."""
    if name.startswith(RESERVED_NAMESPACE):
        raise ForbiddenError(f"Attribute '{name}' is reserved.")


def _patch_path(path: Any) -> str:
    if isinstance(path, list) and len(path) == 1 and isinstance(path[0], str):
        return path[0]
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidInputError(f"invalid JSON-patch path {path!r}: expected '/name'")
    token = path[1:]
    if "/" in token or not token:
        raise InvalidInputError(f"invalid JSON-patch path {path!r}: only one-level paths are supported")
    if "~" in token.replace("~0", "").replace("~1", ""):
        raise InvalidInputError(f"invalid JSON-patch path {path!r}: bad '~' escape")
    return token.replace("~1", "/").replace("~0", "~")



class ImageService:
    """Images and tags of the registry open as ``ctx``.  ``protections``:
    the property protection rules (None: the defaults, parsed on first use)."""

    def __init__(self, ctx: Context, protections: Optional[PropertyProtections] = None):
        self.ctx = ctx
        self._protections = protections
        self._can_cache: Dict[Tuple[frozenset, str, str], bool] = {}

    @property
    def protections(self) -> PropertyProtections:
        """The property protection rules: those given at open, else the
        defaults (parsed on first use: a registry that never meets an extra
        property never needs them)."""
        if self._protections is None:
            from .protections import PropertyProtections

            self._protections = PropertyProtections()
        return self._protections

    @protections.setter
    def protections(self, value: PropertyProtections) -> None:
        self._protections = value
        self._can_cache.clear()

    # ---- loading and visibility ----
    def load_many(self, conn: _db.Connection, ids: Sequence[str]) -> List[Image]:
        if not ids:
            return []
        out: Dict[str, Image] = {}
        for start in range(0, len(ids), 500):
            chunk = list(ids[start:start + 500])
            qs = ",".join("?" * len(chunk))
            for r in conn.execute(f"SELECT {_IMAGE_COLS} FROM images WHERE id IN ({qs})", chunk):
                out[r["id"]] = Image(
                    id=r["id"], name=r["name"], status=r["status"], visibility=r["visibility"],
                    protected=bool(r["protected"]), owner=r["owner"], created_at=r["created_at"],
                    updated_at=r["updated_at"], checksum=r["checksum"], os_hash_algo=r["os_hash_algo"],
                    os_hash_value=r["os_hash_value"], size=r["size"], virtual_size=r["virtual_size"],
                    disk_format=r["disk_format"], container_format=r["container_format"],
                    min_disk=r["min_disk"], min_ram=r["min_ram"], os_hidden=bool(r["os_hidden"]))
            for r in conn.execute(f"SELECT image_id, tag FROM image_tags WHERE image_id IN ({qs}) "
                                  f"ORDER BY image_id, tag", chunk):
                out[r[0]].tags.append(r[1])
            for r in conn.execute(f"SELECT image_id, name, value FROM image_properties "
                                  f"WHERE image_id IN ({qs}) ORDER BY image_id, name", chunk):
                out[r[0]].properties[r[1]] = r[2]
        return [out[i] for i in ids if i in out]

    def load(self, conn: _db.Connection, image_id: str) -> Optional[Image]:
        imgs = self.load_many(conn, [image_id])
        return imgs[0] if imgs else None

    def visible(self, conn: _db.Connection, caller: Caller, img: Image) -> bool:
        if caller.is_service or img.owner == caller.account or img.visibility in ("public", "community"):
            return True
        if img.visibility == "shared":
            return conn.execute("SELECT 1 FROM image_members WHERE image_id = ? AND member = ?",
                                (img.id, caller.account)).fetchone() is not None
        return False

    def get_for(self, op: str, caller: Caller, image_id: str, conn: Optional[_db.Connection] = None,
                *, member: Optional[str] = None) -> Image:
        """Load an image for ``op``: 404 unless visible, then role (403), then scope (403)."""
        conn = conn or self.ctx.conn()
        img = self.load(conn, str(image_id))
        if img is None or not self.visible(conn, caller, img):
            raise NotFoundError(f"image {image_id} not found")
        require_role(op, caller)
        require_scope(op, caller, owner=img.owner, member=member)
        return img

    def can(self, roles: frozenset, name: str, op: str) -> bool:
        key = (roles, name, op)
        hit = self._can_cache.get(key)
        if hit is None:
            if len(self._can_cache) > 10000:
                self._can_cache.clear()
            hit = self._can_cache[key] = self.protections.allowed(Caller("x", roles), name, op)
        return hit

    def present(self, caller: Caller, img: Image) -> Image:
        """Hide the properties the caller's roles may not read."""
        hidden = [k for k in img.properties if not self.can(caller.roles, k, "read")]
        for k in hidden:
            del img.properties[k]
        return img

    def check_prop(self, caller: Caller, name: str, op: str) -> None:
        if not self.can(caller.roles, name, op):
            raise ForbiddenError(f"property '{name}' is protected: your roles may not {op} it")

    # ---- images ----
    def get_schema(self, caller: Caller, name: str) -> Dict[str, Any]:
        """``GET /v2/schemas/{name}``: image, images, member, members, task, tasks."""
        require_role("schemas", caller)
        from .schemas import schema
        return schema(name)

    def create_image(self, caller: Caller, data: Optional[Mapping[str, Any]] = None, /, **fields: Any) -> Image:
        """Create a queued image from a v2 body (``name``, ``visibility``, ``tags``,
        ``disk_format``, ..., extra string properties at top level; ``id`` optional)."""
        body = dict(data or {})
        body.update(fields)
        require_role("create_image", caller)
        image_id = _validate_uuid(body.pop("id")) if body.get("id") is not None else new_uuid()
        body.pop("id", None)
        owner = body.pop("owner", None)
        if owner is not None and owner != caller.account:
            if not caller.is_service:
                raise ForbiddenError("attribute 'owner' may be set only by the service")
            Caller(owner)  # validates the id
        owner = owner or caller.account
        cols: Dict[str, Any] = {"name": None, "visibility": "shared", "protected": 0, "disk_format": None,
                                "container_format": None, "min_disk": 0, "min_ram": 0, "os_hidden": 0}
        tags: List[str] = []
        props: Dict[str, str] = {}
        for k, v in body.items():
            if k in READONLY_FIELDS:
                raise ForbiddenError(f"attribute '{k}' is read-only")
            if k in RESERVED_FIELDS:
                raise ForbiddenError(f"attribute '{k}' is reserved")
            if k == "tags":
                tags = _check_field(k, v, caller)
            elif k in WRITABLE_FIELDS:
                cols[k] = _check_field(k, v, caller)
            else:
                _check_prop_name(k)
                _check_not_reserved(k)
                if not isinstance(v, str) or len(v) > MAX_PROPERTY_VALUE:
                    raise InvalidInputError(f"property '{k}' must be a string (at most {MAX_PROPERTY_VALUE} characters)")
                self.check_prop(caller, k, "create")
                props[k] = v
        self.ctx.quota("tags", len(tags))
        self.ctx.quota("properties", len(props))
        now = self.ctx.now()
        with self.ctx.write() as conn:
            if conn.execute("SELECT 1 FROM images WHERE id = ? UNION ALL SELECT 1 FROM retired_image_ids "
                            "WHERE id = ?", (image_id, image_id)).fetchone():
                raise ConflictError(f"image {image_id} already exists")
            conn.execute(
                "INSERT INTO images (id, name, status, visibility, protected, owner, disk_format, "
                "container_format, min_disk, min_ram, os_hidden, created_at, updated_at) "
                "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (image_id, cols["name"], cols["visibility"], cols["protected"], owner, cols["disk_format"],
                 cols["container_format"], cols["min_disk"], cols["min_ram"], cols["os_hidden"], now, now))
            conn.executemany("INSERT INTO image_tags (image_id, tag) VALUES (?, ?)", [(image_id, t) for t in tags])
            conn.executemany("INSERT INTO image_properties (image_id, name, value) VALUES (?, ?, ?)",
                             [(image_id, k, v) for k, v in props.items()])
            img = self.load(conn, image_id)
        assert img is not None
        return self.present(caller, img)

    def show_image(self, caller: Caller, image_id: str) -> Image:
        with self.ctx.read() as conn:
            return self.present(caller, self.get_for("show_image", caller, image_id, conn))

    def list_images(self, caller: Caller, params: Optional[Params] = None, **kw: Any) -> ImageList:
        """List what ``caller`` may see.  ``params``: v2 query parameters as a
        mapping (values str or list) or (key, value) pairs -- filters, ``tag``
        (repeatable), ``visibility``, ``member_status``, ``sort`` or
        ``sort_key``/``sort_dir``, ``marker``, ``limit``.  Keyword arguments are
        added to ``params``."""
        require_role("list_images", caller)
        from .query import build_list_sql, param_pairs, parse_list_params

        q = parse_list_params(param_pairs(params, kw))
        account = None if caller.is_service else caller.account
        with self.ctx.read() as conn:
            marker_values = None
            if q.marker is not None:
                m = self.load(conn, q.marker) if q.marker else None
                if m is None or not self.visible(conn, caller, m):
                    raise InvalidInputError(f"marker {q.marker!r} not found")
                row = conn.execute(
                    f"SELECT {', '.join('i.' + k for k, _ in q.sort)} FROM images i WHERE i.id = ?",
                    (m.id,)).fetchone()
                marker_values = tuple(row)
            sql, params_ = build_list_sql(q, account, marker_values, conn.dialect)
            ids = [r[0] for r in conn.execute(sql, params_)]
            more = len(ids) > q.limit
            ids = ids[:q.limit]
            images = self.load_many(conn, ids)
        return ImageList([self.present(caller, i) for i in images],
                         ids[-1] if more and ids else None)

    def update_image(self, caller: Caller, image_id: str, changes: Sequence[Mapping[str, Any]]) -> Image:
        """Apply JSON-patch operations (``add``/``replace``/``remove`` on
        ``/field`` paths) atomically."""
        from collections.abc import Mapping   # not at import: a read needs none of collections

        if not isinstance(changes, (list, tuple)):
            raise InvalidInputError("a JSON patch is a list of operations")
        ops: List[Tuple[str, str, Any]] = []
        for ch in changes:
            if not isinstance(ch, Mapping):
                raise InvalidInputError("each JSON-patch operation must be an object")
            op = ch.get("op")
            if op not in PATCH_OPS:
                raise InvalidInputError(f"unsupported JSON-patch op {op!r}: use {', '.join(PATCH_OPS)}")
            path = _patch_path(ch.get("path"))
            if op != "remove" and "value" not in ch:
                raise InvalidInputError(f"JSON-patch op {op} {path!r} needs a value")
            ops.append((op, path, ch.get("value")))
        with self.ctx.write() as conn:
            img = self.get_for("update_image", caller, image_id, conn)
            readable = {k for k in img.properties if self.can(caller.roles, k, "read")}
            cols: Dict[str, Any] = {}
            tags = list(img.tags)
            props = dict(img.properties)
            for op, path, value in ops:
                if path in READONLY_FIELDS:
                    raise ForbiddenError(f"attribute '{path}' is read-only")
                if path == "owner" and caller.is_service and op != "remove":   # the operator moves an image
                    if not isinstance(value, str):
                        raise InvalidInputError("owner must be an account id")
                    cols["owner"] = Caller(value).account   # validates the id
                    continue
                if path in RESERVED_FIELDS:
                    raise ForbiddenError(f"attribute '{path}' is reserved")
                if path in WRITABLE_FIELDS:
                    if op == "remove":
                        raise ForbiddenError(f"attribute '{path}' is a base attribute and cannot be removed")
                    if path in ("disk_format", "container_format") and img.status != "queued" \
                            and value != getattr(img, path):
                        raise ForbiddenError(f"attribute '{path}' can be changed only while the image is queued")
                    v = _check_field(path, value, caller)
                    if path == "tags":
                        tags = v
                    else:
                        cols[path] = v
                    continue
                _check_prop_name(path)
                _check_not_reserved(path)
                exists = path in props and (path in readable or path not in img.properties)
                if op == "remove":
                    if not exists:
                        raise ConflictError(f"property '{path}' does not exist")
                    self.check_prop(caller, path, "delete")
                    del props[path]
                    continue
                if not isinstance(value, str) or len(value) > MAX_PROPERTY_VALUE:
                    raise InvalidInputError(f"property '{path}' must be a string "
                                            f"(at most {MAX_PROPERTY_VALUE} characters)")
                if op == "replace" and not exists:
                    raise ConflictError(f"property '{path}' does not exist")
                self.check_prop(caller, path, "update" if exists else "create")
                props[path] = value
            self.ctx.quota("tags", len(tags))
            if len(props) > len(img.properties):
                self.ctx.quota("properties", len(props))
            now = self.ctx.now()
            sets = ", ".join(f"{k} = ?" for k in cols)
            conn.execute(f"UPDATE images SET {sets}{', ' if sets else ''}updated_at = ? WHERE id = ?",
                         (*cols.values(), now, img.id))
            if tags != img.tags:
                conn.execute("DELETE FROM image_tags WHERE image_id = ?", (img.id,))
                conn.executemany("INSERT INTO image_tags (image_id, tag) VALUES (?, ?)",
                                 [(img.id, t) for t in tags])
            for k in img.properties:
                if k not in props:
                    conn.execute("DELETE FROM image_properties WHERE image_id = ? AND name = ?", (img.id, k))
            for k, v in props.items():
                if img.properties.get(k) != v:
                    conn.execute(SET_PROPERTY, (img.id, k, v))
            out = self.load(conn, img.id)
        assert out is not None
        return self.present(caller, out)

    def delete_image(self, caller: Caller, image_id: str) -> None:
        """Delete the image and its data.  Its id is retired: creating an image
        with it again is 409 for everyone (OSSN-0075) -- except when the
        service identity deletes (the pipeline undoing its own attempt, whose
        retry re-creates the image under the id its task derives)."""
        with self.ctx.write() as conn:
            img = self.get_for("delete_image", caller, image_id, conn)
            if img.protected:
                raise ForbiddenError(f"image {img.id} is protected and cannot be deleted")
            row = conn.execute("SELECT blob, upload_token FROM images WHERE id = ?", (img.id,)).fetchone()
            trash = []
            if row["blob"]:
                trash.append(row["blob"])
            if row["upload_token"]:
                tok = row["upload_token"]
                trash += [os.path.relpath(self.ctx.blobs.part_path(tok), self.ctx.blobs.root),
                          self.ctx.blobs.final_rel(img.id, tok)]
            self.ctx.trash(conn, trash)
            conn.execute("DELETE FROM images WHERE id = ?", (img.id,))
            if not caller.is_service:
                conn.execute("INSERT INTO retired_image_ids (id, deleted_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                             (img.id, self.ctx.now()))
        self.ctx.empty_trash()

    def _transition(self, caller: Caller, op: str, image_id: str, frm: Iterable[str], to: str) -> Image:
        with self.ctx.write() as conn:
            img = self.get_for(op, caller, image_id, conn)
            if img.status not in frm:
                raise InvalidInputError(f"cannot {op} image {img.id} in status '{img.status}'")
            conn.execute("UPDATE images SET status = ?, updated_at = ? WHERE id = ?", (to, self.ctx.now(), img.id))
            out = self.load(conn, img.id)
        assert out is not None
        return self.present(caller, out)

    def deactivate_image(self, caller: Caller, image_id: str) -> Image:
        return self._transition(caller, "deactivate", image_id, ("active", "deactivated"), "deactivated")

    def reactivate_image(self, caller: Caller, image_id: str) -> Image:
        return self._transition(caller, "reactivate", image_id, ("active", "deactivated"), "active")

    def set_status(self, caller: Caller, image_id: str, status: str) -> Image:
        """Service only: move an image along the state machine (e.g. queued ->
        importing for the pipeline, or -> killed)."""
        if not caller.is_service:
            raise ForbiddenError("only the service may set an image's status")
        with self.ctx.write() as conn:
            img = self.get_for("update_image", caller, image_id, conn)
            if status != img.status and status not in TRANSITIONS.get(img.status, ()):
                raise ConflictError(f"image {img.id}: no transition from '{img.status}' to '{status}'")
            conn.execute("UPDATE images SET status = ?, updated_at = ? WHERE id = ?", (status, self.ctx.now(), img.id))
            out = self.load(conn, img.id)
        assert out is not None
        return out

    # ---- tags ----
    def add_tag(self, caller: Caller, image_id: str, tag: str) -> None:
        """Add a tag (adding an existing tag is a no-op)."""
        _check_tag(tag)
        with self.ctx.write() as conn:
            img = self.get_for("add_tag", caller, image_id, conn)
            if tag in img.tags:
                return
            self.ctx.quota("tags", len(img.tags) + 1)
            conn.execute("INSERT INTO image_tags (image_id, tag) VALUES (?, ?)", (img.id, tag))
            conn.execute("UPDATE images SET updated_at = ? WHERE id = ?", (self.ctx.now(), img.id))

    def delete_tag(self, caller: Caller, image_id: str, tag: str) -> None:
        with self.ctx.write() as conn:
            img = self.get_for("delete_tag", caller, image_id, conn)
            if tag not in img.tags:
                raise NotFoundError(f"image {img.id} has no tag {tag!r}")
            conn.execute("DELETE FROM image_tags WHERE image_id = ? AND tag = ?", (img.id, tag))
            conn.execute("UPDATE images SET updated_at = ? WHERE id = ?", (self.ctx.now(), img.id))

