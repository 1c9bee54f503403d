"""Tasks (import/export): :class:`TaskService`, the v2 task records plus
the lease protocol workers use.

Statuses pending -> processing -> success | failure.  A worker takes a task
with :meth:`claim_task` (atomic: ``BEGIN IMMEDIATE``), renews its lease with
:meth:`heartbeat` (also reporting the stage and bytes done) and ends it with
:meth:`finish` (or gives it back with :meth:`release_task` when it is
stopped).  A task whose lease expires is handed to the next claimer
(retried from the start) until ``max_attempts`` claims were made; then it
fails with a message.  A task expires 48 h after it ends.

Fencing: each claim is one attempt, named by its :class:`Lease` (task id,
worker id, attempt number).  Inside :meth:`~.context.Context.fenced` every
write transaction of the calling thread, whichever service makes it, first
checks, in that same transaction, that the lease is still the task's current
one, and refuses (ConflictError ``lease_lost``) otherwise: a worker that was
paused past its lease and resumes cannot change anything a newer attempt
owns.  A task that ends ``failure`` is *swept*
once (:meth:`unswept_failures`, :meth:`mark_swept`): the pipeline removes
what it made (see :func:`vhdkit.tasks.pipeline.sweep_failed`)."""
from __future__ import annotations

import contextlib
from collections import namedtuple
from collections.abc import Mapping

from ..errors import ConflictError, InvalidInputError, NotFoundError
from .context import DEFAULT_LEASE_S, held
from .models import TASK_STATUSES, TASK_TYPES, Task, TaskList, new_uuid
from .rbac import Caller, require_role

TYPE_CHECKING = False   # typing and uuid are not imported at run time
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Dict, Iterator, List, Optional, Sequence

    from .context import Context
    from .query import Params
# json and .query are imported where used (a Registry imports this module on
# the first task call).

#: seconds a finished task is kept
TASK_TTL_S = 48 * 3600
MAX_ATTEMPTS = 2
MAX_INPUT_BYTES = 64 << 10
TASK_SORT_KEYS = ("created_at", "updated_at", "id", "status", "type")
#: Namespace of the image ids an import task creates: uuid5(NS, task id), so a
#: retried task finds (and replaces) what an earlier attempt left.
_IMAGE_NS = "6f1a3c9e-2d7b-4c55-9a0e-5b8d7e1f0c42"


class Lease(namedtuple("Lease", "task_id worker_id attempt")):
    """The fencing token of one attempt at a task: ``task_id`` (str),
    ``worker_id`` (str), ``attempt`` (int)."""

    __slots__ = ()

    @classmethod
    def of(cls, task: Task) -> "Lease":
        return cls(task.id, task.worker_id or "", int(task.attempts))


def task_image_id(task_id: str) -> str:
    """The id of the image an import task creates."""
    import uuid

    return str(uuid.uuid5(uuid.UUID(_IMAGE_NS), task_id))


def _task(r: Any) -> Task:
    import json

    return Task(
        id=r["id"], type=r["type"], status=r["status"], input=json.loads(r["input"]),
        result=json.loads(r["result"]) if r["result"] is not None else None, message=r["message"],
        owner=r["owner"], created_at=r["created_at"], updated_at=r["updated_at"], expires_at=r["expires_at"],
        worker_id=r["worker_id"], lease_expires_at=r["lease_expires_at"], attempts=r["attempts"],
        stage=r["stage"], bytes_done=r["bytes_done"], bytes_total=r["bytes_total"],
        owner_roles=[x for x in r["owner_roles"].split(",") if x])


