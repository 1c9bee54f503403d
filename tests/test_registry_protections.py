"""Property rules of docs/rbac.md: name vs other properties, the com.rackspace
prefix, read-only base fields, and rules files in Glance's property-protections
roles format."""
from __future__ import annotations

import pytest

from vhdkit.errors import ConflictError, ForbiddenError, InvalidInputError
from vhdkit.registry import READONLY_FIELDS, Caller, PropertyProtections, Registry

from helpers_registry import OWNER, admin, make_image, reg, service, who  # noqa: F401

# every test on both engines (tests/helpers_pg.py)
pytestmark = pytest.mark.usefixtures("registry_url")

PROTECTED = "com.rackspace__1__options"


def patch(op, path, value=None):
    d = {"op": op, "path": "/" + path}
    if op != "remove":
        d["value"] = value
    return [d]


def test_customers_read_but_never_write_com_rackspace(reg):
    img = make_image(reg, **{})
    reg.update_image(service(), img.id, patch("add", PROTECTED, "0"))
    for role in ("identity:user-admin", "admin", "cloudImages:admin"):
        c = who(OWNER, role)
        assert reg.show_image(c, img.id).properties[PROTECTED] == "0"
        for op in ("replace", "remove"):
            with pytest.raises(ForbiddenError, match=PROTECTED):
                reg.update_image(c, img.id, patch(op, PROTECTED, "1"))
        with pytest.raises(ForbiddenError, match="com.rackspace__2__x"):
            reg.update_image(c, img.id, patch("add", "com.rackspace__2__x", "1"))
        with pytest.raises(ForbiddenError, match="com.rackspace.z"):
            reg.create_image(c, **{"com.rackspace.z": "1"})
    assert reg.show_image(admin(), img.id).properties[PROTECTED] == "0"


def test_prefix_is_a_prefix_not_a_substring(reg):
    img = make_image(reg)
    out = reg.update_image(admin(), img.id, patch("add", "x_com.rackspace", "ok"))
    assert out.properties["x_com.rackspace"] == "ok"


def test_other_properties_need_customer_admin(reg):
    creator = who(OWNER, "cloudImages:creator")
    img = reg.create_image(creator, name="only-name", disk_format="vhd", container_format="ova")
    assert img.name == "only-name"
    with pytest.raises(ForbiddenError, match="os_distro"):
        reg.create_image(creator, name="x", os_distro="ubuntu")
    out = reg.update_image(admin(), img.id, patch("add", "os_distro", "ubuntu"))
    assert out.properties == {"os_distro": "ubuntu"}
    out = reg.update_image(admin(), img.id, patch("replace", "os_distro", "debian") + patch("replace", "name", "n2"))
    assert (out.properties["os_distro"], out.name) == ("debian", "n2")
    out = reg.update_image(admin(), img.id, patch("remove", "os_distro"))
    assert out.properties == {}


@pytest.mark.parametrize("field", READONLY_FIELDS)
def test_read_only_base_fields_are_forbidden(reg, field):
    img = make_image(reg)
    for op in ("add", "replace", "remove"):
        with pytest.raises(ForbiddenError, match=field):
            reg.update_image(admin(), img.id, patch(op, field, "x"))
    if field != "id":
        with pytest.raises(ForbiddenError, match=field):
            reg.create_image(admin(), **{field: "x"})
    assert reg.show_image(admin(), img.id).to_dict() == img.to_dict()


def test_replace_or_remove_missing_property_is_an_error(reg):
    img = make_image(reg)
    with pytest.raises(ConflictError):
        reg.update_image(admin(), img.id, patch("replace", "nope", "1"))
    with pytest.raises(ConflictError):
        reg.update_image(admin(), img.id, patch("remove", "nope"))
    with pytest.raises(ForbiddenError):
        reg.update_image(admin(), img.id, patch("remove", "name"))


