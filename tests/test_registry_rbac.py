"""The RBAC matrix (docs/rbac.md), generated from vhdkit.registry.MATRIX:
every operation x every role x owner/member/stranger is *performed*, and must
succeed or fail exactly as the table and the ownership rules say.  A few rows
are also spelled out literally from RBAC.md, so that a wrong table fails too."""
from __future__ import annotations

import io

import pytest

from vhdkit.errors import ForbiddenError, NotFoundError
from vhdkit.registry import ALL_ROLES, MATRIX, SERVICE, Caller, Registry

from helpers_registry import MEMBER, OWNER, STRANGER, admin, make_image, reg, who  # noqa: F401

# every test on both engines (tests/helpers_pg.py)
pytestmark = pytest.mark.usefixtures("registry_url")

RELATIONS = {"owner": OWNER, "member": MEMBER, "stranger": STRANGER}
ROLES = sorted(ALL_ROLES) + [None]   # None: a caller with no role at all


@pytest.fixture(scope="module")
def mreg(tmp_path_factory):
    r = Registry(str(tmp_path_factory.mktemp("rbac")))
    yield r
    r.close()


def _setup(r: Registry, account: str, op: str) -> dict:
    """A fresh world per case: an active shared image (MEMBER accepted, tag t0),
    or a queued one for uploads, or a task owned by the caller's account."""
    if op == "upload_data":
        return {"queued": make_image(r, members=[MEMBER]).id}
    if op == "show_task":
        return {"task": r.create_task(admin(account), "import", {"import_from": "c/o"}).id}
    return {"active": make_image(r, data=b"x" * 1000, members=[MEMBER], tags=["t0"]).id}


# op -> how to perform it (registry, caller, world)
PERFORM = {
    "list_images": lambda r, c, w: r.list_images(c),
    "show_image": lambda r, c, w: r.show_image(c, w["active"]),
    "update_image": lambda r, c, w: r.update_image(c, w["active"], [{"op": "replace", "path": "/name", "value": "n"}]),
    "delete_image": lambda r, c, w: r.delete_image(c, w["active"]),
    "add_member": lambda r, c, w: r.add_member(c, w["active"], "acct-new"),
    "list_members": lambda r, c, w: r.list_members(c, w["active"]),
    "show_member": lambda r, c, w: r.show_member(c, w["active"], MEMBER),
    "update_member": lambda r, c, w: r.update_member(c, w["active"], MEMBER, "rejected"),
    "delete_member": lambda r, c, w: r.delete_member(c, w["active"], MEMBER),
    "add_tag": lambda r, c, w: r.add_tag(c, w["active"], "t1"),
    "delete_tag": lambda r, c, w: r.delete_tag(c, w["active"], "t0"),
    "schemas": lambda r, c, w: r.get_schema(c, "image"),
    "create_task": lambda r, c, w: r.create_task(c, "export", {"image_uuid": w["active"]}),
    "list_tasks": lambda r, c, w: r.list_tasks(c),
    "show_task": lambda r, c, w: r.show_task(c, w["task"]),
    "create_image": lambda r, c, w: r.create_image(c, name="new"),
    "upload_data": lambda r, c, w: r.upload(c, w["queued"], io.BytesIO(b"data")),
    "download_data": lambda r, c, w: r.download(c, w["active"], io.BytesIO()),
    "deactivate": lambda r, c, w: r.deactivate_image(c, w["active"]),
    "reactivate": lambda r, c, w: r.reactivate_image(c, w["active"]),
}


def expected(op: str, role, relation: str):
    rule = MATRIX[op]
    if role == SERVICE:
        return None
    if rule.scope is not None and relation == "stranger":
        return NotFoundError
    if role not in rule.roles:
        return ForbiddenError
    if rule.scope == "owner" and relation != "owner":
        return ForbiddenError
    if rule.scope == "member" and relation != "member":
        return ForbiddenError
    return None


