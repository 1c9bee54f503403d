"""The registry's database engines: one URL chooses SQLite or PostgreSQL, the
schema's Alembic revisions, task claims under concurrency, an unreachable
database, and PostgreSQL's list-query plans."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpers_registry import admin, make_image, who
from vhdkit.errors import StorageError, UnsupportedError
from vhdkit.registry import Registry, db as regdb
from vhdkit.registry.query import build_list_sql, parse_list_params

ROOT = Path(__file__).resolve().parent.parent


def test_alembic_head_is_the_cheap_check_head():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(ROOT / "vhdkit" / "registry" / "migrations"))
    assert ScriptDirectory.from_config(cfg).get_heads() == [f"{regdb.HEAD:04d}"]


def test_database_url_is_one_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("VHDKIT_DATABASE_URL", "mysql://x@h/db")
    with pytest.raises(UnsupportedError, match="must start with postgresql://"):
        Registry(str(tmp_path))


def _pre_alembic_registry(home: Path, version: int) -> None:
    """A registry file as vhdkit before Alembic left it at ``version``: the same
    DDL, the version in PRAGMA user_version, no alembic_version table."""
    with Registry(str(home)) as r:
        make_image(r, name="kept", tags=["t"], members=["acct-member"])
    conn = sqlite3.connect(home / "registry.db")
    conn.execute("DROP TABLE alembic_version")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()


def test_pre_alembic_registry_at_head_is_stamped_in_place(tmp_path, monkeypatch):
    monkeypatch.delenv("VHDKIT_DATABASE_URL", raising=False)
    home = tmp_path / "home"
    _pre_alembic_registry(home, regdb.HEAD)
    with Registry(str(home)) as r:
        assert not r.created
        c = r._conn()
        assert c.execute("SELECT version_num FROM alembic_version").fetchone()[0] == f"{regdb.HEAD:04d}"
        assert c.execute("PRAGMA user_version").fetchone()[0] == regdb.HEAD
        [img] = r.list_images(who("acct-member", "observer")).images
        assert (img.name, img.tags) == ("kept", ["t"])


def test_newer_pre_alembic_registry_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("VHDKIT_DATABASE_URL", raising=False)
    home = tmp_path / "home"
    _pre_alembic_registry(home, regdb.HEAD + 1)
    with pytest.raises(UnsupportedError) as e:
        Registry(str(home))
    assert "\n" not in str(e.value) and f"schema version {regdb.HEAD + 1}" in str(e.value)


_IMPORTS = ("import sys, json\nfrom vhdkit.registry import Caller, Registry\n"
            "r = Registry(sys.argv[1])\nr.list_images(Caller('acct-a', frozenset({'observer'})))\nr.close()\n"
            "print(json.dumps(sorted(sys.modules)))\n")


def test_opening_a_registry_at_head_imports_no_migration_tool(tmp_path, registry_url):
    home = tmp_path / "home"
    Registry(str(home)).close()            # created (and migrated) here
    r = subprocess.run([sys.executable, "-c", _IMPORTS, str(home)], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout)
    assert not [m for m in loaded if m.split(".")[0] in ("alembic", "sqlalchemy", "mako")]
    assert bool([m for m in loaded if m.startswith("psycopg")]) == (registry_url is not None)


def test_concurrent_claims_take_each_task_once(tmp_path, registry_url):
    """Four registries (as four workers) claim 40 tasks at once: each task is
    claimed by exactly one of them."""
    regs = [Registry(str(tmp_path / "home")) for _ in range(4)]
    me = admin()
    ids = {regs[0].create_task(me, "import", {"n": n}).id for n in range(40)}
    got: list = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        while True:
            t = regs[k].claim_task(f"w{k}")
            if t is None:
                return
            with lock:
                got.append(t.id)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for r in regs:
        r.close()
    assert sorted(got) == sorted(ids)


def test_unreachable_postgresql_is_a_storage_error_without_secrets(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]      # closed again: nothing listens there
    with pytest.raises(StorageError) as e:
        Registry(str(tmp_path), database_url=f"postgresql://u:s3cret@127.0.0.1:{port}/db")
    assert "s3cret" not in str(e.value) and "\n" not in str(e.value)


def test_lost_postgresql_connection_is_a_storage_error_then_reconnects(pg_server, pg_url, tmp_path):
    r = Registry(str(tmp_path), database_url=pg_url)
    try:
        make_image(r)
        pg_server.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        f"WHERE datname = '{pg_url.rsplit('/', 1)[1]}' AND pid <> pg_backend_pid()")
        with pytest.raises(StorageError, match="registry database unavailable"):
            r.list_images(admin())
        assert len(r.list_images(admin()).images) == 1     # the next transaction reconnects
    finally:
        r.close()


def test_api_answers_503_json_while_postgresql_is_unreachable(pg_server, pg_url, tmp_path):
    from starlette.testclient import TestClient

    from vhdkit.api.app import create_app

    r = Registry(str(tmp_path), database_url=pg_url)
    try:
        with TestClient(create_app(registry=r)) as c:
            c.headers["X-Auth-Token"] = "acct-owner:admin"
            assert c.get("/v2/images").status_code == 200
            pg_server.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            f"WHERE datname = '{pg_url.rsplit('/', 1)[1]}' AND pid <> pg_backend_pid()")
            resp = c.get("/v2/images")
            assert resp.status_code == 503
            msg = resp.json()["error"]["message"]
            assert "unavailable" in msg and "127.0.0.1" not in msg and "port" not in msg
            assert c.get("/v2/images").status_code == 200       # back once the database is
    finally:
        r.close()


# ---- PostgreSQL plans: a page walks indexes, whatever the registry's size ----

def _populate(url: str, n: int) -> None:
    """``n`` images in SQL (fast): three owners, every visibility, a few
    shared with the probing account."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        c.execute(
            "INSERT INTO images (id, name, status, visibility, owner, created_at, updated_at, "
            "disk_format, container_format, size) "
            "SELECT md5(g::text)::uuid::text, 'img-' || (g %% 97), 'active', "
            "(ARRAY['private','shared','public','community'])[1 + g %% 4], 'o' || (g %% 3), "
            "to_char(timestamp '2030-01-01' + g * interval '1 second', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
            "to_char(timestamp '2030-01-01' + g * interval '1 second', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
            "'vhd', 'bare', g FROM generate_series(1, %s) g", (n,))
        c.execute("INSERT INTO image_members (image_id, member, status, created_at, updated_at) "
                  "SELECT id, 'probe', 'accepted', created_at, created_at FROM images "
                  "WHERE visibility = 'shared' AND size % 50 = 1")
        c.execute("ANALYZE")


