"""Image list queries: parse v2 list parameters (filters, sorting, pagination)
into a :class:`ListQuery`, and build SQL from it.

Nothing the caller sends reaches SQL as text: column names come from
whitelists, every value is a bound parameter.  Unknown filter values and bad
sort keys raise :class:`InvalidInputError`.

The visible set of an account is the union of disjoint *branches* -- its own
images, public images of others, images shared with it (by member status),
community images of others -- each of which an index can walk (owner,
visibility, member); the service identity's is one branch per visibility.
The schema has an index ``(owner|visibility, sort key, created_at, id)`` for
every sort key (db.py), so a branch is walked in the requested order; a
marker splits each branch into *levels* that seek past the marker (see
:func:`_after_marker`).  Each walk is cut to ``limit + 1`` rows on its own,
then the walks are merged: a page touches O(walks x page) rows, not the
registry (the own branch: at most the caller's own images; the shared
branch: the caller's memberships).  tests/test_registry_plans.py checks the
plans with EXPLAIN QUERY PLAN.
"""
from __future__ import annotations

from .._record import factory, record
from ..errors import InvalidInputError

TYPE_CHECKING = False   # typing and datetime are not imported at run time (start-up of `vhdkit image list`)
if TYPE_CHECKING:  # pragma: no cover
    import datetime as _dt
    from collections.abc import Mapping
    from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union
from .db import SQLITE
from .models import (BASE_FIELDS, CONTAINER_FORMATS, DISK_FORMATS,
                     MEMBER_STATUSES, RESERVED_FIELDS, SORT_KEYS, STATUSES, VISIBILITIES,
                     now_text, property_name_problem)

DEFAULT_LIMIT = 25
MAX_LIMIT = 1000

#: sort key -> column (the whitelist)
SORT_COLUMNS = {k: f"i.{k}" for k in SORT_KEYS}
#: filters that accept the ``in:a,b,"c,d"`` form, with their allowed values (None: any)
IN_FILTERS: Dict[str, Optional[Sequence[str]]] = {
    "name": None, "id": None, "status": STATUSES, "disk_format": DISK_FORMATS,
    "container_format": CONTAINER_FORMATS,
}
EXACT_FILTERS = ("owner", "checksum", "os_hash_algo", "os_hash_value")
#: integer base fields a list may be filtered on, exactly (as Glance)
INT_FILTERS = ("size", "virtual_size", "min_disk", "min_ram")
#: boolean base fields a list may be filtered on
BOOL_FILTERS = ("protected", "os_hidden")
TIME_FILTERS = ("created_at", "updated_at")
TIME_OPS = ("gt", "gte", "eq", "neq", "lt", "lte")
CONTROL = ("limit", "marker", "sort", "sort_key", "sort_dir")
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
#: every base-field key this module understands as a filter
KNOWN_FILTERS = tuple(IN_FILTERS) + EXACT_FILTERS + INT_FILTERS + BOOL_FILTERS + TIME_FILTERS + (
    "visibility", "member_status", "size_min", "size_max", "tag")

if TYPE_CHECKING:  # pragma: no cover
    Params = Union[Mapping[str, Union[str, Sequence[str]]], Iterable[Tuple[str, str]]]


@record
class ListQuery:
    visibility: Optional[str] = None          # None: default (own+public+accepted shared)
    member_status: str = "accepted"
    tags: List[str] = factory(list)
    properties: List[Tuple[str, str]] = factory(list)
    where: List[Tuple[str, List[Any]]] = factory(list)   # (sql on alias i, params)
    sort: List[Tuple[str, str]] = factory(list)          # (key, 'asc'|'desc')
    marker: Optional[str] = None
    limit: int = DEFAULT_LIMIT
    #: Images API 2.7: hidden images are listed only when ``os_hidden=true``
    #: asks for them (and then only they are)
    os_hidden: bool = False