def _cases():
    for op in MATRIX:
        rels = RELATIONS if MATRIX[op].scope else {"owner": OWNER}
        for role in ROLES:
            for rel in rels:
                yield pytest.param(op, role, rel, id=f"{op}-{role or 'norole'}-{rel}")


def test_every_operation_has_a_performer():
    assert set(PERFORM) == set(MATRIX)


@pytest.mark.parametrize("op,role,relation", list(_cases()))
def test_matrix(mreg, op, role, relation):
    account = RELATIONS[relation]
    caller = Caller(account, frozenset([role] if role else []))
    world = _setup(mreg, account, op)
    exc = expected(op, role, relation)
    if exc is None:
        PERFORM[op](mreg, caller, world)
    else:
        with pytest.raises(exc) as ei:
            PERFORM[op](mreg, caller, world)
        assert type(ei.value) is exc
        assert ei.value.http_status == (404 if exc is NotFoundError else 403)


# ---- literal rows of RBAC.md, independent of MATRIX ----

def test_observer_cannot_delete_but_admin_can(reg):
    img = make_image(reg)
    for role in ("observer", "cloudImages:observer", "cloudImages:creator"):
        with pytest.raises(ForbiddenError):
            reg.delete_image(who(OWNER, role), img.id)
    for role in ("identity:user-admin", "admin", "cloudImages:admin"):
        reg.delete_image(who(OWNER, role), make_image(reg).id)
    reg.delete_image(who(OWNER, "admin"), img.id)
    with pytest.raises(NotFoundError):
        reg.show_image(who(OWNER, "admin"), img.id)


def test_observer_may_tag_but_not_share_or_update(reg):
    img = make_image(reg)
    obs = who(OWNER, "observer")
    reg.add_tag(obs, img.id, "mine")
    assert reg.show_image(obs, img.id).tags == ["mine"]
    reg.delete_tag(obs, img.id, "mine")
    with pytest.raises(ForbiddenError):
        reg.add_member(obs, img.id, MEMBER)
    with pytest.raises(ForbiddenError):
        reg.update_image(obs, img.id, [{"op": "replace", "path": "/name", "value": "x"}])
    with pytest.raises(ForbiddenError):
        reg.create_task(obs, "import", {})


def test_creator_shares_but_cannot_accept_or_unshare(reg):
    img = make_image(reg)
    reg.add_member(who(OWNER, "cloudImages:creator"), img.id, MEMBER)
    with pytest.raises(ForbiddenError):
        reg.update_member(who(MEMBER, "cloudImages:creator"), img.id, MEMBER, "accepted")
    with pytest.raises(ForbiddenError):
        reg.delete_member(who(OWNER, "cloudImages:creator"), img.id, MEMBER)
    reg.update_member(who(MEMBER, "admin"), img.id, MEMBER, "accepted")


def test_member_reads_but_cannot_modify(reg):
    img = make_image(reg, data=b"abc", members=[MEMBER])
    m = who(MEMBER, "admin")
    assert reg.show_image(m, img.id).id == img.id
    for call in (lambda: reg.update_image(m, img.id, [{"op": "add", "path": "/k", "value": "v"}]),
                 lambda: reg.delete_image(m, img.id), lambda: reg.add_tag(m, img.id, "x"),
                 lambda: reg.add_member(m, img.id, "acct-other"),
                 lambda: reg.update_member(who(OWNER, "admin"), img.id, MEMBER, "rejected")):
        with pytest.raises(ForbiddenError):
            call()


def test_stranger_gets_not_found_never_forbidden(reg):
    img = make_image(reg, visibility="private")
    for role in sorted(ALL_ROLES - {SERVICE}):
        s = who(STRANGER, role)
        for call in (lambda: reg.show_image(s, img.id), lambda: reg.delete_image(s, img.id),
                     lambda: reg.add_tag(s, img.id, "x"), lambda: reg.list_members(s, img.id)):
            with pytest.raises(NotFoundError):
                call()
