"""The registry database: connection settings, the versioned schema and its
migrations, and transaction helpers.

Several processes may share one data directory: WAL journal (readers never
block the writer), a busy timeout, short transactions, and ``BEGIN IMMEDIATE``
for every read-modify-write so that no update is lost.
"""
from __future__ import annotations

import contextlib
import sqlite3
from typing import Iterator, List, Tuple

from ..errors import OutOfSpaceError, StorageError, UnavailableError, UnsupportedError
from .models import IMPORT_TASK_PROPERTY

BUSY_TIMEOUT_S = 30.0

#: images columns a list may be sorted by (models.SORT_KEYS; checked by a test)
_SORTABLE = ("name", "status", "container_format", "disk_format", "size", "id", "created_at",
             "updated_at", "virtual_size", "min_disk", "min_ram", "owner", "visibility")


def _list_indexes() -> List[Tuple[str, str]]:
    """(name, columns) of the list indexes: for each branch column P (owner,
    visibility) and sort key K, ``(P, K, created_at, id)`` -- the order a list
    sorted by K returns (created_at and id break ties); K = created_at, id or P
    itself need only ``(P, created_at, id)`` / ``(P, id)``."""
    out: List[Tuple[str, str]] = []
    for p, short in (("owner", "own"), ("visibility", "vis")):
        for k in _SORTABLE:
            if k == "id":
                out.append((f"ix_images_{short}_id", f"{p}, id"))
            elif k == "created_at":
                out.append((f"ix_images_{short}_created", f"{p}, created_at, id"))
            elif k != p:
                out.append((f"ix_images_{short}_{k}", f"{p}, {k}, created_at, id"))
    return out


