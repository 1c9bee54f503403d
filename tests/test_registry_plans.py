"""Index plans of the registry's list and show queries (issue 6, "indexes, not
scans"), the schema migration that added the list indexes, and the service
identity's list against the brute-force model.

Every statement the registry runs for a list or a show is captured (sqlite3
trace callback) and explained: no statement may scan a table, and a walk over
``images`` must come out of an index already in the requested order (a temp
B-tree only for the right part of a multi-key sort).  The cost of a page then
depends on the page, not on the registry's size.  No timing here: the figures
are in bench/ (``registry.list-100k``, ``bench/registry_scale.py``)."""
from __future__ import annotations

import os
import re
import sqlite3
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import test_registry_query as tq
from vhdkit.registry import Caller, Registry, db as regdb
from vhdkit.registry.migrations.versions import r0001_initial
from vhdkit.registry.models import SORT_KEYS, VISIBILITIES

from helpers_registry import admin, make_image, service, who

OWNERS = ["o1", "o2", "o3"]
PROBE = "probe"


@pytest.fixture(scope="module", params=["no-stats", "analyzed"])
def populated(tmp_path_factory, request):
    """A small registry with every visibility, tags, properties and members of
    every status; without planner statistics, and with them (Registry.close
    runs PRAGMA optimize, so a registry in use has sqlite_stat1)."""
    r = Registry(str(tmp_path_factory.mktemp("plans") / "home"))
    for n in range(40):
        owner = OWNERS[n % 3]
        vis = VISIBILITIES[n % 4]
        body = {"name": f"img-{(n * 7) % 13}" if n % 5 else None, "visibility": vis,
                "tags": ["a", "b"][: n % 3], "os_distro": ["u", "d"][n % 2]}
        if vis == "public" or vis == "community":
            img = r.create_image(service(owner), body, owner=owner, disk_format="vhd", container_format="bare")
        else:
            img = make_image(r, owner, **body)
        if vis == "shared":
            r.add_member(admin(owner), img.id, PROBE)
            st_ = ["pending", "accepted", "rejected"][n % 3]
            if st_ != "pending":
                r.update_member(admin(PROBE), img.id, PROBE, st_)
    if request.param == "analyzed":
        r._conn().execute("ANALYZE")
    yield r
    r.close()


SHAPES = [
    # the shape: a filtered, sorted page
    {"tag": ["a", "b"], "visibility": "shared", "member_status": "accepted", "sort": "name:asc"},
    {},                                            # the default page
    {"tag": "a"}, {"tag": ["a", "b"], "sort": "updated_at:desc"},
    {"member_status": "pending"}, {"member_status": "all", "visibility": "shared"},
    {"visibility": "all"}, {"visibility": "public", "sort": "size:asc"}, {"visibility": "private"},
    {"visibility": "community", "sort": "name:desc"},
    {"status": "queued", "sort": "name:asc"}, {"disk_format": "raw", "sort": "disk_format:desc"},
    {"name": "img-3"}, {"os_distro": "u"}, {"size_min": "0", "sort": "size:desc"},
    {"sort": "name:asc,size:desc"}, {"sort_key": ["status", "name"], "sort_dir": ["desc", "asc"]},
] + [{"sort": f"{k}:{d}"} for k in SORT_KEYS for d in ("asc", "desc")]

CALLERS = {"owner": admin("o1"), "member": who(PROBE, "observer"), "service": service("o2")}


def plans(reg: Registry, fn):
    """Run ``fn`` and return [(sql, [plan detail lines])] of every statement it ran."""
    conn = reg._conn()
    seen = []
    conn.set_trace_callback(seen.append)
    try:
        out = fn()
    finally:
        conn.set_trace_callback(None)
    res = []
    for sql in seen:
        if not re.match(r"\s*(SELECT|WITH)\b", sql, re.I):
            continue
        res.append((sql, [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql)]))
    return out, res


