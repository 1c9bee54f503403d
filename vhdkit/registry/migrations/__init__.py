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
    # one transaction for the whole upgrade, taken up front (as every registry write)
    engine = sa.create_engine("sqlite:///" + where, poolclass=NullPool,
                              connect_args={"isolation_level": None, "timeout": _db.BUSY_TIMEOUT_S})

    @sa.event.listens_for(engine, "begin")
    def _begin(c: Any) -> None:
        c.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _config(connection: Any) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", os.path.dirname(os.path.abspath(__file__)))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(conn: Any, where: str) -> bool:
    """Bring the database ``conn`` is open on to head, in one transaction that
    excludes other migrating processes; True when it was empty before."""
    from alembic import command

    engine = _sqlalchemy_engine(conn, where)
    try:
        with engine.connect() as sa_conn, sa_conn.begin():
            if conn.dialect is _db.POSTGRESQL:
                sa_conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_db._MIGRATE_LOCK})")
            rev, legacy = _revision(sa_conn, conn.dialect)
            _db._check_not_newer(rev, legacy, _db._public(where))
            created = rev is None and legacy == 0
            cfg = _config(sa_conn)
            if rev is None and legacy:
                command.stamp(cfg, f"{legacy:04d}")     # written by vhdkit before Alembic
            command.upgrade(cfg, "head")
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
        engine.dispose()
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
