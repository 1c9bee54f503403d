"""Listing (filters, both sort syntaxes, marker pagination) against a
brute-force in-memory model over random registries (hypothesis)."""
from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhdkit.errors import InvalidInputError
from vhdkit.registry import Caller, Registry

from helpers_registry import admin, make_image, reg  # noqa: F401
from pgserver import empty_registry

# every test on both engines (tests/helpers_pg.py)
pytestmark = pytest.mark.usefixtures("registry_url")

ACCOUNTS = ["a1", "a2", "a3"]
NAMES = ["x", "y", "Z", "é", None]
VIS = ["public", "private", "shared", "community"]
TAGS = ["t1", "t2", "t3"]
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
SORTABLE = ["name", "status", "container_format", "disk_format", "size", "id", "created_at",
            "updated_at", "min_disk"]

image_spec = st.fixed_dictionaries({
    "owner": st.sampled_from(ACCOUNTS), "name": st.sampled_from(NAMES), "visibility": st.sampled_from(VIS),
    "protected": st.booleans(), "disk_format": st.sampled_from(["vhd", "raw", None]),
    "container_format": st.sampled_from(["bare", "ova", None]), "min_disk": st.integers(0, 2),
    "tags": st.lists(st.sampled_from(TAGS), unique=True, max_size=3),
    "os": st.sampled_from([None, "u", "w"]), "status": st.sampled_from(["queued", "active"]),
    "size": st.sampled_from([None, 0, 10, 20]), "step_us": st.integers(0, 1_500_000),
    "members": st.dictionaries(st.sampled_from(ACCOUNTS), st.sampled_from(["pending", "accepted", "rejected"])),
})


def build(specs):
    home = tempfile.mkdtemp(prefix="vkq-")
    if os.environ.get("VHDKIT_DATABASE_URL"):     # one database per test: a fresh registry per example
        empty_registry(os.environ["VHDKIT_DATABASE_URL"])
    clock = {"t": T0}
    r = Registry(home, clock=lambda: clock["t"])
    model = []
    for s in specs:
        clock["t"] += dt.timedelta(microseconds=s["step_us"])
        svc = Caller.service(s["owner"])
        body = {k: s[k] for k in ("name", "visibility", "protected", "disk_format", "container_format",
                                  "min_disk", "tags")}
        if s["os"] is not None:
            body["os"] = s["os"]
        img = r.create_image(svc, body, owner=s["owner"])
        r._conn().execute("UPDATE images SET status = ?, size = ? WHERE id = ?", (s["status"], s["size"], img.id))
        members = {}
        if s["visibility"] == "shared":
            for m, status in s["members"].items():
                if m != s["owner"]:
                    r.add_member(svc, img.id, m)
                    r._conn().execute("UPDATE image_members SET status = ? WHERE image_id = ? AND member = ?",
                                      (status, img.id, m))
                    members[m] = status
        row = dict(s, id=img.id, created_at=img.created_at, updated_at=img.updated_at, members=members)
        model.append(row)
    return r, home, model


def visible(row, me, vis, mstatus):
    if row["owner"] == me:
        return vis in (None, "all") or row["visibility"] == vis
    if row["visibility"] == "public":
        return vis in (None, "all", "public")
    if row["visibility"] == "community":
        return vis in ("all", "community")
    if row["visibility"] == "shared" and vis in (None, "all", "shared") and me in row["members"]:
        return mstatus == "all" or row["members"][me] == mstatus
    return False