def check_plans(stmts):
    assert stmts, "no statement captured"
    for sql, plan in stmts:
        text = "\n".join(plan)
        assert not re.search(r"\bSCAN (i|m|t|p|images|image_tags|image_members|image_properties)\b", text), \
            (sql, plan)
        for line in plan:
            if line.startswith("SEARCH i ") or line.startswith("SEARCH images "):
                assert re.search(r"USING (COVERING )?INDEX (ix_images_(own|vis)_\w+|sqlite_autoindex_images_1) ",
                                 line), (sql, line)
    # each walk over images is in index order: split the statement into its walks
    for sql, _ in stmts:
        for walk in re.findall(r"SELECT i\.id AS id, .*? LIMIT \d+", sql):
            if "image_members m" in walk:
                plan = [r[3] for r in _explain(walk)]
                assert plan[0].startswith("SEARCH m USING COVERING INDEX ix_members_member (member=?"), plan
                assert plan[1].startswith("SEARCH i USING INDEX sqlite_autoindex_images_1 (id=?)"), plan
            else:
                plan = [r[3] for r in _explain(walk)]
                assert plan[0].startswith("SEARCH i USING"), (walk, plan)
                assert "USE TEMP B-TREE FOR ORDER BY" not in plan, (walk, plan)


_conn_for_walks: list = []


def _explain(sql):
    return _conn_for_walks[0].execute("EXPLAIN QUERY PLAN " + sql).fetchall()


