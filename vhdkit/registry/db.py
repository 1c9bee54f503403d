"""The registry database: which engine (one URL), connections with one
interface on SQLite and PostgreSQL, transactions, and everything in SQL that
differs between the two.  The registry modules write portable SQL with ``?``
placeholders and ask :attr:`Connection.dialect` for the rest.

- No URL (the setting ``database_url``, ``VHDKIT_DATABASE_URL``, unset): the embedded SQLite file
  ``registry.db`` in the data directory.  Several processes may share it: WAL
  journal (readers never block the writer), a busy timeout, short
  transactions, ``BEGIN IMMEDIATE`` for every read-modify-write.
- ``postgresql://user@host:port/db``: PostgreSQL through psycopg 3, imported
  only then.  Several hosts may share it; :meth:`PgConnection.immediate`
  gives the same single-writer guarantee as ``BEGIN IMMEDIATE``.

The schema's versions are Alembic revisions (vhdkit/registry/migrations);
opening a database at the newest revision costs one SELECT and imports
neither Alembic nor SQLAlchemy.
"""
from __future__ import annotations

import os

try:  # sqlite3's own C module: the package around it adds DB-API aliases and date/datetime
    # adapters the registry never uses (it stores times as text), and imports datetime for
    # them (start-up of every registry command)
    import _sqlite3 as sqlite3
except ImportError:  # pragma: no cover - an interpreter without CPython's module
    import sqlite3

TYPE_CHECKING = False   # typing is not imported at run time (start-up of `vhdkit image show`)
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Iterator, List, Optional, Sequence, Tuple

from .._lazy import contextmanager
from ..errors import DatabaseUnavailableError, OutOfSpaceError, StorageError, UnsupportedError

BUSY_TIMEOUT_S = 30.0
#: the newest schema revision (migrations/versions/r00NN_*.py; a test checks Alembic's head)
HEAD = 6
#: PostgreSQL advisory lock keys: the registry's one writer, and schema migrations
_WRITE_LOCK = 0x76686B01
_MIGRATE_LOCK = 0x76686B02

#: images columns a list may be sorted by (models.SORT_KEYS; checked by a test)
_SORTABLE = ("name", "status", "container_format", "disk_format", "size", "id", "created_at",
             "updated_at", "virtual_size", "min_disk", "min_ram", "owner", "visibility")


def check_url(url: Optional[str]) -> Optional[str]:
    """The registry's database URL (the setting ``database_url``,
    vhdkit/config.py) checked: None means the embedded SQLite file; only
    ``postgresql://`` URLs are known."""
    url = url or None
    if url is not None and not url.startswith(("postgresql://", "postgres://")):
        raise UnsupportedError(f"database URL must start with postgresql:// (or be unset for SQLite), "
                               f"not {url.split(':', 1)[0]}:")
    return url


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


def _split(script: str) -> Iterator[str]:
    """The statements of a SQL script (comment lines dropped)."""
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


# ---- dialects: the SQL that differs ----

class SqliteDialect:
    name = "sqlite"
    #: a task claim needs no row lock: BEGIN IMMEDIATE already excludes other writers
    claim_lock = ""

    def ddl(self, script: str) -> List[str]:
        return list(_split(script))

    def index_columns(self, cols: str) -> str:
        return cols

    def noindex(self, col: str) -> str:
        """``col`` such that the planner does not drive the query by an index on it."""
        return "+" + col

    def order(self, expr: str, direction: str) -> str:
        """An ORDER BY term; NULLs sort first ascending, last descending (SQLite's rule)."""
        return f"{expr} {direction.upper()}"

    def members_join(self) -> str:
        """The list's membership branch: members first, each image by primary key."""
        return ("image_members m INDEXED BY ix_members_member "
                "CROSS JOIN images i INDEXED BY sqlite_autoindex_images_1 ON i.id = m.image_id")

    def import_ended_trigger(self, prop: str) -> List[str]:
        return [f"""CREATE TRIGGER tr_images_import_ended AFTER UPDATE OF status ON images
    WHEN NEW.status != 'importing'
    BEGIN
        DELETE FROM image_properties WHERE image_id = NEW.id AND name = '{prop}';
    END"""]