def trunc(stored):
    return dt.datetime.strptime(stored[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc)


TIME_OPS = {"gt": lambda a, b: a > b, "gte": lambda a, b: a >= b, "eq": lambda a, b: a == b,
            "neq": lambda a, b: a != b, "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}


def model_list(model, me, f):
    vis = f.get("visibility")
    ms = f.get("member_status", "accepted")
    out = []
    for row in model:
        if not visible(row, me, vis, ms):
            continue
        if any(t not in row["tags"] for t in f.get("tags", [])):
            continue
        if "name" in f and row["name"] not in f["name"]:
            continue
        if "status" in f and row["status"] not in f["status"]:
            continue
        if "disk_format" in f and row["disk_format"] not in f["disk_format"]:
            continue
        if "owner" in f and row["owner"] != f["owner"]:
            continue
        if "protected" in f and row["protected"] != f["protected"]:
            continue
        if "size_min" in f and (row["size"] is None or row["size"] < f["size_min"]):
            continue
        if "size_max" in f and (row["size"] is None or row["size"] > f["size_max"]):
            continue
        if "os" in f and row["os"] != f["os"]:
            continue
        if "created_at" in f:
            op, t = f["created_at"]
            if not TIME_OPS[op](trunc(row["created_at"]), t):
                continue
        out.append(row)
    keys = list(f["sort"])
    last = keys[-1][1]
    for k in ("created_at", "id"):
        if k not in [x for x, _ in keys]:
            keys.append((k, last))
    for k, d in reversed(keys):   # stable multi-pass sort; NULLs first ascending, last descending
        out.sort(key=lambda r: (r[k] is not None, r[k] if r[k] is not None else 0), reverse=(d == "desc"))
    return [r["id"] for r in out]


query_spec = st.fixed_dictionaries({
    "me": st.sampled_from(ACCOUNTS),
    "sort": st.lists(st.tuples(st.sampled_from(SORTABLE), st.sampled_from(["asc", "desc"])),
                     min_size=1, max_size=3, unique_by=lambda x: x[0]),
    "new_syntax": st.booleans(),
    "limit": st.integers(1, 7),
}, optional={
    "visibility": st.sampled_from(VIS + ["all"]),
    "member_status": st.sampled_from(["pending", "accepted", "rejected", "all"]),
    "tags": st.lists(st.sampled_from(TAGS), unique=True, min_size=1, max_size=2),
    "name": st.lists(st.sampled_from(["x", "y", "é", "no"]), unique=True, min_size=1, max_size=2),
    "status": st.lists(st.sampled_from(["queued", "active"]), unique=True, min_size=1, max_size=2),
    "disk_format": st.lists(st.sampled_from(["vhd", "raw"]), unique=True, min_size=1, max_size=2),
    "owner": st.sampled_from(ACCOUNTS),
    "protected": st.booleans(),
    "size_min": st.sampled_from([0, 10, 15]),
    "size_max": st.sampled_from([0, 10, 20]),
    "os": st.sampled_from(["u", "w"]),
    "created_at": st.tuples(st.sampled_from(sorted(TIME_OPS)),
                            st.integers(0, 8).map(lambda s: T0 + dt.timedelta(seconds=s))),
})


def to_params(f):
    p = [("limit", str(f["limit"]))]
    for k in ("visibility", "member_status", "owner", "os"):
        if k in f:
            p.append((k, f[k]))
    for t in f.get("tags", []):
        p.append(("tag", t))
    for k in ("name", "status", "disk_format"):
        if k in f:
            p.append((k, f[k][0] if len(f[k]) == 1 else "in:" + ",".join(f[k])))
    if "protected" in f:
        p.append(("protected", "true" if f["protected"] else "false"))
    for k in ("size_min", "size_max"):
        if k in f:
            p.append((k, str(f[k])))
    if "created_at" in f:
        op, t = f["created_at"]
        p.append(("created_at", f"{op}:{t.strftime('%Y-%m-%dT%H:%M:%SZ')}"))
    if f["new_syntax"]:
        p.append(("sort", ",".join(f"{k}:{d}" for k, d in f["sort"])))
    else:
        for k, d in f["sort"]:
            p += [("sort_key", k), ("sort_dir", d)]
    return p


def run_pages(r, me, params):
    caller = Caller(me, frozenset({"observer"}))
    got, marker = [], None
    for _ in range(100):
        page = r.list_images(caller, params + ([("marker", marker)] if marker else []))
        got += [i.id for i in page.images]
        assert len(page.images) <= int(dict(params)["limit"])
        if page.next_marker is None:
            return got
        assert page.next_marker == page.images[-1].id
        marker = page.next_marker
    raise AssertionError("pagination does not end")


def check(specs, queries):
    r, home, model = build(specs)
    try:
        for f in queries:
            assert run_pages(r, f["me"], to_params(f)) == model_list(model, f["me"], f), to_params(f)
    finally:
        r.close()
        shutil.rmtree(home, ignore_errors=True)


@settings(max_examples=int(os.environ.get("VHDKIT_QUERY_EXAMPLES", "40")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(image_spec, max_size=18), st.lists(query_spec, min_size=1, max_size=6))
def test_list_matches_model(specs, queries):
    check(specs, queries)


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(image_spec, max_size=40), st.lists(query_spec, min_size=1, max_size=10))
def test_list_matches_model_long(specs, queries):
    check(specs, queries)


@pytest.mark.parametrize("params", [
    {"sort_key": "checksum"}, {"sort_key": "name; DROP TABLE images"}, {"sort_dir": "up"},
    {"sort": "name:sideways"}, {"sort": "nope:asc"}, {"sort": "name", "sort_key": "name"},
    {"sort_key": ["name", "size"], "sort_dir": ["asc", "desc", "asc"]}, {"status": "bogus"},
    {"status": "in:active,bogus"}, {"visibility": "everyone"}, {"member_status": "maybe"},
    {"protected": "yes"}, {"size_min": "-1"}, {"size_max": "big"}, {"limit": "-1"}, {"limit": "x"},
    {"created_at": "after:2020-01-01T00:00:00Z"}, {"created_at": "gt:yesterday"}, {"marker": "nope"},
    {"disk_format": "exe"}, {"container_format": "in:"}, {"checksum": ["a", "b"]}, {"self": "x"},
    {"min_ram": "x"}, {"virtual_size": "-1"}, {"size": "1.5"}, {"changes-since": "2020-01-01T00:00:00Z"},
    {"tag": ""},
])
def test_bad_list_parameters_are_errors(reg, params):
    make_image(reg)
    with pytest.raises(InvalidInputError):
        reg.list_images(admin(), params)


def test_in_list_with_quoted_commas(reg):
    a = make_image(reg, name="a,b")
    make_image(reg, name="a")
    ids = [i.id for i in reg.list_images(admin(), {"name": 'in:"a,b",zz'}).images]
    assert ids == [a.id]


def test_sql_is_parameterised(reg):
    make_image(reg, name="'; DROP TABLE images; --")
    assert len(reg.list_images(admin(), {"name": "'; DROP TABLE images; --"}).images) == 1
    assert reg.list_images(admin(), {"x' OR 1=1 --": "v"}).images == []
    assert reg.integrity_check() == "ok"