@pytest.mark.parametrize("caller", sorted(CALLERS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "&".join(f"{k}={v}" for k, v in s.items()) or "default")
def test_list_uses_indexes_on_every_page(populated, caller, shape):
    _conn_for_walks[:] = [populated._conn()]
    who_ = CALLERS[caller]
    params = dict(shape, limit="3")
    marker, pages = None, 0
    while True:
        page, stmts = plans(populated, lambda: populated.list_images(
            who_, dict(params, **({"marker": marker} if marker else {}))))
        check_plans(stmts)
        pages += 1
        marker = page.next_marker
        if marker is None or pages > 20:
            break


def test_show_uses_indexes(populated):
    _conn_for_walks[:] = [populated._conn()]
    ids = [i.id for i in populated.list_images(service("x"), {"limit": "40"}).images]
    for caller in CALLERS.values():
        for iid in ids[:12]:
            try:
                _, stmts = plans(populated, lambda: populated.show_image(caller, iid))
            except Exception:   # not visible to this caller: the lookups still ran
                continue
            check_plans(stmts)


def test_every_sort_key_has_list_indexes():
    """Each sort key has an (owner, key, ...) and a (visibility, key, ...) index."""
    names = {n for n, _ in regdb._list_indexes()}
    for k in SORT_KEYS:
        for p, short in (("owner", "own"), ("visibility", "vis")):
            if k == p:
                continue
            want = {"created_at": f"ix_images_{short}_created", "id": f"ix_images_{short}_id"}.get(
                k, f"ix_images_{short}_{k}")
            assert want in names, want


# ---- migration ----

def test_version_1_database_upgrades_in_place(tmp_path):
    """A registry written by schema version 1 (the four name/created indexes)
    opens, upgrades to the current version keeping every row, and lists with
    the new indexes."""
    home = tmp_path / "home"
    home.mkdir()
    conn = sqlite3.connect(home / "registry.db")
    conn.execute("PRAGMA journal_mode = WAL")
    for stmt in regdb._split(r0001_initial.SQL):     # what vhdkit before Alembic wrote
        conn.execute(stmt)
    conn.execute("PRAGMA user_version = 1")
    t = "2030-01-01T00:00:00.000000Z"
    rows = [("11111111-1111-4111-8111-111111111111", "old-b", "o1", "shared"),
            ("22222222-2222-4222-8222-222222222222", "old-a", "o2", "public"),
            ("33333333-3333-4333-8333-333333333333", "old-c", "o1", "private")]
    for iid, name, owner, vis in rows:
        conn.execute("INSERT INTO images (id, name, status, visibility, owner, created_at, updated_at, "
                     "disk_format, container_format) VALUES (?, ?, 'queued', ?, ?, ?, ?, 'raw', 'bare')",
                     (iid, name, vis, owner, t, t))
    conn.execute("INSERT INTO image_tags VALUES (?, 'keep')", (rows[0][0],))
    conn.execute("INSERT INTO image_members VALUES (?, 'o2', 'accepted', ?, ?)", (rows[0][0], t, t))
    conn.commit()
    before = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    conn.close()
    assert "ix_images_owner_name" in before

    r = Registry(str(home))
    try:
        c = r._conn()
        assert c.execute("PRAGMA user_version").fetchone()[0] == regdb.HEAD == 6
        assert c.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0006"   # stamped at 1, upgraded
        # 2 -> 3: the lease column of forwarded uploads, empty for every old row
        assert [r[0] for r in c.execute("SELECT upload_lease_until FROM images")] == [None] * 3
        # 3 -> 4: hidden images (Images API 2.7); no old image is hidden
        assert [r[0] for r in c.execute("SELECT os_hidden FROM images")] == [0] * 3
        # 4 -> 5: retired ids of deleted images; none yet
        assert c.execute("SELECT count(*) FROM retired_image_ids").fetchone()[0] == 0
        # 5 -> 6: the sweep mark of failed tasks (fencing), a column of tasks with a default
        assert "swept" in {x[1] for x in c.execute("PRAGMA table_info(tasks)")}
        idx = {x[0] for x in c.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {n for n, _ in regdb._list_indexes()} <= idx
        assert not {"ix_images_owner_name", "ix_images_owner_created"} & idx
        assert r.integrity_check() == "ok"
        got = r.list_images(who("o2", "observer"), {"sort": "name:asc"}).images
        assert [i.name for i in got] == ["old-a", "old-b"]
        assert got[1].tags == ["keep"]
        assert r.show_image(who("o1", "observer"), rows[2][0]).name == "old-c"
        _conn_for_walks[:] = [c]
        _, stmts = plans(r, lambda: r.list_images(who("o2", "observer"), {"sort": "name:asc"}))
        check_plans(stmts)
    finally:
        r.close()
    # opening again is a no-op (already current)
    Registry(str(home)).close()


# ---- the service identity against the model ----

def _service_visible(row, me, vis, mstatus):
    return vis in (None, "all") or row["visibility"] == vis


@settings(max_examples=int(os.environ.get("VHDKIT_QUERY_EXAMPLES", "40")) // 2, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tq.image_spec, max_size=18), st.lists(tq.query_spec, min_size=1, max_size=4))
def test_service_list_matches_model(specs, queries):
    """The service identity sees every image (one index walk per visibility)."""
    r, home, model = tq.build(specs)
    try:
        with mock.patch.object(tq, "visible", _service_visible):
            for f in queries:
                params = tq.to_params(f)
                got, marker = [], None
                for _ in range(100):
                    page = r.list_images(Caller.service("svc"),
                                         params + ([("marker", marker)] if marker else []))
                    got += [i.id for i in page.images]
                    marker = page.next_marker
                    if marker is None:
                        break
                assert got == tq.model_list(model, None, f), params
    finally:
        r.close()
        import shutil
        shutil.rmtree(home, ignore_errors=True)


def test_wide_sort_falls_back_to_one_marker_condition(populated, monkeypatch):
    """A sort on every key has more marker levels than MAX_WALKS allows: the
    marker becomes one OR condition per branch; the pages are the same as
    with one walk per level."""
    from vhdkit.registry import query
    keys = [k for k in SORT_KEYS if k != "id"] + ["id"]
    params = {"sort": ",".join(f"{k}:{'asc' if n % 2 else 'desc'}" for n, k in enumerate(keys)), "limit": "4",
              "visibility": "all"}
    q = query.parse_list_params(params)
    assert len(query._after_marker(q.sort, ["v"] * len(q.sort))) * 4 > query.MAX_WALKS  # 4 branches

    def pages():
        out, marker = [], None
        while True:
            page = populated.list_images(admin("o1"), dict(params, **({"marker": marker} if marker else {})))
            out += [i.id for i in page.images]
            marker = page.next_marker
            if marker is None:
                return out
    used = []
    real = query._after_marker_or
    monkeypatch.setattr(query, "_after_marker_or", lambda levels: used.append(1) or real(levels))
    wide = pages()
    assert used, "the fallback was not exercised"
    monkeypatch.setattr(query, "MAX_WALKS", 10_000)
    used.clear()
    assert pages() == wide and len(wide) > 8 and not used
