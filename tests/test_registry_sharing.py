"""Sharing scenarios of the Rackspace Cloud Images FAQ and the member rules of
docs/rbac.md."""
from __future__ import annotations

import io

import pytest

from vhdkit.errors import ConflictError, ForbiddenError, InvalidInputError, NotFoundError
from vhdkit.registry import Caller

from helpers_registry import MEMBER, OWNER, STRANGER, admin, make_image, reg, who  # noqa: F401

# every test on both engines (tests/helpers_pg.py)
pytestmark = pytest.mark.usefixtures("registry_url")


def listed(reg, account, **params):
    return [i.id for i in reg.list_images(who(account, "observer"), params).images]


def test_shared_image_invisible_until_accepted_and_reject_hides_again(reg):
    img = make_image(reg, data=b"shared data")
    reg.add_member(admin(), img.id, MEMBER)
    m = reg.show_member(admin(), img.id, MEMBER)
    assert (m.status, m.member_id, m.image_id) == ("pending", MEMBER, img.id)
    assert img.id not in listed(reg, MEMBER)
    assert img.id in listed(reg, MEMBER, member_status="pending")
    assert img.id in listed(reg, MEMBER, visibility="shared", member_status="pending")
    assert img.id in listed(reg, MEMBER, member_status="all")
    reg.update_member(admin(MEMBER), img.id, MEMBER, "accepted")
    assert img.id in listed(reg, MEMBER)
    assert img.id in listed(reg, MEMBER, visibility="shared")
    out = io.BytesIO()
    reg.download(who(MEMBER, "observer"), img.id, out)
    assert out.getvalue() == b"shared data"
    reg.update_member(admin(MEMBER), img.id, MEMBER, "rejected")
    assert img.id not in listed(reg, MEMBER)
    assert img.id in listed(reg, MEMBER, member_status="rejected")
    assert img.id not in listed(reg, STRANGER, member_status="all", visibility="all")


def test_unsharing_or_deleting_removes_access(reg):
    img = make_image(reg, data=b"d", members=[MEMBER])
    assert img.id in listed(reg, MEMBER)
    reg.delete_member(admin(), img.id, MEMBER)
    assert img.id not in listed(reg, MEMBER, member_status="all")
    with pytest.raises(NotFoundError):
        reg.show_image(who(MEMBER, "observer"), img.id)
    reg.add_member(admin(), img.id, MEMBER)
    reg.update_member(admin(MEMBER), img.id, MEMBER, "accepted")
    reg.update_image(admin(), img.id, [{"op": "replace", "path": "/visibility", "value": "private"}])
    with pytest.raises(NotFoundError):
        reg.show_image(who(MEMBER, "observer"), img.id)
    assert img.id not in listed(reg, MEMBER, member_status="all", visibility="all")
    reg.update_image(admin(), img.id, [{"op": "replace", "path": "/visibility", "value": "shared"}])
    assert img.id in listed(reg, MEMBER)
    reg.delete_image(admin(), img.id)
    with pytest.raises(NotFoundError):
        reg.show_image(who(MEMBER, "observer"), img.id)
    assert listed(reg, MEMBER, member_status="all") == []


def test_stranger_gets_not_found(reg):
    img = make_image(reg, members=[MEMBER])
    for call in (lambda c: reg.show_image(c, img.id), lambda c: reg.list_members(c, img.id),
                 lambda c: reg.show_member(c, img.id, MEMBER),
                 lambda c: reg.update_member(c, img.id, STRANGER, "accepted"),
                 lambda c: reg.download(c, img.id, io.BytesIO())):
        with pytest.raises(NotFoundError):
            call(admin(STRANGER))


def test_member_rules(reg):
    img = make_image(reg, members=[MEMBER, ("acct-m2", "pending")])
    assert [m.member_id for m in reg.list_members(admin(), img.id)] == [MEMBER, "acct-m2"]
    assert [m.member_id for m in reg.list_members(who(MEMBER, "observer"), img.id)] == [MEMBER]
    with pytest.raises(NotFoundError):                       # a member sees only itself
        reg.show_member(admin(MEMBER), img.id, "acct-m2")
    with pytest.raises(ConflictError):
        reg.add_member(admin(), img.id, MEMBER)
    with pytest.raises(InvalidInputError):
        reg.add_member(admin(), img.id, OWNER)
    with pytest.raises(InvalidInputError):
        reg.add_member(admin(), img.id, "bad id/with slash")
    with pytest.raises(InvalidInputError):
        reg.update_member(admin(MEMBER), img.id, MEMBER, "maybe")
    with pytest.raises(ForbiddenError):                      # only the member changes its status
        reg.update_member(admin(), img.id, "acct-m2", "accepted")
    with pytest.raises(ForbiddenError):                      # only the owner removes members
        reg.delete_member(admin(MEMBER), img.id, MEMBER)
    with pytest.raises(NotFoundError):
        reg.delete_member(admin(), img.id, "acct-never")


def test_only_shared_images_have_members(reg):
    for vis in ("private", "community"):
        img = make_image(reg, visibility=vis)
        with pytest.raises(ForbiddenError):
            reg.add_member(admin(), img.id, MEMBER)


def test_public_and_community_visibility(reg):
    pub = reg.create_image(Caller.service("acct-op"), visibility="public", name="pub")
    com = make_image(reg, visibility="community")
    assert pub.id in listed(reg, STRANGER) and com.id not in listed(reg, STRANGER)
    assert com.id in listed(reg, STRANGER, visibility="community")
    assert {pub.id, com.id} <= set(listed(reg, STRANGER, visibility="all"))
    assert reg.show_image(who(STRANGER, "observer"), com.id).id == com.id
    with pytest.raises(ForbiddenError):
        reg.add_tag(who(STRANGER, "observer"), pub.id, "mine")