def param_pairs(params: Optional[Params], extra: Optional[Mapping[str, Any]] = None) -> List[Tuple[str, str]]:
    """Query parameters -- a mapping or (key, value) pairs, a value a string or a
    list of them (a repeated key), then ``extra`` -- as (key, string) pairs."""
    items: List[Tuple[Any, Any]] = []
    if params is not None:
        # a mapping is what has items() (as dict.update asks); collections.abc is
        # not imported for an isinstance (start-up of `vhdkit image list`)
        items.extend(params.items() if hasattr(params, "items") else params)  # type: ignore[union-attr]
    if extra:
        items.extend(extra.items())
    out: List[Tuple[Any, Any]] = []
    for k, v in items:
        if isinstance(v, (list, tuple)):
            out.extend((k, x) for x in v)
        else:
            out.append((k, v))
    for k, v in out:
        if not isinstance(k, str) or not isinstance(v, (str, int, bool)):
            raise InvalidInputError(f"bad list parameter {k!r}")
    return [(k, v if isinstance(v, str) else (str(v).lower() if isinstance(v, bool) else str(v)))
            for k, v in out]


def _in_values(key: str, value: str) -> List[str]:
    if value.startswith("in:"):
        import csv  # only an in: filter's value list needs it

        try:
            vals = next(csv.reader([value[3:]], skipinitialspace=False, strict=True))
        except (csv.Error, StopIteration):
            raise InvalidInputError(f"bad 'in:' list for {key}: {value!r}") from None
        if not vals:
            raise InvalidInputError(f"empty 'in:' list for {key}")
    else:
        vals = [value]
    allowed = IN_FILTERS.get(key)
    if allowed is not None:
        for v in vals:
            if v not in allowed:
                raise InvalidInputError(f"invalid {key} {v!r}: expected one of {', '.join(allowed)}")
    return vals


def parse_time(text: str) -> _dt.datetime:
    import datetime as _dt

    try:
        t = _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidInputError(f"bad time {text!r}: use ISO 8601, e.g. 2026-01-31T12:00:00Z") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.astimezone(_dt.timezone.utc).replace(microsecond=0)


def time_condition(col: str, value: str) -> Tuple[str, List[Any]]:
    """``gte:2026-01-31T12:00:00Z`` on a stored microsecond column, compared at
    whole seconds (the precision the API shows)."""
    op, sep, rest = value.partition(":")
    if not sep or op not in TIME_OPS:
        raise InvalidInputError(f"bad time filter {value!r}: use OP:TIME with OP one of {', '.join(TIME_OPS)}")
    from datetime import timedelta

    t = parse_time(rest)
    lo = now_text(t)
    hi = now_text(t + timedelta(seconds=1))
    return {
        "gt": (f"{col} >= ?", [hi]),
        "gte": (f"{col} >= ?", [lo]),
        "lt": (f"{col} < ?", [lo]),
        "lte": (f"{col} < ?", [hi]),
        "eq": (f"({col} >= ? AND {col} < ?)", [lo, hi]),
        "neq": (f"({col} < ? OR {col} >= ?)", [lo, hi]),
    }[op]


def _int(key: str, value: str, lo: int = 0) -> int:
    try:
        n = int(value)
    except ValueError:
        raise InvalidInputError(f"{key} must be an integer, not {value!r}") from None
    if n < lo:
        raise InvalidInputError(f"{key} must be >= {lo}")
    return n


def _bool(key: str, value: str) -> bool:
    b = _BOOLS.get(value.lower())
    if b is None:
        raise InvalidInputError(f"{key} must be true or false, not {value!r}")
    return b