def _unbounded_sorts(node: dict, under_limit: bool = False) -> list:
    """Sort nodes over an images scan that no Limit cuts (a sort of the table)."""
    kind = node["Node Type"]
    bad = []
    if kind == "Sort" and not under_limit and _scans_images(node):
        bad.append(node)
    for child in node.get("Plans", ()):
        bad += _unbounded_sorts(child, under_limit or kind == "Limit")
    return bad


def _scans_images(node: dict) -> bool:
    return node.get("Relation Name") == "images" or any(_scans_images(c) for c in node.get("Plans", ()))


def _nodes(node: dict) -> list:
    return [node] + [n for c in node.get("Plans", ()) for n in _nodes(c)]


@pytest.fixture(scope="module")
def plan_db(pg_server) -> str:
    url = pg_server.new_database()
    _populate(url, 20000)
    return url


@pytest.mark.parametrize("params", [{}, {"sort": "name:asc"}, {"visibility": "all", "sort": "size:desc"}],
                         ids=["default", "name", "all-size"])
def test_postgresql_list_plan_walks_indexes(plan_db, tmp_path, params):
    r = Registry(str(tmp_path), database_url=plan_db)
    try:
        conn = r._conn()
        q = parse_list_params(params)
        sql, ps = build_list_sql(q, "o1", None, conn.dialect)
        [[plan]] = conn.execute("EXPLAIN (FORMAT JSON) " + sql, ps).fetchone()
        nodes = _nodes(plan["Plan"])
        seq = [n for n in nodes if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "images"]
        assert not seq, json.dumps(plan)[:3000]
        assert not _unbounded_sorts(plan["Plan"]), json.dumps(plan)[:3000]
        used = {n.get("Index Name") for n in nodes if n.get("Relation Name") == "images"}
        key = q.sort[0][0]
        short = {"created_at": "created"}.get(key, key)
        assert f"ix_images_own_{short}" in used and f"ix_images_vis_{short}" in used, used
        # and the registry returns the page the plan was made for
        page = r.list_images(who("o1", "observer"), params)
        assert len(page.images) == 25 and page.next_marker
    finally:
        r.close()


def test_cli_database_url_flag_chooses_postgresql(pg_url, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), VHDKIT_ACCOUNT="acct-a", VHDKIT_ROLES="cloudImages:admin")
    env.pop("VHDKIT_DATABASE_URL", None)
    data = tmp_path / "data"
    r = subprocess.run([sys.executable, "-m", "vhdkit", "image", "create", "--name", "via-flag", "--data", str(data),
                        "--database-url", pg_url, "--json"], env=env, capture_output=True, text=True, cwd=ROOT,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert not (data / "registry.db").exists()
    with Registry(str(data), database_url=pg_url) as reg:
        assert [i.name for i in reg.list_images(admin("acct-a")).images] == ["via-flag"]
