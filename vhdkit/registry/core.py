"""The :class:`Registry`: images, tags, data, cleanup.  Members live in
:mod:`.sharing`, tasks in :mod:`.tasks` (mixins of the same class).

Every public method takes the caller's identity (:class:`~.rbac.Caller`)
first; see :mod:`.rbac` for the order of checks (404 before 403)."""
from __future__ import annotations

import datetime as _dt
import io
import os
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..errors import (ConflictError, ForbiddenError, InvalidInputError, NotFoundError, QuotaError,
                      StorageError, VhdkitError)
from . import blobs as _blobs
from . import db as _db
from .models import (CONTAINER_FORMATS, DEFAULT_QUOTAS, DISK_FORMATS, MAX_NAME, MAX_PROPERTY_NAME,
                     MAX_PROPERTY_VALUE, MAX_TAG, READONLY_FIELDS, RESERVED_FIELDS, TRANSITIONS,
                     VISIBILITIES, WRITABLE_FIELDS, Image, ImageList, now_text)
from .protections import PropertyProtections
from .query import Params, build_list_sql, parse_list_params
from .rbac import SERVICE, Caller, require_role, require_scope
from .sharing import MembersMixin
from .tasks import TasksMixin

Progress = Optional[Callable[[int, Optional[int]], None]]

#: Glance's default image_size_cap (1 TiB)
DEFAULT_SIZE_CAP = 1 << 40

_IMAGE_COLS = ("id, name, status, visibility, protected, owner, created_at, updated_at, checksum, "
               "os_hash_algo, os_hash_value, size, virtual_size, disk_format, container_format, "
               "min_disk, min_ram")


@dataclass
class ImageData:
    """An open handle on an active image's data (see :meth:`Registry.open_data`)."""
    image: Image
    path: str
    size: int
    checksum: Optional[str]

    def iter(self, start: int = 0, end: Optional[int] = None, chunk: int = 1 << 20) -> Iterator[bytes]:
        return _blobs.iter_range(self.path, start, self.size if end is None else end, chunk)


def _validate_uuid(image_id: str) -> str:
    try:
        return str(uuid.UUID(str(image_id)))
    except ValueError:
        raise InvalidInputError(f"invalid image id {image_id!r}: expected a UUID") from None


def _check_tag(tag: Any) -> str:
    if not isinstance(tag, str) or not tag:
        raise InvalidInputError("a tag must be a non-empty string")
    if len(tag) > MAX_TAG:
        raise InvalidInputError(f"tag is {len(tag)} characters long; the limit is {MAX_TAG}")
    if "\x00" in tag:
        raise InvalidInputError("a tag may not contain NUL")
    return tag


def _check_prop_name(name: str) -> str:
    if not name or len(name) > MAX_PROPERTY_NAME or "\x00" in name:
        raise InvalidInputError(f"invalid property name {name[:40]!r}")
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
    if name == "protected":
        if not isinstance(value, bool):
            raise InvalidInputError("protected must be true or false")
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