def parse_sort(sort: List[str], sort_keys: List[str], sort_dirs: List[str]) -> List[Tuple[str, str]]:
    if sort and (sort_keys or sort_dirs):
        raise InvalidInputError("use either 'sort' or 'sort_key'/'sort_dir', not both")
    out: List[Tuple[str, str]] = []
    if sort:
        for s in sort:
            for item in s.split(","):
                key, _, d = item.strip().partition(":")
                out.append((key.strip(), (d.strip() or "desc")))
    else:
        if sort_dirs and len(sort_dirs) not in (1, len(sort_keys)):
            raise InvalidInputError("give one sort_dir, or one per sort_key")
        if sort_dirs and not sort_keys:
            sort_keys = ["created_at"]
        for n, key in enumerate(sort_keys):
            d = sort_dirs[0] if len(sort_dirs) == 1 else (sort_dirs[n] if sort_dirs else "desc")
            out.append((key, d))
    seen = set()
    for key, d in out:
        if key not in SORT_COLUMNS:
            raise InvalidInputError(f"invalid sort key {key!r}: expected one of {', '.join(SORT_KEYS)}")
        if d not in ("asc", "desc"):
            raise InvalidInputError(f"invalid sort direction {d!r}: expected asc or desc")
        if key in seen:
            raise InvalidInputError(f"sort key {key!r} given twice")
        seen.add(key)
    if not out:
        out = [("created_at", "desc")]
    last = out[-1][1]
    for key in ("created_at", "id"):
        if key not in seen and not any(k == key for k, _ in out):
            out.append((key, last))
    # id is unique: keys after it never decide (and would keep an index on
    # (..., id) from giving the order)
    ids = [k for k, _ in out].index("id")
    return out[:ids + 1]


def parse_list_params(params: Optional[Params]) -> ListQuery:
    q = ListQuery()
    sort: List[str] = []
    sort_keys: List[str] = []
    sort_dirs: List[str] = []
    seen: Dict[str, int] = {}
    for key, value in param_pairs(params):
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1 and key not in ("tag", "sort_key", "sort_dir", "sort"):
            raise InvalidInputError(f"filter {key!r} given more than once")
        if key == "limit":
            q.limit = min(_int("limit", value), MAX_LIMIT)
        elif key == "marker":
            q.marker = value
        elif key == "sort":
            sort.append(value)
        elif key == "sort_key":
            sort_keys.append(value)
        elif key == "sort_dir":
            sort_dirs.append(value)
        elif key == "visibility":
            if value not in VISIBILITIES + ("all",):
                raise InvalidInputError(f"invalid visibility {value!r}: expected one of "
                                        f"{', '.join(VISIBILITIES + ('all',))}")
            q.visibility = value
        elif key == "member_status":
            if value not in MEMBER_STATUSES + ("all",):
                raise InvalidInputError(f"invalid member_status {value!r}: expected one of "
                                        f"{', '.join(MEMBER_STATUSES + ('all',))}")
            q.member_status = value
        elif key == "tag":
            if not value:
                raise InvalidInputError("empty tag filter")
            q.tags.append(value)
        elif key in IN_FILTERS:
            vals = _in_values(key, value)
            q.where.append((f"i.{key} IN ({','.join('?' * len(vals))})", vals))
        elif key in EXACT_FILTERS:
            q.where.append((f"i.{key} = ?", [value]))
        elif key in INT_FILTERS:
            q.where.append((f"i.{key} = ?", [_int(key, value)]))
        elif key == "protected":
            if value not in ("true", "false"):
                raise InvalidInputError(f"protected must be true or false, not {value!r}")
            q.where.append(("i.protected = ?", [1 if value == "true" else 0]))
        elif key == "os_hidden":
            q.os_hidden = _bool(key, value)
        elif key == "changes-since":
            raise InvalidInputError('The "changes-since" filter is no longer available on v2.')
        elif key == "size_min":
            q.where.append(("i.size >= ?", [_int(key, value)]))
        elif key == "size_max":
            q.where.append(("i.size <= ?", [_int(key, value)]))
        elif key in TIME_FILTERS:
            q.where.append(time_condition(f"i.{key}", value))
        elif key in BASE_FIELDS or key in RESERVED_FIELDS:
            raise InvalidInputError(f"cannot filter on {key!r}")
        else:
            if property_name_problem(key) is not None:
                raise InvalidInputError(f"invalid filter {key[:40]!r}: {property_name_problem(key)}")
            q.properties.append((key, value))
    q.sort = parse_sort(sort, sort_keys, sort_dirs)
    return q