class PostgresDialect(SqliteDialect):
    name = "postgresql"
    #: two workers never claim one task: a row another transaction holds is skipped
    claim_lock = " FOR UPDATE SKIP LOCKED"

    def ddl(self, script: str) -> List[str]:
        # SQLite's INTEGER is 64-bit; WITHOUT ROWID is SQLite's storage choice;
        # text compares byte by byte as in SQLite (the list order, markers)
        return [s.replace("INTEGER", "BIGINT").replace(") WITHOUT ROWID", ")").replace(" TEXT", ' TEXT COLLATE "C"')
                for s in _split(script)]

    def index_columns(self, cols: str) -> str:
        # NULLS FIRST ascending (and so last descending, scanned backwards) is
        # SQLite's order; the list's ORDER BY asks for it (see order())
        first, *rest = [c.strip() for c in cols.split(",")]
        return ", ".join([first] + [f"{c} NULLS FIRST" for c in rest])

    def noindex(self, col: str) -> str:
        return col

    def order(self, expr: str, direction: str) -> str:
        return f"{expr} ASC NULLS FIRST" if direction == "asc" else f"{expr} DESC NULLS LAST"

    def members_join(self) -> str:
        return "image_members m JOIN images i ON i.id = m.image_id"

    def import_ended_trigger(self, prop: str) -> List[str]:
        return [f"""CREATE FUNCTION tr_images_import_ended() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM image_properties WHERE image_id = NEW.id AND name = '{prop}';
        RETURN NULL;
    END $$""",
                """CREATE TRIGGER tr_images_import_ended AFTER UPDATE OF status ON images
    FOR EACH ROW WHEN (NEW.status <> 'importing') EXECUTE FUNCTION tr_images_import_ended()"""]


SQLITE = SqliteDialect()
POSTGRESQL = PostgresDialect()
DIALECTS = {d.name: d for d in (SQLITE, POSTGRESQL)}


# ---- connections ----

def is_full(exc: BaseException) -> bool:
    """Whether a database error means the database's file system is full."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return getattr(exc, "sqlstate", None) == "53100"      # PostgreSQL disk_full


class SqliteConnection(sqlite3.Connection):
    """sqlite3's connection (autocommit; we issue BEGIN ourselves) with the
    interface the registry uses on both engines."""
    dialect = SQLITE
    Error = sqlite3.Error

    def immediate(self) -> None:
        """Begin a write transaction taken up front (no lost update, no upgrade deadlock)."""
        _begin(self, "BEGIN IMMEDIATE")

    def snapshot(self) -> None:
        """Begin a read transaction: one consistent view across several SELECTs."""
        _begin(self, "BEGIN")

    def schema_revision(self) -> Tuple[Optional[int], int]:
        """(Alembic revision or None, PRAGMA user_version: the pre-Alembic schema
        version): one SELECT when the Alembic table exists (every open but a
        registry's first)."""
        try:
            rev, legacy = self.execute("SELECT (SELECT version_num FROM alembic_version), user_version "
                                       "FROM pragma_user_version").fetchone()
        except sqlite3.OperationalError:
            if self.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone() is not None:
                raise
            return None, self.execute("PRAGMA user_version").fetchone()[0]
        return (None if rev is None else int(rev)), legacy

    def integrity_check(self) -> str:
        return "; ".join(r[0] for r in self.execute("PRAGMA integrity_check"))

    def close_optimized(self) -> None:
        # keep the planner's statistics fresh, bounded work (SQLite's advice)
        try:
            self.execute("PRAGMA analysis_limit = 400")
            self.execute("PRAGMA optimize")
        except sqlite3.Error:
            pass
        self.close()


def _begin(conn: Any, stmt: str) -> None:
    try:
        conn.execute(stmt)
    except conn.Error as exc:
        if is_full(exc):
            raise OutOfSpaceError() from None
        raise DatabaseUnavailableError(f"registry database busy or unavailable: {exc}") from None


class _PgRow(tuple):
    """A row read by index or by column name (as sqlite3.Row)."""

    def __new__(cls, values: Sequence[Any], names: dict) -> "_PgRow":
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> List[str]:
        return list(self._names)


def _row_factory(cursor: Any) -> Any:
    desc = cursor.description
    names = {c.name: n for n, c in enumerate(desc or ())}
    return lambda values: _PgRow(values, names)


class PgConnection:
    """A psycopg 3 connection (autocommit; we issue BEGIN ourselves) with the
    interface of :class:`SqliteConnection`.  ``?`` placeholders become ``%s``."""
    dialect = POSTGRESQL

    def __init__(self, url: str):
        import psycopg

        self.url = url
        self._psycopg = psycopg
        self.Error = psycopg.Error
        self._sql: dict = {}
        self._in_txn = False
        self._c = self._connect()

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self.url, autocommit=True, row_factory=_row_factory,
                                         connect_timeout=10)
        except self._psycopg.Error as exc:
            raise _storage_error(exc) from None

    def _translate(self, sql: str) -> str:
        out = self._sql.get(sql)
        if out is None:
            out = self._sql[sql] = sql.replace("%", "%%").replace("?", "%s")
        return out

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if sql == "BEGIN" or sql.startswith("BEGIN "):
            if self._c.broken:
                self._c = self._connect()      # the server went away between transactions
            self._in_txn = True
        elif sql in ("COMMIT", "ROLLBACK"):
            self._in_txn = False
        elif self._c.broken and not self._in_txn:
            self._c = self._connect()          # (never inside a transaction: its work is lost)
        try:
            return self._c.execute(self._translate(sql), tuple(params))
        except (self._psycopg.OperationalError, self._psycopg.InterfaceError) as exc:
            raise _storage_error(exc) from None

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> None:
        seq = [tuple(p) for p in seq]
        if not seq:
            return
        try:
            with self._c.cursor() as cur:
                cur.executemany(self._translate(sql), seq)
        except (self._psycopg.OperationalError, self._psycopg.InterfaceError) as exc:
            raise _storage_error(exc) from None

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self._c.info.transaction_status != TransactionStatus.IDLE

    def immediate(self) -> None:
        """Begin a write transaction that first takes the registry's one
        transaction-scoped advisory lock: writers run one at a time, each
        seeing every earlier commit (READ COMMITTED, the lock taken before any
        read), as under SQLite's BEGIN IMMEDIATE -- no lost update."""
        self.execute("BEGIN")
        self.execute(f"SELECT pg_advisory_xact_lock({_WRITE_LOCK})")

    def snapshot(self) -> None:
        """Begin a read transaction: one consistent view (REPEATABLE READ)."""
        self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")

    def schema_revision(self) -> Tuple[Optional[int], int]:
        if self.execute("SELECT to_regclass('alembic_version')").fetchone()[0] is None:
            return None, 0
        row = self.execute("SELECT version_num FROM alembic_version").fetchone()
        return (int(row[0]) if row else None), 0

    def integrity_check(self) -> str:
        """PostgreSQL checks its pages itself (checksums, amcheck is an extension): 'ok' when reachable."""
        self.execute("SELECT 1")
        return "ok"

    def close(self) -> None:
        self._c.close()

    close_optimized = close      # autovacuum keeps PostgreSQL's statistics