# Migration N brings the schema from version N to N+1 (PRAGMA user_version).
MIGRATIONS: List[str] = [
    # 0 -> 1
    """
    CREATE TABLE images (
        id TEXT PRIMARY KEY,
        name TEXT,
        status TEXT NOT NULL,
        visibility TEXT NOT NULL,
        protected INTEGER NOT NULL DEFAULT 0,
        owner TEXT NOT NULL,
        checksum TEXT,
        os_hash_algo TEXT,
        os_hash_value TEXT,
        size INTEGER,
        virtual_size INTEGER,
        disk_format TEXT,
        container_format TEXT,
        min_disk INTEGER NOT NULL DEFAULT 0,
        min_ram INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        blob TEXT,
        upload_token TEXT
    );
    CREATE INDEX ix_images_owner_name ON images(owner, name, id);
    CREATE INDEX ix_images_owner_created ON images(owner, created_at, id);
    CREATE INDEX ix_images_vis_name ON images(visibility, name, id);
    CREATE INDEX ix_images_vis_created ON images(visibility, created_at, id);
    CREATE INDEX ix_images_status ON images(status);

    CREATE TABLE image_tags (
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        tag TEXT NOT NULL,
        PRIMARY KEY (image_id, tag)
    ) WITHOUT ROWID;
    CREATE INDEX ix_tags_tag ON image_tags(tag, image_id);

    CREATE TABLE image_properties (
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (image_id, name)
    ) WITHOUT ROWID;
    CREATE INDEX ix_props_name_value ON image_properties(name, value, image_id);

    CREATE TABLE image_members (
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        member TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (image_id, member)
    ) WITHOUT ROWID;
    CREATE INDEX ix_members_member ON image_members(member, status, image_id);

    -- blobs to remove once no upload holds them (deleted images, failed uploads)
    CREATE TABLE trash (
        path TEXT PRIMARY KEY,
        created_at TEXT NOT NULL
    );

    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        status TEXT NOT NULL,
        input TEXT NOT NULL,
        result TEXT,
        message TEXT NOT NULL DEFAULT '',
        owner TEXT NOT NULL,
        owner_roles TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        expires_at TEXT,
        worker_id TEXT,
        lease_expires_at TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        stage TEXT,
        bytes_done INTEGER,
        bytes_total INTEGER
    );
    CREATE INDEX ix_tasks_owner_created ON tasks(owner, created_at, id);
    CREATE INDEX ix_tasks_status_created ON tasks(status, created_at);
    """,
    # 1 -> 2: one index per (owner | visibility, sort key) ending in the sort's
    # tie-breakers (created_at, id), so every branch of a list walks an index in
    # the requested order and stops after a page (see query.py).
    "\n".join(["DROP INDEX ix_images_owner_name;", "DROP INDEX ix_images_owner_created;",
               "DROP INDEX ix_images_vis_name;", "DROP INDEX ix_images_vis_created;"]
              + [f"CREATE INDEX {name} ON images({cols});" for name, cols in _list_indexes()]),
    # 2 -> 3: uploads made by an API host that forwards to this registry
    # (``vhdkit serve --registry URL``) hold a lease instead of a local lock:
    # the time (stored text form) until which the upload counts as alive.
    "ALTER TABLE images ADD COLUMN upload_lease_until TEXT;",
    # 3 -> 4: Images API 2.7 hidden images (left out of lists unless asked for;
    # checked on the walked rows, see query.py)
    f"""
    ALTER TABLE images ADD COLUMN os_hidden INTEGER NOT NULL DEFAULT 0;
    -- an interoperable import's os_glance_import_task lives exactly as long as
    -- the image is importing: whatever ends it (success, failure, a reset by
    -- cleanup after a crash, deletion) drops the property in the same transaction
    CREATE TRIGGER tr_images_import_ended AFTER UPDATE OF status ON images
    WHEN NEW.status != 'importing'
    BEGIN
        DELETE FROM image_properties WHERE image_id = NEW.id AND name = '{IMPORT_TASK_PROPERTY}';
    END;
    """,
    # 4 -> 5: ids of deleted images, never handed out again (OpenStack
    # OSSN-0075: a new image under an old id would be taken for the old one).
    "CREATE TABLE retired_image_ids (id TEXT PRIMARY KEY, deleted_at TEXT NOT NULL);",
    # 5 -> 6: a failed task's remains (its image, segments, work directory)
    # are removed once; 1 when that was done (see tasks.py, fencing).
    "ALTER TABLE tasks ADD COLUMN swept INTEGER NOT NULL DEFAULT 0;",
]
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: str) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN ourselves)."""
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise UnavailableError(f"cannot open registry database {path}: {exc}") from None
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")
    # Memory-mapped reads and a larger page cache: a page of a big registry costs
    # about what it costs on a small one (no read() per B-tree page).
    conn.execute("PRAGMA mmap_size = 1073741824")
    conn.execute("PRAGMA cache_size = -65536")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise StorageError(f"registry database {path}: cannot switch to WAL (got {mode})")
    migrate(conn, path)
    return conn


def migrate(conn: sqlite3.Connection, path: str = "") -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise UnsupportedError(
            f"registry database {path} has schema version {version}; this vhdkit knows "
            f"up to {SCHEMA_VERSION} (upgrade vhdkit)")
    with immediate(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for n in range(version, SCHEMA_VERSION):
            for stmt in _split(MIGRATIONS[n]):
                conn.execute(stmt)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _split(script: str) -> Iterator[str]:
    buf = ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                yield buf.strip()
            buf = ""
    if buf.strip():
        yield buf.strip()


def is_full(exc: BaseException) -> bool:
    """Whether a SQLite error means the database's file system is full."""
    return isinstance(exc, sqlite3.Error) and (getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
                                               or "disk is full" in str(exc))


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction taken up front (no lost updates, no upgrade deadlock).
    A full file system is :class:`OutOfSpaceError` (nothing of the transaction stays)."""
    _begin(conn, "BEGIN IMMEDIATE")
    try:
        yield conn
    except sqlite3.Error as exc:
        _rollback(conn)
        if is_full(exc):
            raise OutOfSpaceError() from None
        raise
    except BaseException:
        _rollback(conn)
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback(conn)
        if is_full(exc):
            raise OutOfSpaceError() from None
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


@contextlib.contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A read transaction: one consistent view across several SELECTs."""
    _begin(conn, "BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


def _begin(conn: sqlite3.Connection, stmt: str) -> None:
    try:
        conn.execute(stmt)
    except sqlite3.OperationalError as exc:
        if is_full(exc):
            raise OutOfSpaceError() from None
        raise UnavailableError(f"registry database busy or unavailable: {exc}") from None