# ---- SQL ----

#: sort columns that are never NULL (after a marker, no NULL tail to add)
NOT_NULL = frozenset({"status", "id", "created_at", "updated_at", "min_disk", "min_ram",
                      "owner", "visibility"})
#: at most this many index walks (branches x marker levels) in one list query;
#: beyond it the marker becomes one OR condition per branch (still correct)
MAX_WALKS = 48
#: the parameter budget of one statement (SQLite's default limit is 32766)
MAX_PARAMS = 30000


def _after_marker(sort: List[Tuple[str, str]], values: Sequence[Any], dialect: Any = SQLITE
                  ) -> List[Tuple[List[str], List[Any]]]:
    """Rows strictly after the marker row in the (total) sort order, as disjoint
    *levels*, each a list of conditions an index on the sort columns can seek
    to: level j holds rows equal to the marker on keys 0..j-1 and after it on
    key j.  SQLite puts NULLs first ascending and last descending, so a
    descending level of a nullable key is two seeks (``< v``, ``IS NULL``)."""
    # The walk's index is the first key's (P, key, created_at, id): a later
    # key outside it gets a unary + so that SQLite does not seek another
    # index on it (an equality on a low-cardinality column would look cheap).
    cols = [SORT_COLUMNS[k] if n == 0 or k in ("created_at", "id") else dialect.noindex(SORT_COLUMNS[k])
            for n, (k, _) in enumerate(sort)]
    out: List[Tuple[List[str], List[Any]]] = []
    for j, (key, d) in enumerate(sort):
        eq = [f"{cols[i]} IS NULL" if values[i] is None else f"{cols[i]} = ?" for i in range(j)]
        ps = [v for v in values[:j] if v is not None]
        col, v = cols[j], values[j]
        if d == "asc":
            if v is None:
                out.append((eq + [f"{col} IS NOT NULL"], ps))
            else:
                out.append((eq + [f"{col} > ?"], ps + [v]))
        elif v is not None:
            out.append((eq + [f"{col} < ?"], ps + [v]))
            if key not in NOT_NULL:
                out.append((eq + [f"{col} IS NULL"], ps))
    return out


def _after_marker_or(levels: List[Tuple[List[str], List[Any]]]) -> Tuple[str, List[Any]]:
    """The levels as one condition (for a query too wide to split)."""
    if not levels:
        return "1 = 0", []
    params: List[Any] = []
    for _, ps in levels:
        params.extend(ps)
    return "(" + " OR ".join("(" + " AND ".join(w) + ")" for w, _ in levels) + ")", params


def _branches(q: ListQuery, account: Optional[str], dialect: Any = SQLITE
              ) -> List[Tuple[str, List[str], List[Any]]]:
    """The disjoint sets whose union is what ``account`` may see (with the
    visibility filter applied), as (FROM, conditions, params).  Each one is
    a range of an index: ``(owner, ...)``, ``(visibility, ...)`` or
    ``image_members(member, status, ...)``.  A unary ``+`` keeps SQLite from
    driving a branch with the wrong index (without it, the own branch's
    ``i.visibility = 'shared'`` made SQLite walk every shared image of the
    registry)."""
    vis = q.visibility
    vis_ = dialect.noindex("i.visibility")
    out: List[Tuple[str, List[str], List[Any]]] = []
    if account is None:
        # everything (the service identity): one walk per visibility
        for v in (VISIBILITIES if vis in (None, "all") else (vis,)):
            out.append(("images i", [f"i.visibility = '{v}'"], []))
        return out
    # The public and community branches include the caller's own images of
    # that visibility (so they need no owner test, which would cost a table
    # read per index entry); the own branch then leaves those visibilities out.
    wide = {"public"} if vis is None else {"public", "community"} if vis == "all" else set()
    if vis in (None, "all"):
        out.append(("images i", ["i.owner = ?"] + [f"{vis_} != '{v}'" for v in sorted(wide)],
                    [account]))
    elif vis in ("private", "shared"):
        out.append(("images i", ["i.owner = ?", f"{vis_} = ?"], [account, vis]))
    if vis in (None, "all", "public"):
        out.append(("images i", ["i.visibility = 'public'"], []))
    if vis in (None, "all", "shared"):
        # driven by the caller's memberships (CROSS JOIN: members first, by
        # member), each image looked up by its primary key -- never by a sort or
        # filter index, nor a marker condition moved onto m.image_id (which
        # planner statistics otherwise make SQLite do)
        w = ["m.member = ?", f"{vis_} = 'shared'", f"{dialect.noindex('i.owner')} != ?"]
        p: List[Any] = [account, account]
        if q.member_status != "all":
            w.insert(1, "m.status = ?")
            p.insert(1, q.member_status)
        out.append((dialect.members_join(), w, p))
    if vis in ("all", "community"):
        out.append(("images i", ["i.visibility = 'community'"], []))
    return out


