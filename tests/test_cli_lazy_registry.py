"""`vhdkit image show|download` import only what reading one image needs (their
start-up is most of a download's fixed cost): no list-query or rules-file
parsing, no hashing, no format layer, no object store, no HTTP API.  The
modules left out are still loaded when a command does need them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_registry import OWNER, admin, make_image
from vhdkit.registry import Registry

ROOT = Path(__file__).resolve().parent.parent

#: never needed to show or download one image (a local blob, default rules)
NOT_NEEDED = ("vhdkit.registry.query", "vhdkit.registry.protections", "configparser", "csv", "hashlib",
              "vhdkit.vhd", "vhdkit.native", "vhdkit._native", "vhdkit.api", "vhdkit.store.swift",
              "vhdkit.pack.segments", "vhdkit.tasks.pipeline", "vhdkit.remote", "swiftclient", "starlette", "httpx",
              "vhdkit.cli.packaging", "vhdkit.cli.convert", "vhdkit.cli.tasks", "vhdkit.cli.serve",
              "psycopg", "sqlalchemy", "alembic")

_RUN = ("import sys\nfrom vhdkit.cli import main\n"
        "try:\n    main(sys.argv[1:], prog_name='vhdkit')\nexcept SystemExit as e:\n    code = e.code\n"
        "mods = sorted(sys.modules)\nimport json\nprint(json.dumps(mods), file=sys.stderr)\nsys.exit(code)\n")


def _run(home: Path, *args: str, account: str = OWNER):
    env = dict(os.environ, VHDKIT_HOME=str(home), VHDKIT_ACCOUNT=account, VHDKIT_ROLES="cloudImages:admin")
    env.pop("VHDKIT_PROPERTY_PROTECTIONS", None)
    r = subprocess.run([sys.executable, "-c", _RUN, *args], capture_output=True, text=True, cwd=ROOT, env=env)
    *msgs, mods = r.stderr.strip().splitlines()
    return r, set(json.loads(mods)), "\n".join(msgs)


@pytest.fixture
def home(tmp_path) -> Path:
    h = tmp_path / "home"
    with Registry(str(h)):
        pass
    return h


def _image(home: Path, data: bytes, **fields):
    with Registry(str(home)) as reg:
        return make_image(reg, data=data, **fields)


def test_download_to_a_file_loads_none_of_the_rest(home, tmp_path):
    data = os.urandom(3 << 20) + b"tail"
    img = _image(home, data)
    out = tmp_path / "out.bin"
    r, mods, err = _run(home, "image", "download", img.id, "--output", str(out), "--no-sync")
    assert r.returncode == 0, err
    assert out.read_bytes() == data
    assert f"wrote {len(data)} bytes" in r.stdout
    assert "vhdkit.registry.core" in mods and "vhdkit.cli.registry" in mods
    assert sorted(m for m in NOT_NEEDED + ("json",) if m in mods) == []   # it prints no JSON


def test_show_loads_none_of_the_rest(home):
    img = _image(home, b"x" * 4096, name="plain")
    r, mods, err = _run(home, "image", "show", img.id, "--json")
    assert r.returncode == 0, err
    shown = json.loads(r.stdout)
    assert (shown["id"], shown["name"], shown["size"]) == (img.id, "plain", 4096)
    assert sorted(m for m in NOT_NEEDED if m in mods) == []


def test_a_property_loads_the_default_rules_and_they_apply(home):
    with Registry(str(home)) as reg:
        img = make_image(reg, name="p")
        reg.update_image(admin(), img.id, [{"op": "add", "path": "/os_distro", "value": "ubuntu"}])
        svc = reg.show_image(admin(), img.id)
        assert svc.properties == {"os_distro": "ubuntu"}
    r, mods, err = _run(home, "image", "show", img.id, "--json")
    assert r.returncode == 0, err
    assert json.loads(r.stdout)["os_distro"] == "ubuntu"
    assert "vhdkit.registry.protections" in mods
    # the default rules are in force: only the service may create com.rackspace* properties
    r, _, err = _run(home, "image", "update", img.id, "--property", "com.rackspace__1__x=y")
    assert r.returncode == 1 and "property 'com.rackspace__1__x' is protected" in err


def test_a_rules_file_is_still_read_when_the_registry_opens(home):
    img = _image(home, b"y" * 512)
    (home / "property-protections.conf").write_text("[not a valid rules file\n")
    r, mods, err = _run(home, "image", "show", img.id)
    assert r.returncode == 1 and "property protections file" in err, err
    assert "vhdkit.registry.protections" in mods


def test_lazy_names_of_the_package_resolve():
    import vhdkit.registry as R
    from vhdkit.registry import protections, query

    assert R.PropertyProtections is protections.PropertyProtections
    assert R.DEFAULT_RULES is protections.DEFAULT_RULES
    assert (R.DEFAULT_LIMIT, R.MAX_LIMIT) == (query.DEFAULT_LIMIT, query.MAX_LIMIT)
    assert R.parse_list_params is query.parse_list_params
    for name in R.__all__:
        assert getattr(R, name) is not None, name
    with pytest.raises(AttributeError):
        R.no_such_name  # noqa: B018