RULES = r"""
[^secret_]
create = cloudImages:admin
read = cloudImages:admin
update = cloudImages:admin
delete = !

[^open_]
create = @
read = @
update = @
delete = @

[^x_]
create = admin
read = @
update = admin
delete = admin
"""


def test_rules_file_sections_first_match_and_special_values(tmp_path):
    f = tmp_path / "rules.conf"
    f.write_text(RULES)
    r = Registry(str(tmp_path / "h"), protections=str(f))
    ci, ad = who(OWNER, "cloudImages:admin"), who(OWNER, "admin")
    img = make_image(r)
    r.update_image(ci, img.id, patch("add", "secret_k", "s"))
    assert r.show_image(ci, img.id).properties["secret_k"] == "s"
    assert "secret_k" not in r.show_image(ad, img.id).properties        # read: hidden
    assert "secret_k" not in r.show_image(ad, img.id).to_dict()
    with pytest.raises(ForbiddenError):
        r.update_image(ci, img.id, patch("remove", "secret_k"))          # '!'
    r.update_image(ad, img.id, patch("add", "open_k", "o"))              # '@'
    with pytest.raises(ForbiddenError):
        r.update_image(ci, img.id, patch("add", "x_k", "1"))             # not in list
    r.update_image(ad, img.id, patch("add", "x_k", "1"))
    with pytest.raises(ForbiddenError, match="unmatched"):
        r.update_image(ad, img.id, patch("add", "unmatched", "1"))       # no section: denied
    r.close()


def test_protections_match_glance_semantics_directly():
    p = PropertyProtections(RULES)
    ci = Caller(OWNER, frozenset({"cloudImages:admin"}))
    nobody = Caller(OWNER, frozenset())
    assert p.allowed(nobody, "open_z", "delete")       # '@' includes a caller without roles
    assert not p.allowed(ci, "secret_z", "delete")
    assert p.allowed(ci, "secret_z", "read") and not p.allowed(nobody, "secret_z", "read")
    assert not p.allowed(ci, "zzz", "read")


@pytest.mark.parametrize("text", [
    "[^a]\ncreate = @\nread = @\nupdate = @\n",                     # missing delete
    "[(]\ncreate = @\nread = @\nupdate = @\ndelete = @\n",          # bad regex
    "[^a]\ncreate = @,admin\nread = @\nupdate = @\ndelete = @\n",   # '@' mixed
    "[^a]\ncreate = @\nread = @\nupdate = @\ndelete = @\nfrob = @\n",
    "not an ini file",
])
def test_bad_rules_files_are_rejected(text):
    with pytest.raises(InvalidInputError):
        PropertyProtections(text)


def test_rules_file_found_in_data_dir_or_env(tmp_path, monkeypatch):
    home = tmp_path / "h"
    home.mkdir()
    (home / "property-protections.conf").write_text("[.*]\ncreate = !\nread = @\nupdate = !\ndelete = !\n")
    r = Registry(str(home))
    with pytest.raises(ForbiddenError):
        r.create_image(admin(), os_distro="x")
    r.close()
    env_rules = tmp_path / "env.conf"
    env_rules.write_text("[.*]\ncreate = @\nread = @\nupdate = @\ndelete = @\n")
    monkeypatch.setenv("VHDKIT_PROPERTY_PROTECTIONS", str(env_rules))
    r = Registry(str(home))
    assert r.create_image(who(OWNER, "cloudImages:creator"), **{"com.rackspace.x": "1"}).properties
    r.close()


def test_default_rules_read_as_configparser_reads_them():
    """The default rules are split without configparser (start-up); the same
    text given as a file's (a copy, so it goes through configparser) gives the
    same rules."""
    from vhdkit.registry import DEFAULT_RULES
    copy = "".join(list(DEFAULT_RULES))
    assert copy is not DEFAULT_RULES
    rules = lambda p: [(rx.pattern, perms) for rx, perms in p.rules]  # noqa: E731
    assert rules(PropertyProtections()) == rules(PropertyProtections(copy, source="x.conf"))
