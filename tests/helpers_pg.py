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
SIGQUIT (immediate shutdown) when the session ends or dies.
"""
from __future__ import annotations

import glob
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Iterator, List, Optional

import pytest

#: the engines a registry suite runs on (test ids: [sqlite], [postgresql])
ENGINES = ("sqlite", "postgresql")
TEMPLATE = "vhdkit_template"
_STARTUP_S = 60.0


def pg_bindir() -> str:
    """The directory of Debian's PostgreSQL server programs (newest version)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0)
    if found:
        return os.path.dirname(found[-1])
    p = shutil.which("postgres")
    if p is None:
        pytest.fail("PostgreSQL server programs not found (Debian package 'postgresql'); run scripts/setup")
    return os.path.dirname(p)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_user(uid: int, gid: int, deathsig: int):
    """preexec_fn: drop to uid/gid (when root) and die with the parent."""
    def run() -> None:
        import ctypes

        if os.getuid() == 0:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        ctypes.CDLL(None, use_errno=True).prctl(1, deathsig)   # PR_SET_PDEATHSIG
    return run


class PgServer:
    """One postgres process on 127.0.0.1:port with its socket in its directory."""

    def __init__(self, admin_url: Optional[str] = None):
        self.proc: Optional[subprocess.Popen] = None
        self.dir: Optional[str] = None
        self._n = itertools.count()
        self._shared: Optional[str] = None
        if admin_url:
            self.admin_url = admin_url
        else:
            self._start()
        self._make_template()

    # ---- server ----
    def _start(self) -> None:
        bindir = pg_bindir()
        uid, gid = os.getuid(), os.getgid()
        if uid == 0:
            import pwd

            pw = pwd.getpwnam("nobody")
            uid, gid = pw.pw_uid, pw.pw_gid
        self.dir = tempfile.mkdtemp(prefix="vhdkit-pg-")
        os.chmod(self.dir, 0o700)
        os.chown(self.dir, uid, gid)
        data = os.path.join(self.dir, "data")
        from helpers_vhd import peer_env   # not at the top: conftest loads this module as a plugin

        # a peer's environment: without the sanitizer runtime the ASan pass
        # preloads into this process (initdb does not finish under it)
        env = dict(peer_env(), LC_ALL="C.UTF-8", LANG="C.UTF-8", HOME=self.dir, PGTZ="UTC")
        r = subprocess.run([os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres", "-A", "trust",
                            "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
                           cwd=self.dir, env=env, capture_output=True, text=True, timeout=120,
                           preexec_fn=_as_user(uid, gid, signal.SIGKILL))
        if r.returncode != 0:
            pytest.fail(f"initdb failed: {r.stderr[-2000:]}")
        self.log = open(os.path.join(self.dir, "postgres.log"), "wb")
        for _attempt in range(5):     # a port picked free may be taken before postgres binds it
            if self._run(bindir, data, env, uid, gid):
                return
        self.stop()
        pytest.fail(f"postgres could not listen on a free port: {self._log_tail()}")

    def _run(self, bindir: str, data: str, env: dict, uid: int, gid: int) -> bool:
        """Start postgres on a free port; False if that port was taken meanwhile."""
        self.port = _free_port()
        # Throw-away data: no fsync, no durability waits (the tests check the
        # registry's semantics, not PostgreSQL's crash safety).
        opts = {"listen_addresses": "127.0.0.1", "port": str(self.port), "unix_socket_directories": self.dir,
                "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                "max_connections": "300", "shared_buffers": "64MB", "timezone": "UTC",
                "log_min_messages": "warning", "logging_collector": "off"}
        args = [os.path.join(bindir, "postgres"), "-D", data]
        for k, v in opts.items():
            args += ["-c", f"{k}={v}"]
        self.proc = subprocess.Popen(args, cwd=self.dir, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, preexec_fn=_as_user(uid, gid, signal.SIGQUIT))
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        deadline = time.monotonic() + _STARTUP_S
        while True:
            if self.proc.poll() is not None:
                if "could not bind" in self._log_tail() or "already in use" in self._log_tail():
                    return False
                self.stop()
                pytest.fail(f"postgres exited at start: {self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                self.admin("SELECT 1")
                return True
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"postgres did not start within {_STARTUP_S:.0f} s: {self._log_tail()}")
                time.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.dir or "", "postgres.log"), "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)     # immediate shutdown: the data is thrown away
            self.proc.wait(30)
        self.proc = None
        if self.dir:
            self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    # ---- databases ----
    def url(self, dbname: str) -> str:
        return self.admin_url.rsplit("/", 1)[0] + "/" + dbname

    def admin(self, *statements: str) -> List[tuple]:
        """Run statements on the admin database (autocommit); rows of the last."""
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as c:
            rows: List[tuple] = []
            for s in statements:
                cur = c.execute(s)
                rows = cur.fetchall() if cur.description else []
            return rows

    def _make_template(self) -> None:
        """The template every test database is copied from: the registry schema
        at head (migrated once per session)."""
        self.admin(f"DROP DATABASE IF EXISTS {TEMPLATE}", f"CREATE DATABASE {TEMPLATE}")
        from vhdkit.registry import db

        db.connect(self.url(TEMPLATE)).close()

    def new_database(self) -> str:
        name = f"t{os.getpid()}_{next(self._n)}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        return self.url(name)

    def empty_database(self) -> str:
        if self._shared is None:
            self._shared = self.new_database()
        empty_registry(self._shared)
        return self._shared


def empty_registry(url: str) -> None:
    """Delete every row of the registry at ``url`` and put its schema revision
    back to head (a test may have set a newer one).  DELETE, not TRUNCATE: on
    small tables it is much cheaper (no new files for the many indexes)."""
    import psycopg

    from vhdkit.registry.db import HEAD

    with psycopg.connect(url, autocommit=True) as c:
        c.execute("BEGIN")
        for table in ("images", "image_tags", "image_properties", "image_members", "trash", "tasks",
                      "retired_image_ids"):
            c.execute(f"DELETE FROM {table}")
        c.execute(f"UPDATE alembic_version SET version_num = '{HEAD:04d}'")
        c.execute("COMMIT")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer(os.environ.get("VHDKIT_TEST_PG_URL"))
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
