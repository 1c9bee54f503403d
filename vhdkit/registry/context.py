"""What the registry's services share (see :mod:`.core`): the data
directory's database and blob store, the settings and limits, the clock,
the write transaction with its fence, and the trash.

The fence: inside :meth:`Context.fenced` every write transaction of the
calling thread first checks, in that same transaction, that the thread's
:class:`~.tasks.Lease` is still its task's current attempt, and refuses
(ConflictError ``lease_lost``) otherwise -- whatever service writes (see
:mod:`.tasks` for the lease protocol)."""
from __future__ import annotations

import os
from _thread import RLock
from _thread import _local as local   # threading.local itself; threading is not imported (see vhdkit._lazy)

from .._lazy import contextmanager
from ..errors import ConflictError, NotFoundError, QuotaError, from_oserror
from ..fileutil import is_locked
from . import blobs as _blobs
from . import db as _db
from .models import DEFAULT_QUOTAS, now_text

TYPE_CHECKING = False   # typing and datetime are not imported at run time (start-up of `vhdkit image show`)
if TYPE_CHECKING:  # pragma: no cover
    import datetime as _dt
    from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

    from ..config import Config
    from .tasks import Lease

#: seconds of a worker's lease on the task it runs, unless it asks for another
DEFAULT_LEASE_S = 60.0


def held(conn: _db.Connection, task_id: str, worker_id: str, attempt: Optional[int] = None) -> Any:
    """The task's row when ``worker_id`` (and, given, ``attempt``) holds it;
    ConflictError ``lease_lost`` otherwise (NotFoundError: no such task)."""
    row = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"task {task_id} not found")
    if (row["status"] != "processing" or row["worker_id"] != worker_id
            or (attempt is not None and row["attempts"] != attempt)):
        raise ConflictError(f"worker {worker_id} no longer holds task {task_id} (lease lost)",
                            code="lease_lost")
    return row


class Context:
    """The open data directory ``home`` under the settings ``config``: one
    database connection per thread (and process), the blob store, the
    per-image ``quotas`` and the clock.  Safe to share
    between threads."""

    def __init__(self, home: str, config: Config, *, database_url: Optional[str] = None,
                 quotas: Optional[Mapping[str, int]] = None, clock: Optional[Callable[[], _dt.datetime]] = None):
        self.config = config
        self.home = home
        try:
            os.makedirs(self.home, exist_ok=True)
        except OSError as exc:
            raise from_oserror(exc, f"cannot create data directory {self.home}", service=True) from None
        #: the database URL (None: the SQLite file :attr:`db_path`); see db.check_url
        self.database_url = _db.check_url(database_url or config.database_url)
        self.db_path = os.path.join(self.home, "registry.db")
        #: True when this open made a new, empty registry (the CLI says where)
        self.created = not os.path.exists(self.db_path) if self.database_url is None else False
        self.blobs = _blobs.BlobStore(os.path.join(self.home, "blobs"), _blobs.remote_blobs(config))
        self.quotas: Dict[str, int] = dict(DEFAULT_QUOTAS)
        self.quotas.update(quotas or {})
        self.clock = clock
        self._local = local()
        self._all_conns: List[Tuple[int, _db.Connection]] = []
        self._writer = RLock()
        self._writer_pid = os.getpid()

    # ---- the database ----
    def conn(self, first: bool = False) -> _db.Connection:
        """This thread's connection (a new one after a fork); ``first``: the
        opening connection, which tells whether it created the registry."""
        loc = self._local
        conn = getattr(loc, "conn", None)
        if conn is None or loc.pid != os.getpid():
            conn = _db.connect(self.database_url or self.db_path)
            if first and self.database_url is not None:
                self.created = bool(getattr(conn, "created", False))
            loc.conn, loc.pid = conn, os.getpid()
            self._all_conns.append((os.getpid(), conn))
        return conn

    def close(self) -> None:
        for pid, c in self._all_conns:
            if pid != os.getpid():
                continue  # inherited over fork: the parent's to close
            try:
                c.close_optimized()
            except Exception:  # noqa: BLE001 - closing: nothing is left to do with it
                pass
        self._all_conns.clear()
        self._local = local()

    @contextmanager
    def write(self) -> Iterator[_db.Connection]:
        """A write transaction; writers of this process take turns here first,
        and a fenced thread's lease is checked in it (see the module doc).

        SQLite admits one writer; threads of one process that raced for its
        lock would fall into its busy handler's sleeps (up to 100 ms each),
        which under many concurrent writers cost far more than waiting in line
        on a lock.  Other processes (workers, CLI, servers) still meet at
        SQLite's lock and busy timeout.
        """
        if self._writer_pid != os.getpid():  # forked: a lock held by a thread of the parent stays held
            self._writer, self._writer_pid = RLock(), os.getpid()
        with self._writer, _db.immediate(self.conn()) as conn:
            lease = getattr(self._local, "lease", None)
            if lease is not None:
                held(conn, lease.task_id, lease.worker_id, lease.attempt)
            yield conn

    def read(self):
        """A read snapshot (see db.snapshot)."""
        return _db.snapshot(self.conn())

    @contextmanager
    def fenced(self, lease: Optional[Lease]) -> Iterator[None]:
        """Within: every write transaction of this thread is refused unless
        ``lease`` is still the task's current attempt.  None: no fence."""
        loc = self._local
        prev = getattr(loc, "lease", None)
        loc.lease = lease
        try:
            yield
        finally:
            loc.lease = prev

    # ---- time and limits ----
    def now_dt(self) -> _dt.datetime:
        if self.clock:
            return self.clock()
        import datetime as _dt

        return _dt.datetime.now(_dt.timezone.utc)

    def now(self) -> str:
        return now_text(self.now_dt())

    def later(self, seconds: float) -> str:
        """The time ``seconds`` from now (a lease's end, an expiry)."""
        import datetime as _dt

        return now_text(self.now_dt() + _dt.timedelta(seconds=seconds))

    def quota(self, what: str, n: int) -> None:
        limit = self.quotas[what]
        if n > limit:
            raise QuotaError(f"too many {what}: {n} exceeds the quota of {limit} per image")

    # ---- the trash ----
    def trash(self, conn: _db.Connection, rels: List[str]) -> None:
        """Record blobs (and upload files) to remove once nothing holds them
        (in the caller's write transaction; see :meth:`empty_trash`)."""
        now = self.now()
        conn.executemany("INSERT INTO trash (path, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                         [(p, now) for p in rels])

    def empty_trash(self) -> int:
        """Remove the trashed files no process holds; returns how many."""
        conn = self.conn()
        removed = 0
        for (p,) in conn.execute("SELECT path FROM trash").fetchall():
            full = self.blobs.path(p)
            if is_locked(full):
                continue
            self.blobs.unlink(full)
            with self.write() as c:
                c.execute("DELETE FROM trash WHERE path = ?", (p,))
            removed += 1
        return removed