def _storage_error(exc: BaseException) -> Exception:
    if is_full(exc):
        return OutOfSpaceError()
    why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DatabaseUnavailableError(f"registry database unavailable: {why}")


if TYPE_CHECKING:  # pragma: no cover
    Connection = Any   # SqliteConnection | PgConnection


def connect(target: str) -> Connection:
    """Open the registry database: a ``postgresql://`` URL, else a SQLite file
    path; the schema is brought to :data:`HEAD` first if needed."""
    if target.startswith(("postgresql://", "postgres://")):
        conn: Connection = PgConnection(target)
    else:
        conn = _connect_sqlite(target)
    try:
        #: True when this open created the schema
        conn.created = migrate(conn, target)
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_sqlite(path: str) -> SqliteConnection:
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False, factory=SqliteConnection)
    except sqlite3.Error as exc:
        raise DatabaseUnavailableError(f"cannot open registry database {path}: {exc}") from None
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
    return conn


def _check_not_newer(rev: Optional[int], legacy: int, where: str) -> None:
    newest = max(rev or 0, legacy)
    if newest > HEAD:
        raise UnsupportedError(f"registry database {where} has schema version {newest}; this vhdkit "
                               f"knows up to {HEAD} (upgrade vhdkit)")


def migrate(conn: Connection, where: str = "") -> bool:
    """Bring the schema to :data:`HEAD` (True when it was created here).  At
    head this is one or two SELECTs; otherwise Alembic runs (see migrations/)."""
    rev, legacy = conn.schema_revision()
    _check_not_newer(rev, legacy, _public(where))
    if rev == HEAD:
        return False
    from .migrations import upgrade

    return upgrade(conn, where)


def _public(where: str) -> str:
    """A database named in a message: a file path, or a URL without its password."""
    if "://" in where and "@" in where:
        scheme, rest = where.split("://", 1)
        user, host = rest.rsplit("@", 1)
        return f"{scheme}://{user.split(':', 1)[0]}@{host}"
    return where


@contextmanager
def immediate(conn: Connection) -> Iterator[Connection]:
    """A write transaction (see the connections' ``immediate``).  A full file
    system is :class:`OutOfSpaceError` (nothing of the transaction stays)."""
    conn.immediate()
    try:
        yield conn
    except conn.Error as exc:
        _rollback(conn)
        if is_full(exc):
            raise OutOfSpaceError() from None
        raise
    except BaseException:
        _rollback(conn)
        raise
    try:
        conn.execute("COMMIT")
    except conn.Error as exc:
        _rollback(conn)
        if is_full(exc):
            raise OutOfSpaceError() from None
        raise


def _rollback(conn: Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except (conn.Error, StorageError):
        pass


class snapshot:
    """A read transaction: one consistent view across several SELECTs
    (``with snapshot(conn) as conn:``).  A class, not a generator, so that
    a read does not load contextlib (see vhdkit._lazy)."""

    __slots__ = ("conn",)

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def __enter__(self) -> Connection:
        self.conn.snapshot()
        return self.conn

    def __exit__(self, *exc: Any) -> None:
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")