def list_walks(q: ListQuery, account: Optional[str], marker_values: Optional[Sequence[Any]],
               dialect: Any = SQLITE) -> Tuple[List[Tuple[str, List[Any]]], str]:
    """The index walks of a list: (SELECT, params) each returning up to
    ``limit + 1`` rows ``id, s0, s1, ...`` in order, and the ORDER BY that merges
    them.  One walk per branch and marker level; each is sorted and cut on its
    own, so a page touches O(walks x page) rows whatever the registry's size
    (when the filters let most walked rows through)."""
    # hidden images are few: checked on the walked rows like any filter
    common: List[str] = ["i.os_hidden = ?"]
    cparams: List[Any] = [int(q.os_hidden)]
    for sql, ps in q.where:
        common.append(sql)
        cparams.extend(ps)
    for tag in q.tags:
        common.append("EXISTS (SELECT 1 FROM image_tags t WHERE t.image_id = i.id AND t.tag = ?)")
        cparams.append(tag)
    for name, value in q.properties:
        common.append("EXISTS (SELECT 1 FROM image_properties p WHERE p.image_id = i.id "
                      "AND p.name = ? AND p.value = ?)")
        cparams.extend([name, value])

    branches = _branches(q, account, dialect)
    levels: List[Tuple[List[str], List[Any]]] = [([], [])]
    if marker_values is not None:
        levels = _after_marker(q.sort, marker_values, dialect) or [(["1 = 0"], [])]
        width = len(levels) * len(branches)
        nparams = width * len(cparams) + len(branches) * sum(len(ps) for _, ps in levels)
        if width > MAX_WALKS or nparams > MAX_PARAMS:
            cond, ps = _after_marker_or(levels)
            levels = [([cond], ps)]

    cols = ", ".join(f"{SORT_COLUMNS[k]} AS s{n}" for n, (k, _) in enumerate(q.sort))
    order = ", ".join(dialect.order(f"s{n}", d) for n, (_, d) in enumerate(q.sort))
    walks: List[Tuple[str, List[Any]]] = []
    for frm, w, p in branches:
        for lw, lp in levels:
            where = " AND ".join(w + lw + common) or "1 = 1"
            walks.append((f"SELECT i.id AS id, {cols} FROM {frm} WHERE {where} "
                          f"ORDER BY {order} LIMIT {q.limit + 1}", p + lp + cparams))
    return walks, order


def build_list_sql(q: ListQuery, account: Optional[str], marker_values: Optional[Sequence[Any]],
                   dialect: Any = SQLITE) -> Tuple[str, List[Any]]:
    """SQL returning ``id`` of up to ``limit + 1`` visible images in order (the
    walks of :func:`list_walks`, merged).  ``account`` None means "sees
    everything" (the service identity)."""
    walks, order = list_walks(q, account, marker_values, dialect)
    params: List[Any] = []
    for _, ps in walks:
        params.extend(ps)
    sql = " UNION ALL ".join(f"SELECT * FROM ({w}) AS w{n}" for n, (w, _) in enumerate(walks))
    return sql + f" ORDER BY {order} LIMIT {q.limit + 1}", params