class Registry(MembersMixin, TasksMixin):
    """A file-based image registry on a data directory.

    ``Registry(home=None)`` opens (creating if needed) ``home`` -- default
    ``$VHDKIT_HOME`` or ``./.vhdkit`` -- and runs a quick :meth:`cleanup`.
    Safe to share between threads; several processes may open the same
    directory at once.
    """

    def __init__(self, home: Optional[str] = None, *, protections: "PropertyProtections | str | None" = None,
                 quotas: Optional[Mapping[str, int]] = None, size_cap: int = DEFAULT_SIZE_CAP,
                 clock: Optional[Callable[[], _dt.datetime]] = None, cleanup: bool = True):
        home = home or os.environ.get("VHDKIT_HOME") or os.path.join(".", ".vhdkit")
        self.home = os.path.abspath(home)
        try:
            os.makedirs(self.home, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create data directory {self.home}: {exc.strerror}") from None
        self.db_path = os.path.join(self.home, "registry.db")
        self.blobs = _blobs.BlobStore(os.path.join(self.home, "blobs"))
        if protections is None:
            protections = os.environ.get("VHDKIT_PROPERTY_PROTECTIONS")
            if not protections:
                p = os.path.join(self.home, "property-protections.conf")
                protections = p if os.path.exists(p) else None
        if isinstance(protections, (str, os.PathLike)):
            protections = PropertyProtections.from_file(protections)
        self.protections: PropertyProtections = protections or PropertyProtections()
        self.quotas: Dict[str, int] = dict(DEFAULT_QUOTAS)
        self.quotas.update(quotas or {})
        self.size_cap = size_cap
        self._clock = clock
        self._can_cache: Dict[Tuple[frozenset, str, str], bool] = {}
        self._local = threading.local()
        self._all_conns: List[Tuple[int, sqlite3.Connection]] = []
        self._conn()
        if cleanup:
            self.cleanup()

    # ---- plumbing ----
    def _conn(self) -> sqlite3.Connection:
        loc = self._local
        conn = getattr(loc, "conn", None)
        if conn is None or loc.pid != os.getpid():
            conn = _db.connect(self.db_path)
            loc.conn, loc.pid = conn, os.getpid()
            self._all_conns.append((os.getpid(), conn))
        return conn

    def close(self) -> None:
        for pid, c in self._all_conns:
            if pid != os.getpid():
                continue  # inherited over fork: the parent's to close
            try:
                c.close()
            except sqlite3.Error:
                pass
        self._all_conns.clear()
        self._local = threading.local()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _now_dt(self) -> _dt.datetime:
        return self._clock() if self._clock else _dt.datetime.now(_dt.timezone.utc)

    def _now(self) -> str:
        return now_text(self._now_dt())

    def _write(self):
        return _db.immediate(self._conn())

    def _read(self):
        return _db.snapshot(self._conn())

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` ('ok' when healthy)."""
        return "; ".join(r[0] for r in self._conn().execute("PRAGMA integrity_check"))

    # ---- loading and visibility ----
    def _load_many(self, conn: sqlite3.Connection, ids: Sequence[str]) -> List[Image]:
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
                    min_disk=r["min_disk"], min_ram=r["min_ram"])
            for r in conn.execute(f"SELECT image_id, tag FROM image_tags WHERE image_id IN ({qs}) "
                                  f"ORDER BY image_id, tag", chunk):
                out[r[0]].tags.append(r[1])
            for r in conn.execute(f"SELECT image_id, name, value FROM image_properties "
                                  f"WHERE image_id IN ({qs}) ORDER BY image_id, name", chunk):
                out[r[0]].properties[r[1]] = r[2]
        return [out[i] for i in ids if i in out]

    def _load(self, conn: sqlite3.Connection, image_id: str) -> Optional[Image]:
        imgs = self._load_many(conn, [image_id])
        return imgs[0] if imgs else None

    def _visible(self, conn: sqlite3.Connection, caller: Caller, img: Image) -> bool:
        if caller.is_service or img.owner == caller.account or img.visibility in ("public", "community"):
            return True
        if img.visibility == "shared":
            return conn.execute("SELECT 1 FROM image_members WHERE image_id = ? AND member = ?",
                                (img.id, caller.account)).fetchone() is not None
        return False

    def _get_for(self, op: str, caller: Caller, image_id: str, conn: Optional[sqlite3.Connection] = None,
                 *, member: Optional[str] = None) -> Image:
        """Load an image for ``op``: 404 unless visible, then role (403), then scope (403)."""
        conn = conn or self._conn()
        img = self._load(conn, str(image_id))
        if img is None or not self._visible(conn, caller, img):
            raise NotFoundError(f"image {image_id} not found")
        require_role(op, caller)
        require_scope(op, caller, owner=img.owner, member=member)
        return img

    def _can(self, roles: frozenset, name: str, op: str) -> bool:
        key = (roles, name, op)
        hit = self._can_cache.get(key)
        if hit is None:
            if len(self._can_cache) > 10000:
                self._can_cache.clear()
            hit = self._can_cache[key] = self.protections.allowed(Caller("x", roles), name, op)
        return hit

    def _present(self, caller: Caller, img: Image) -> Image:
        """Hide the properties the caller's roles may not read."""
        hidden = [k for k in img.properties if not self._can(caller.roles, k, "read")]
        for k in hidden:
            del img.properties[k]
        return img

    def _check_prop(self, caller: Caller, name: str, op: str) -> None:
        if not self._can(caller.roles, name, op):
            raise ForbiddenError(f"property '{name}' is protected: your roles may not {op} it")

    def get_schema(self, caller: Caller, name: str) -> Dict[str, Any]:
        """``GET /v2/schemas/{name}``: image, images, member, members, task, tasks."""
        require_role("schemas", caller)
        from .schemas import schema
        return schema(name)

    # ---- images ----
    def create_image(self, caller: Caller, data: Optional[Mapping[str, Any]] = None, /, **fields: Any) -> Image:
        """Create a queued image from a v2 body (``name``, ``visibility``, ``tags``,
        ``disk_format``, ..., extra string properties at top level; ``id`` optional)."""
        body = dict(data or {})
        body.update(fields)
        require_role("create_image", caller)
        image_id = _validate_uuid(body.pop("id")) if body.get("id") is not None else str(uuid.uuid4())
        body.pop("id", None)
        owner = body.pop("owner", None)
        if owner is not None and owner != caller.account:
            if not caller.is_service:
                raise ForbiddenError("attribute 'owner' may be set only by the service")
            Caller(owner)  # validates the id
        owner = owner or caller.account
        cols: Dict[str, Any] = {"name": None, "visibility": "shared", "protected": 0,
                                "disk_format": None, "container_format": None, "min_disk": 0, "min_ram": 0}
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
                if not isinstance(v, str) or len(v) > MAX_PROPERTY_VALUE:
                    raise InvalidInputError(f"property '{k}' must be a string (at most {MAX_PROPERTY_VALUE} characters)")
                self._check_prop(caller, k, "create")
                props[k] = v
        self._quota("tags", len(tags))
        self._quota("properties", len(props))
        now = self._now()
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone():
                raise ConflictError(f"image {image_id} already exists")
            conn.execute(
                "INSERT INTO images (id, name, status, visibility, protected, owner, disk_format, "
                "container_format, min_disk, min_ram, created_at, updated_at) "
                "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (image_id, cols["name"], cols["visibility"], cols["protected"], owner, cols["disk_format"],
                 cols["container_format"], cols["min_disk"], cols["min_ram"], now, now))
            conn.executemany("INSERT INTO image_tags (image_id, tag) VALUES (?, ?)", [(image_id, t) for t in tags])
            conn.executemany("INSERT INTO image_properties (image_id, name, value) VALUES (?, ?, ?)",
                             [(image_id, k, v) for k, v in props.items()])
            img = self._load(conn, image_id)
        assert img is not None
        return self._present(caller, img)

    def _quota(self, what: str, n: int) -> None:
        limit = self.quotas[what]
        if n > limit:
            raise QuotaError(f"too many {what}: {n} exceeds the quota of {limit} per image")

    def show_image(self, caller: Caller, image_id: str) -> Image:
        with self._read() as conn:
            return self._present(caller, self._get_for("show_image", caller, image_id, conn))

    def list_images(self, caller: Caller, params: Optional[Params] = None, **kw: Any) -> ImageList:
        """List what ``caller`` may see.  ``params``: v2 query parameters as a
        mapping (values str or list) or (key, value) pairs -- filters, ``tag``
        (repeatable), ``visibility``, ``member_status``, ``sort`` or
        ``sort_key``/``sort_dir``, ``marker``, ``limit``.  Keyword arguments are
        added to ``params``."""
        require_role("list_images", caller)
        pairs: List[Tuple[str, Any]] = []
        if params is not None:
            pairs.extend(params.items() if isinstance(params, Mapping) else params)  # type: ignore[arg-type]
        pairs.extend(kw.items())
        flat: List[Tuple[str, Any]] = []
        for k, v in pairs:
            flat.extend((k, x) for x in v) if isinstance(v, (list, tuple)) else flat.append((k, v))
        q = parse_list_params(flat)
        account = None if caller.is_service else caller.account
        with self._read() as conn:
            marker_values = None
            if q.marker is not None:
                m = self._load(conn, q.marker) if q.marker else None
                if m is None or not self._visible(conn, caller, m):
                    raise InvalidInputError(f"marker {q.marker!r} not found")
                row = conn.execute(
                    f"SELECT {', '.join('i.' + k for k, _ in q.sort)} FROM images i WHERE i.id = ?",
                    (m.id,)).fetchone()
                marker_values = tuple(row)
            sql, params_ = build_list_sql(q, account, marker_values)
            ids = [r[0] for r in conn.execute(sql, params_)]
            more = len(ids) > q.limit
            ids = ids[:q.limit]
            images = self._load_many(conn, ids)
        return ImageList([self._present(caller, i) for i in images],
                         ids[-1] if more and ids else None)

    def update_image(self, caller: Caller, image_id: str, changes: Sequence[Mapping[str, Any]]) -> Image:
        """Apply JSON-patch operations (``add``/``replace``/``remove`` on
        ``/field`` paths) atomically."""
        if not isinstance(changes, (list, tuple)):
            raise InvalidInputError("a JSON patch is a list of operations")
        ops: List[Tuple[str, str, Any]] = []
        for ch in changes:
            if not isinstance(ch, Mapping):
                raise InvalidInputError("each JSON-patch operation must be an object")
            op = ch.get("op")
            if op not in ("add", "replace", "remove"):
                raise InvalidInputError(f"unsupported JSON-patch op {op!r}: use add, replace or remove")
            path = _patch_path(ch.get("path"))
            if op != "remove" and "value" not in ch:
                raise InvalidInputError(f"JSON-patch op {op} {path!r} needs a value")
            ops.append((op, path, ch.get("value")))
        with self._write() as conn:
            img = self._get_for("update_image", caller, image_id, conn)
            readable = {k for k in img.properties if self._can(caller.roles, k, "read")}
            cols: Dict[str, Any] = {}
            tags = list(img.tags)
            props = dict(img.properties)
            for op, path, value in ops:
                if path in READONLY_FIELDS:
                    raise ForbiddenError(f"attribute '{path}' is read-only")
                if path in RESERVED_FIELDS or path == "owner":
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
                exists = path in props and (path in readable or path not in img.properties)
                if op == "remove":
                    if not exists:
                        raise ConflictError(f"property '{path}' does not exist")
                    self._check_prop(caller, path, "delete")
                    del props[path]
                    continue
                if not isinstance(value, str) or len(value) > MAX_PROPERTY_VALUE:
                    raise InvalidInputError(f"property '{path}' must be a string "
                                            f"(at most {MAX_PROPERTY_VALUE} characters)")
                if op == "replace" and not exists:
                    raise ConflictError(f"property '{path}' does not exist")
                self._check_prop(caller, path, "update" if exists else "create")
                props[path] = value
            self._quota("tags", len(tags))
            if len(props) > len(img.properties):
                self._quota("properties", len(props))
            now = self._now()
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
                    conn.execute("INSERT OR REPLACE INTO image_properties (image_id, name, value) "
                                 "VALUES (?, ?, ?)", (img.id, k, v))
            out = self._load(conn, img.id)
        assert out is not None
        return self._present(caller, out)

    def delete_image(self, caller: Caller, image_id: str) -> None:
        with self._write() as conn:
            img = self._get_for("delete_image", caller, image_id, conn)
            if img.protected:
                raise ForbiddenError(f"image {img.id} is protected and cannot be deleted")
            row = conn.execute("SELECT blob, upload_token FROM images WHERE id = ?", (img.id,)).fetchone()
            now = self._now()
            trash = []
            if row["blob"]:
                trash.append(row["blob"])
            if row["upload_token"]:
                tok = row["upload_token"]
                trash += [os.path.relpath(self.blobs.part_path(tok), self.blobs.root),
                          self.blobs.final_rel(img.id, tok)]
            conn.executemany("INSERT OR IGNORE INTO trash (path, created_at) VALUES (?, ?)",
                             [(p, now) for p in trash])
            conn.execute("DELETE FROM images WHERE id = ?", (img.id,))
        self._empty_trash()

    def _transition(self, caller: Caller, op: str, image_id: str, frm: Iterable[str], to: str) -> Image:
        with self._write() as conn:
            img = self._get_for(op, caller, image_id, conn)
            if img.status not in frm:
                raise InvalidInputError(f"cannot {op} image {img.id} in status '{img.status}'")
            conn.execute("UPDATE images SET status = ?, updated_at = ? WHERE id = ?", (to, self._now(), img.id))
            out = self._load(conn, img.id)
        assert out is not None
        return self._present(caller, out)

    def deactivate_image(self, caller: Caller, image_id: str) -> Image:
        return self._transition(caller, "deactivate", image_id, ("active", "deactivated"), "deactivated")

    def reactivate_image(self, caller: Caller, image_id: str) -> Image:
        return self._transition(caller, "reactivate", image_id, ("active", "deactivated"), "active")

    def set_status(self, caller: Caller, image_id: str, status: str) -> Image:
        """Service only: move an image along the state machine (e.g. queued ->
        importing for the pipeline, or -> killed)."""
        if not caller.is_service:
            raise ForbiddenError("only the service may set an image's status")
        with self._write() as conn:
            img = self._get_for("update_image", caller, image_id, conn)
            if status != img.status and status not in TRANSITIONS.get(img.status, ()):
                raise ConflictError(f"image {img.id}: no transition from '{img.status}' to '{status}'")
            conn.execute("UPDATE images SET status = ?, updated_at = ? WHERE id = ?", (status, self._now(), img.id))
            out = self._load(conn, img.id)
        assert out is not None
        return out

    # ---- tags ----
    def add_tag(self, caller: Caller, image_id: str, tag: str) -> None:
        """Add a tag (adding an existing tag is a no-op)."""
        _check_tag(tag)
        with self._write() as conn:
            img = self._get_for("add_tag", caller, image_id, conn)
            if tag in img.tags:
                return
            self._quota("tags", len(img.tags) + 1)
            conn.execute("INSERT INTO image_tags (image_id, tag) VALUES (?, ?)", (img.id, tag))
            conn.execute("UPDATE images SET updated_at = ? WHERE id = ?", (self._now(), img.id))

    def delete_tag(self, caller: Caller, image_id: str, tag: str) -> None:
        with self._write() as conn:
            img = self._get_for("delete_tag", caller, image_id, conn)
            if tag not in img.tags:
                raise NotFoundError(f"image {img.id} has no tag {tag!r}")
            conn.execute("DELETE FROM image_tags WHERE image_id = ? AND tag = ?", (img.id, tag))
            conn.execute("UPDATE images SET updated_at = ? WHERE id = ?", (self._now(), img.id))

    # ---- data ----
    def open_upload(self, caller: Caller, image_id: str) -> "UploadWriter":
        """Start an upload to a ``queued`` (or ``importing``) image and return a
        writable file object; ``write()`` to it, then ``commit()`` (the image
        turns active) or ``abort()`` (it returns to queued).  Used as a context
        manager it aborts unless committed.  For producers that write (a tar or
        gzip writer): no second pass over the data."""
        token = uuid.uuid4().hex
        up = _blobs.Upload(self.blobs, str(image_id), token).open()
        up.limit = self.size_cap
        try:
            with self._write() as conn:
                img = self._get_for("upload_data", caller, image_id, conn)
                if img.status not in ("queued", "importing"):
                    raise ConflictError(f"image {img.id} is '{img.status}': data can be uploaded "
                                        "only to a queued image")
                if not img.disk_format or not img.container_format:
                    raise InvalidInputError("set disk_format and container_format before uploading data")
                new_status = "saving" if img.status == "queued" else "importing"
                conn.execute("UPDATE images SET status = ?, upload_token = ?, updated_at = ? WHERE id = ?",
                             (new_status, token, self._now(), img.id))
        except BaseException:
            up.discard()
            up.release()
            raise
        return UploadWriter(self, caller, img, up)

    def upload(self, caller: Caller, image_id: str, stream: BinaryIO, *, size: Optional[int] = None,
               virtual_size: Optional[int] = None, progress: Progress = None) -> Image:
        """Store ``stream`` as the image's data and make it active.

        The image must be ``queued`` (or ``importing``) with disk and container
        formats set.  Size, md5 and sha512 are computed in one pass; ``size``,
        when given, must match.  ``virtual_size`` is recorded as given, else
        read from the data when disk_format is ``vhd``.  On any failure the image
        returns to ``queued`` and nothing is left behind."""
        with self.open_upload(caller, image_id) as w:
            w._up.write_from(stream, progress=progress, total=size)
            return w.commit(size=size, virtual_size=virtual_size)

    def upload_file(self, caller: Caller, image_id: str, path: str, **kw: Any) -> Image:
        """:meth:`upload` from a file (``size`` checked against the file's size)."""
        with open(path, "rb") as f:
            kw.setdefault("size", os.fstat(f.fileno()).st_size)
            return self.upload(caller, image_id, f, **kw)

    def open_data(self, caller: Caller, image_id: str) -> ImageData:
        """The data of an active image (the file is opened lazily by the iterators;
        a concurrent delete may make it vanish: NotFoundError then)."""
        with self._read() as conn:
            img = self._get_for("download_data", caller, image_id, conn)
            if img.status == "deactivated" and not caller.is_service:
                raise ForbiddenError(f"image {img.id} is deactivated: its data cannot be downloaded")
            row = conn.execute("SELECT blob FROM images WHERE id = ?", (img.id,)).fetchone()
            if img.status != "active" or not row["blob"]:
                raise ConflictError(f"image {img.id} has no data (status '{img.status}')", code="no_data")
        return ImageData(self._present(caller, img), self.blobs.path(row["blob"]), img.size or 0, img.checksum)

    def _range(self, size: int, offset: int, length: Optional[int]) -> Tuple[int, int]:
        if offset < 0 or (length is not None and length < 0) or (offset >= size and size > 0) \
                or (size == 0 and offset > 0):
            raise InvalidInputError(f"range starting at {offset} is outside the data (size {size})",
                                    code="range_not_satisfiable")
        end = size if length is None else min(size, offset + length)
        return offset, end

    def iter_data(self, caller: Caller, image_id: str, *, offset: int = 0, length: Optional[int] = None,
                  chunk: int = 1 << 20) -> Tuple[ImageData, Iterator[bytes]]:
        """(handle, iterator over bytes [offset, offset+length)) -- for HTTP streaming."""
        h = self.open_data(caller, image_id)
        start, end = self._range(h.size, offset, length)
        try:
            f = open(h.path, "rb", buffering=0)
        except FileNotFoundError:
            raise NotFoundError(f"image {image_id} not found") from None

        return h, _blobs.iter_file(f, start, end, chunk)

    def download(self, caller: Caller, image_id: str, out: BinaryIO, *, offset: int = 0,
                 length: Optional[int] = None, progress: Progress = None) -> int:
        """Copy the data (or a byte range) into ``out``; returns bytes written."""
        h = self.open_data(caller, image_id)
        start, end = self._range(h.size, offset, length)
        try:
            return _blobs.copy_range(h.path, out, start, end, progress)
        except FileNotFoundError:
            raise NotFoundError(f"image {image_id} not found") from None

    # ---- cleanup ----
    def _empty_trash(self) -> int:
        conn = self._conn()
        removed = 0
        for (p,) in conn.execute("SELECT path FROM trash").fetchall():
            full = self.blobs.path(p)
            if _blobs.is_locked(full):
                continue
            self.blobs.unlink(full)
            with self._write() as c:
                c.execute("DELETE FROM trash WHERE path = ?", (p,))
            removed += 1
        return removed

    def cleanup(self, deep: bool = False) -> Dict[str, int]:
        """Undo what dead processes left: uploads whose process died go back to
        ``queued`` and lose their partial data; deleted images' blobs are
        removed.  ``deep`` also removes blob files no image refers to (a scan of
        the whole blob directory)."""
        report = {"reset_uploads": 0, "removed_parts": 0, "removed_blobs": 0}
        conn = self._conn()
        live_tokens = set()
        stuck = conn.execute("SELECT id, upload_token FROM images WHERE status IN ('saving', 'importing') "
                             "AND upload_token IS NOT NULL").fetchall()
        for image_id, tok in stuck:
            with self._write() as c:
                row = c.execute("SELECT upload_token FROM images WHERE id = ?", (image_id,)).fetchone()
                if row is None or row[0] != tok:
                    continue
                part, final = self.blobs.part_path(tok), self.blobs.path(self.blobs.final_rel(image_id, tok))
                if _blobs.is_locked(part) or _blobs.is_locked(final):
                    live_tokens.add(tok)
                    continue
                self.blobs.unlink(part)
                self.blobs.unlink(final)
                c.execute("UPDATE images SET status = 'queued', upload_token = NULL, updated_at = ? "
                          "WHERE id = ?", (self._now(), image_id))
                report["reset_uploads"] += 1
        try:
            names = os.listdir(self.blobs.tmp)
        except FileNotFoundError:
            names = []
        for name in names:
            p = os.path.join(self.blobs.tmp, name)
            if name.endswith(".part") and name[:-5] in live_tokens:
                continue
            if name.endswith(".new") and not _blobs.older_than(p, 60):
                continue  # being created and locked right now (see Upload.open)
            if not _blobs.is_locked(p):
                self.blobs.unlink(p)
                report["removed_parts"] += 1
        report["removed_blobs"] += self._empty_trash()
        if deep:
            report["removed_blobs"] += self._remove_unreferenced()
        return report

    def _remove_unreferenced(self) -> int:
        removed = 0
        conn = self._conn()
        for sub in os.listdir(self.blobs.root):
            d = os.path.join(self.blobs.root, sub)
            if sub == "tmp" or not os.path.isdir(d):
                continue
            for name in os.listdir(d):
                rel = os.path.join(sub, name)
                image_id, _, tok = name.partition(".")
                row = conn.execute("SELECT blob, upload_token FROM images WHERE id = ?", (image_id,)).fetchone()
                if row is not None and (row[0] == rel or row[1] == tok):
                    continue
                full = os.path.join(d, name)
                if _blobs.is_locked(full):
                    continue
                # re-check under the write lock (an upload may have committed meanwhile)
                with self._write() as c:
                    row = c.execute("SELECT blob FROM images WHERE id = ?", (image_id,)).fetchone()
                    if row is not None and row[0] == rel:
                        continue
                    self.blobs.unlink(full)
                removed += 1
        return removed


def _vhd_virtual_size(path: str) -> Optional[int]:
    """virtual_size of a VHD via the core reader, None when the reader is not
    available (yet) or the data is not a readable VHD."""
    try:
        from ..vhd import info  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        return None
    try:
        return int(info(path).virtual_size)
    except Exception:  # noqa: BLE001 - not a VHD, or reader missing native build
        return None


class UploadWriter(io.RawIOBase):
    """A writable upload in progress (see :meth:`Registry.open_upload`)."""

    def __init__(self, reg: Registry, caller: Caller, img: Image, up: _blobs.Upload):
        super().__init__()
        self._reg, self._caller, self._img, self._up = reg, caller, img, up
        self._done = False
        self.image_id = img.id

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        if self._done:
            raise ValueError("upload already committed or aborted")
        n = len(memoryview(b).cast("B")) if not isinstance(b, (bytes, bytearray)) else len(b)
        self._up.feed(b if isinstance(b, (bytes, bytearray)) else memoryview(b).cast("B"))
        return n

    @property
    def bytes_written(self) -> int:
        return self._up.size

    def commit(self, *, size: Optional[int] = None, virtual_size: Optional[int] = None) -> Image:
        """Finish: check ``size`` if given, fsync, rename, record the hashes and
        make the image active."""
        if self._done:
            raise ValueError("upload already committed or aborted")
        reg, up, img = self._reg, self._up, self._img
        try:
            digest = up.digest()
            if size is not None and digest.size != size:
                raise InvalidInputError(f"upload ended after {digest.size} bytes; {size} were announced")
            rel = up.publish()
            if virtual_size is None and img.disk_format == "vhd":
                virtual_size = _vhd_virtual_size(reg.blobs.path(rel))
            with reg._write() as conn:
                row = conn.execute("SELECT upload_token FROM images WHERE id = ?", (img.id,)).fetchone()
                if row is None or row[0] != up.token:
                    raise ConflictError(f"image {img.id} was deleted or reset during the upload")
                conn.execute(
                    "UPDATE images SET status = 'active', size = ?, checksum = ?, os_hash_algo = 'sha512', "
                    "os_hash_value = ?, virtual_size = ?, blob = ?, upload_token = NULL, updated_at = ? "
                    "WHERE id = ?",
                    (digest.size, digest.md5, digest.sha512, virtual_size, rel, reg._now(), img.id))
                out = reg._load(conn, img.id)
        except BaseException:
            self.abort()
            raise
        self._done = True
        up.release()
        assert out is not None
        return reg._present(self._caller, out)

    def abort(self) -> None:
        """Drop the data; the image returns to ``queued``."""
        if self._done:
            return
        self._done = True
        up = self._up
        up.release()
        up.discard()
        try:
            with self._reg._write() as conn:
                conn.execute("UPDATE images SET status = 'queued', upload_token = NULL, updated_at = ? "
                             "WHERE id = ? AND upload_token = ?", (self._reg._now(), self._img.id, up.token))
        except VhdkitError:
            pass  # cleanup() resets it later

    def close(self) -> None:
        if not self._done:
            self.abort()
        super().close()

    def __exit__(self, *exc: Any) -> None:
        self.close()
