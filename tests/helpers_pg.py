"""A real PostgreSQL server for the tests, started once per session.

Fixtures (registered for every test module by conftest.py):

- ``pg_server`` (session): the running server.  ``pg_server.new_database()``
  returns the URL of a new database copied from a template that holds the
  registry schema at head (``CREATE DATABASE ... TEMPLATE``, about 0.5 s);
  ``pg_server.empty_database()`` the URL of the session's shared test
  database with every registry row deleted (a few ms).
- ``pg_url`` (function): ``pg_server.new_database()``, for a test that changes
  the schema or needs planner statistics of its own.
- ``registry_url`` (function, parametrized ``sqlite`` / ``postgresql``): sets
  ``VHDKIT_DATABASE_URL`` for the test (unset for ``sqlite``;
  ``pg_server.empty_database()`` for ``postgresql``), so every ``Registry``
  the test opens and every process it starts use that engine.  A module runs
  on both engines with ``pytestmark = pytest.mark.usefixtures("registry_url")``.
- ``api_engine`` (module): the engine of a module's ``vhdkit serve``
  (tests/helpers_api.py's ``api_server`` starts after it): by default None,
  the environment as it is.  A module runs its server on both engines with
  its own ``api_engine`` fixture, module-scoped with ``params=ENGINES``,
  that does ``yield from engine_env(request)``.
- ``empty_registry(url)``: delete every registry row (several registries in one
  test, e.g. one per Hypothesis example).

If ``VHDKIT_TEST_PG_URL`` is set (``postgresql://user@host:port/postgres`` of a
server whose user may create databases), that server is used instead of
starting one.  The server is Debian's ``postgresql`` package (scripts/setup);
missing it is a failure, not a skip.  Running as root (CI), ``initdb`` and
``postgres`` run as ``nobody`` (PostgreSQL refuses root) in a temporary
directory owned by it.  The server is a child of the test session that gets
SIGQUIT (immediate shutdown) when the session ends or dies.  The server itself
is fixtures/pgserver.py's ``PgServer`` (the benchmarks start it too).
"""
from __future__ import annotations

import os
from typing import Iterator, Optional

import pytest

from pgserver import PgServer, PgServerError

#: the engines a registry suite runs on (test ids: [sqlite], [postgresql])
ENGINES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        server = PgServer(os.environ.get("VHDKIT_TEST_PG_URL"))
    except PgServerError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """The URL of a fresh, migrated PostgreSQL database for this test."""
    return pg_server.new_database()


def engine_env(request) -> Iterator[Optional[str]]:
    """For a module-scoped fixture parametrized with ENGINES: the database URL
    of ``request.param`` (None: SQLite), exported as ``VHDKIT_DATABASE_URL``
    while the fixture lives; PostgreSQL gets a new database."""
    with pytest.MonkeyPatch.context() as mp:
        if request.param == "sqlite":
            mp.delenv("VHDKIT_DATABASE_URL", raising=False)
            yield None
            return
        url = request.getfixturevalue("pg_server").new_database()
        mp.setenv("VHDKIT_DATABASE_URL", url)
        yield url


@pytest.fixture(scope="module")
def api_engine() -> Optional[str]:
    """The default: the engine the environment names (see the module doc)."""
    return None


@pytest.fixture(params=ENGINES)
def registry_url(request, monkeypatch) -> Optional[str]:
    """The database URL this test's registries use (None: the embedded SQLite
    file), also exported as ``VHDKIT_DATABASE_URL`` for processes it starts."""
    if request.param == "sqlite":
        monkeypatch.delenv("VHDKIT_DATABASE_URL", raising=False)
        return None
    url = request.getfixturevalue("pg_server").empty_database()
    monkeypatch.setenv("VHDKIT_DATABASE_URL", url)
    return url
