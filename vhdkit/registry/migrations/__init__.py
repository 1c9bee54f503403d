"""The registry schema's revisions, run by Alembic (imported only when the
schema is not at :data:`vhdkit.registry.db.HEAD`).

Revision ``00NN`` brings the schema from version N-1 to N; the SQL that
differs between SQLite and PostgreSQL comes from the dialect in
:mod:`vhdkit.registry.db`.  A SQLite registry written before Alembic records
its version in ``PRAGMA user_version``: it is stamped at that revision and
upgraded in place.  On SQLite, ``PRAGMA user_version`` keeps following the
revision, so that an older vhdkit refuses a newer registry.
"""
from __future__ import annotations

import os
from typing import Any, List

from .. import db as _db


def _sqlalchemy_engine(conn: Any, where: str) -> Any:
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    if conn.dialect is _db.POSTGRESQL:
        url = "postgresql+psycopg://" + conn.url.split("://", 1)[1]
        return sa.create_engine(url, poolclass=NullPool)
    # The registry's own connection (autocommit, its PRAGMAs; the pool never
    # closes it), one transaction for the whole upgrade taken up front (as
    # every registry write).
    from sqlalchemy.pool import StaticPool

    engine = sa.create_engine("sqlite://", creator=lambda: conn, poolclass=StaticPool)

    @sa.event.listens_for(engine, "begin")
    def _begin(c: Any) -> None:
        c.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


_SCRIPT: Any = None


def _script() -> Any:
    """The revisions, read once per process (Alembic's ScriptDirectory)."""
    global _SCRIPT
    if _SCRIPT is None:
        from alembic.script import ScriptDirectory

        _SCRIPT = ScriptDirectory(os.path.dirname(os.path.abspath(__file__)))
    return _SCRIPT


def upgrade(conn: Any, where: str) -> bool:
    """Bring the database ``conn`` is open on to head, in one transaction that
    excludes other migrating processes; True when it was empty before."""
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    engine = _sqlalchemy_engine(conn, where)
    try:
        with engine.connect() as sa_conn, sa_conn.begin():
            if conn.dialect is _db.POSTGRESQL:
                sa_conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_db._MIGRATE_LOCK})")
            rev, legacy = _revision(sa_conn, conn.dialect)
            _db._check_not_newer(rev, legacy, _db._public(where))
            created = rev is None and legacy == 0
            script = _script()
            if rev is None and legacy:                   # written by vhdkit before Alembic
                MigrationContext.configure(sa_conn).stamp(script, f"{legacy:04d}")
            # what `alembic upgrade head` runs, on this connection and its transaction
            ctx = MigrationContext.configure(sa_conn, opts={
                "script": script, "fn": lambda current, _ctx: script._upgrade_revs("head", current)})
            with Operations.context(ctx):
                ctx.run_migrations()
            if conn.dialect is _db.SQLITE:
                sa_conn.exec_driver_sql(f"PRAGMA user_version = {_db.HEAD}")
    except Exception as exc:
        if isinstance(exc, (_db.UnsupportedError, _db.StorageError)):
            raise
        orig = getattr(exc, "orig", exc)
        if _db.is_full(orig):
            raise _db.OutOfSpaceError() from None
        raise _db.StorageError(f"registry database {_db._public(where)}: schema upgrade failed: "
                               f"{str(orig).strip().splitlines()[0] if str(orig) else type(orig).__name__}") from exc
    finally:
        if conn.dialect is _db.POSTGRESQL:
            engine.dispose()          # (a SQLite engine's one connection is the caller's)
    return created


def _revision(sa_conn: Any, dialect: Any) -> Any:
    """(revision or None, legacy version) read inside the migration's transaction."""
    legacy = sa_conn.exec_driver_sql("PRAGMA user_version").scalar() if dialect is _db.SQLITE else 0
    import sqlalchemy as sa

    if not sa.inspect(sa_conn).has_table("alembic_version"):
        return None, legacy
    v = sa_conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    return (int(v) if v else None), legacy


def dialect() -> Any:
    """The dialect of the database a revision runs on."""
    from alembic import op

    return _db.DIALECTS[op.get_bind().dialect.name]


def run(statements: List[str]) -> None:
    """Execute a revision's statements as they are (no bound parameters)."""
    from alembic import op

    bind = op.get_bind()
    for s in statements:
        bind.exec_driver_sql(s)


def run_script(script: str) -> None:
    """A revision's SQL script, in this database's dialect."""
    run(dialect().ddl(script))