class TaskService:
    """The tasks of the registry open as ``ctx``; a task is claimed at most
    ``max_attempts`` times."""

    def __init__(self, ctx: Context, max_attempts: int = MAX_ATTEMPTS):
        self.ctx, self.max_attempts = ctx, max_attempts

    def create_task(self, caller: Caller, type: str, input: Mapping[str, Any]) -> Task:
        """Record a pending task of ``type`` (import/export) owned by the caller's account."""
        require_role("create_task", caller)
        if type not in TASK_TYPES:
            raise InvalidInputError(f"invalid task type {type!r}: expected one of {', '.join(TASK_TYPES)}")
        if not isinstance(input, Mapping):
            raise InvalidInputError("task input must be an object")
        import json

        try:
            text = json.dumps(dict(input), sort_keys=True)
        except (TypeError, ValueError):
            raise InvalidInputError("task input must be JSON-serialisable") from None
        if len(text) > MAX_INPUT_BYTES:
            raise InvalidInputError(f"task input is larger than {MAX_INPUT_BYTES} bytes")
        tid = new_uuid()
        now = self.ctx.now()
        with self.ctx.write() as conn:
            conn.execute("INSERT INTO tasks (id, type, status, input, owner, owner_roles, created_at, updated_at) "
                         "VALUES (?, ?, 'pending', ?, ?, ?, ?, ?)",
                         (tid, type, text, caller.account, ",".join(sorted(caller.roles)), now, now))
            row = conn.execute("SELECT * FROM tasks WHERE id = ?", (tid,)).fetchone()
        return _task(row)

    def show_task(self, caller: Caller, task_id: str) -> Task:
        require_role("show_task", caller)
        row = self.ctx.conn().execute("SELECT * FROM tasks WHERE id = ?", (str(task_id),)).fetchone()
        if row is None or (row["owner"] != caller.account and not caller.is_service):
            raise NotFoundError(f"task {task_id} not found")
        return _task(row)

    def list_tasks(self, caller: Caller, params: Optional[Params] = None) -> TaskList:
        """The caller account's tasks; params: ``type``, ``status``, ``sort_key``
        (created_at, updated_at, id, status, type), ``sort_dir``, ``marker``, ``limit``."""
        from .query import DEFAULT_LIMIT, MAX_LIMIT, _int, param_pairs

        require_role("list_tasks", caller)
        where, args = ["owner = ?"], [caller.account]
        limit, marker, key, d = DEFAULT_LIMIT, None, "created_at", "desc"
        for k, v in param_pairs(params):
            if k == "type":
                if v not in TASK_TYPES:
                    raise InvalidInputError(f"invalid task type {v!r}")
                where.append("type = ?")
                args.append(v)
            elif k == "status":
                if v not in TASK_STATUSES:
                    raise InvalidInputError(f"invalid task status {v!r}")
                where.append("status = ?")
                args.append(v)
            elif k == "limit":
                limit = min(_int("limit", v), MAX_LIMIT)
            elif k == "marker":
                marker = v
            elif k == "sort_key":
                if v not in TASK_SORT_KEYS:
                    raise InvalidInputError(f"invalid sort key {v!r}: expected one of {', '.join(TASK_SORT_KEYS)}")
                key = v
            elif k == "sort_dir":
                if v not in ("asc", "desc"):
                    raise InvalidInputError(f"invalid sort direction {v!r}")
                d = v
            else:
                raise InvalidInputError(f"unknown task filter {k!r}")
        conn = self.ctx.conn()
        with self.ctx.read():
            if marker is not None:
                m = conn.execute(f"SELECT {key}, id FROM tasks WHERE id = ? AND owner = ?",
                                 (marker, caller.account)).fetchone()
                if m is None:
                    raise InvalidInputError(f"marker {marker!r} not found")
                op = ">" if d == "asc" else "<"
                where.append(f"({key} {op} ? OR ({key} = ? AND id {op} ?))")
                args += [m[0], m[0], m[1]]
            rows = conn.execute(f"SELECT * FROM tasks WHERE {' AND '.join(where)} "
                                f"ORDER BY {key} {d.upper()}, id {d.upper()} LIMIT ?", (*args, limit + 1)).fetchall()
        more = len(rows) > limit
        tasks = [_task(r) for r in rows[:limit]]
        return TaskList(tasks, tasks[-1].id if more and tasks else None)

    # ---- worker protocol ----
    def claim_task(self, worker_id: str, lease_seconds: float = DEFAULT_LEASE_S,
                   types: Optional[Sequence[str]] = None) -> Optional[Task]:
        """Atomically take the oldest pending task (or one whose worker's lease
        expired); None when there is nothing to do."""
        if not worker_id:
            raise InvalidInputError("worker_id is required")
        now = self.ctx.now()
        with self.ctx.write() as conn:
            self._expire_leases(conn)
            sql = "SELECT id FROM tasks WHERE status = 'pending'"
            args: list = []
            if types:
                sql += f" AND type IN ({','.join('?' * len(types))})"
                args += list(types)
            # the oldest pending task; on PostgreSQL a row another claim holds is skipped
            # (FOR UPDATE SKIP LOCKED) -- belt and braces under the one-writer lock
            row = conn.execute(sql + " ORDER BY created_at, id LIMIT 1" + conn.dialect.claim_lock, args).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE tasks SET status = 'processing', worker_id = ?, lease_expires_at = ?, "
                         "attempts = attempts + 1, stage = NULL, bytes_done = NULL, bytes_total = NULL, "
                         "updated_at = ? WHERE id = ?",
                         (worker_id, self.ctx.later(lease_seconds), now, row["id"]))
            out = conn.execute("SELECT * FROM tasks WHERE id = ?", (row["id"],)).fetchone()
        return _task(out)

    def _expire_leases(self, conn: Any) -> None:
        """Tasks whose lease ran out go back to pending, or fail after their last attempt."""
        now = self.ctx.now()
        for r in conn.execute("SELECT id, attempts FROM tasks WHERE status = 'processing' "
                              "AND lease_expires_at < ?", (now,)).fetchall():
            if r["attempts"] >= self.max_attempts:
                conn.execute(
                    "UPDATE tasks SET status = 'failure', message = ?, worker_id = NULL, "
                    "lease_expires_at = NULL, updated_at = ?, expires_at = ? WHERE id = ?",
                    (f"[500] the worker running this task stopped responding (after {r['attempts']} attempts)",
                     now, self.ctx.later(TASK_TTL_S), r["id"]))
            else:
                conn.execute("UPDATE tasks SET status = 'pending', worker_id = NULL, lease_expires_at = NULL, "
                             "updated_at = ? WHERE id = ?", (now, r["id"]))

    def expire_leases(self) -> None:
        """:meth:`_expire_leases` in its own transaction (what ``vhdkit cleanup`` runs first)."""
        with self.ctx.write() as conn:
            self._expire_leases(conn)

    def check_lease(self, lease: Lease) -> None:
        """ConflictError ``lease_lost`` unless ``lease`` is the task's current attempt."""
        with self.ctx.write() as conn:
            held(conn, lease.task_id, lease.worker_id, lease.attempt)

    @contextlib.contextmanager
    def holding(self, lease: Lease) -> Iterator[None]:
        """Run the block while holding the registry's write lock with ``lease``
        checked: no newer attempt can claim the task until the block ends (for
        a short outside write, such as publishing an export's manifest)."""
        with self.ctx.write() as conn:
            held(conn, lease.task_id, lease.worker_id, lease.attempt)
            yield

    def unswept_failures(self, limit: int = 50) -> List[Task]:
        """Failed tasks whose remains were not swept yet (oldest first)."""
        rows = self.ctx.conn().execute("SELECT * FROM tasks WHERE status = 'failure' AND swept = 0 "
                                       "ORDER BY updated_at, id LIMIT ?", (int(limit),)).fetchall()
        return [_task(r) for r in rows]

    def mark_swept(self, task_id: str) -> None:
        with self.ctx.write() as conn:
            conn.execute("UPDATE tasks SET swept = 1 WHERE id = ? AND status = 'failure'", (str(task_id),))

    def heartbeat(self, task_id: str, worker_id: str, *,
                  lease_seconds: float = DEFAULT_LEASE_S, stage: Optional[str] = None,
                  bytes_done: Optional[int] = None, bytes_total: Optional[int] = None,
                  attempt: Optional[int] = None) -> Task:
        """Renew the lease and record progress; ConflictError when the lease was lost."""
        with self.ctx.write() as conn:
            row = held(conn, task_id, worker_id, attempt)
            conn.execute("UPDATE tasks SET lease_expires_at = ?, stage = ?, bytes_done = ?, bytes_total = ?, "
                         "updated_at = ? WHERE id = ?",
                         (self.ctx.later(lease_seconds), stage if stage is not None else row["stage"],
                          bytes_done if bytes_done is not None else row["bytes_done"],
                          bytes_total if bytes_total is not None else row["bytes_total"], self.ctx.now(), task_id))
            out = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return _task(out)

    def release_task(self, task_id: str, worker_id: str,
                     attempt: Optional[int] = None) -> None:
        """Give a held task back (its worker is stopping): pending again and
        claimable at once, the attempt not counted.  Nothing happens when the
        worker (or, given ``attempt``, that attempt) no longer holds it."""
        with self.ctx.write() as conn:
            try:
                held(conn, task_id, worker_id, attempt)
            except (ConflictError, NotFoundError):
                return
            conn.execute("UPDATE tasks SET status = 'pending', worker_id = NULL, lease_expires_at = NULL, "
                         "attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, stage = NULL, bytes_done = NULL, bytes_total = NULL, "
                         "updated_at = ? WHERE id = ?", (self.ctx.now(), task_id))

    def finish(self, task_id: str, worker_id: str, *, status: str,
               result: Optional[Dict[str, Any]] = None, message: str = "", attempt: Optional[int] = None) -> Task:
        """End a held task with ``success`` or ``failure``."""
        if status not in ("success", "failure"):
            raise InvalidInputError("a task finishes with 'success' or 'failure'")
        import json

        res = json.dumps(result) if result is not None else None
        with self.ctx.write() as conn:
            held(conn, task_id, worker_id, attempt)
            now = self.ctx.now()
            conn.execute("UPDATE tasks SET status = ?, result = ?, message = ?, worker_id = NULL, "
                         "lease_expires_at = NULL, updated_at = ?, expires_at = ? WHERE id = ?",
                         (status, res, message or "", now, self.ctx.later(TASK_TTL_S), task_id))
            out = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return _task(out)

    def purge_expired_tasks(self) -> int:
        """Delete finished tasks whose ``expires_at`` has passed; returns how many."""
        with self.ctx.write() as conn:
            return conn.execute("DELETE FROM tasks WHERE expires_at IS NOT NULL AND expires_at < ?",
                                (self.ctx.now(),)).rowcount
