"""A real Keystone for the tests (scripts/keystone_aio.py), started once per
session, and a `vhdkit serve --auth keystone` in its catalog.

A missing Keystone installation is a failure, not a skip: scripts/setup makes
``.venv-keystone``."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest

from helpers_api import ApiServer
from helpers_swift import _read_env as read_env

ROOT = Path(__file__).resolve().parent.parent
AIO = ROOT / "scripts" / "keystone_aio.py"


def _aio(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(AIO), *args], capture_output=True, text=True, timeout=timeout)


class Keystone:
    """A running Keystone: its directory, env (admin ``OS_*`` + ``VHDKIT_*``) and
    an admin openstacksdk connection to make projects, users and roles."""

    def __init__(self, d: Path, env: Dict[str, str]):
        self.dir, self.env = d, env
        self.auth_url = env["OS_AUTH_URL"]
        self._admin = None

    @property
    def admin(self):
        if self._admin is None:
            self._admin = self.connect("admin", self.env["OS_PASSWORD"], "admin")
        return self._admin

    def connect(self, user: str, password: str, project: str):
        """openstacksdk, password auth: token and catalog from Keystone."""
        import openstack
        return openstack.connect(auth_url=self.auth_url, username=user, password=password, project_name=project,
                                 user_domain_name="Default", project_domain_name="Default",
                                 region_name=self.env["OS_REGION_NAME"], identity_api_version="3",
                                 load_yaml_config=False, load_envvars=False)

    def user(self, roles, project: Optional[str] = None) -> "User":
        """A new user with ``roles`` on ``project`` (a new project unless named)."""
        ident = self.admin.identity
        name = "u-" + secrets.token_hex(4)
        proj = ident.find_project(project) if project else None
        if proj is None:
            proj = ident.create_project(name=project or "p-" + secrets.token_hex(4), domain_id="default")
        password = secrets.token_urlsafe(12)
        u = ident.create_user(name=name, password=password, domain_id="default", default_project_id=proj.id)
        for role in roles:
            r = ident.find_role(role) or ident.create_role(name=role)
            ident.assign_project_role_to_user(proj, u, r)
        return User(self, name, password, proj.name, proj.id)

    def image_endpoint(self, url: str) -> None:
        r = _aio("endpoint", url, "--dir", str(self.dir))
        if r.returncode != 0:
            pytest.fail(f"could not register the image endpoint: {r.stderr[-3000:]}")


class User:
    def __init__(self, ks: Keystone, name: str, password: str, project: str, project_id: str):
        self.ks, self.name, self.password, self.project, self.project_id = ks, name, password, project, project_id

    def os_env(self) -> Dict[str, str]:
        """OS_* variables for the openstack/glance CLIs as this user."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env.update({k: v for k, v in self.ks.env.items() if k.startswith("OS_")})
        env.update(OS_USERNAME=self.name, OS_PASSWORD=self.password, OS_PROJECT_NAME=self.project)
        return env

    def sdk(self):
        return self.ks.connect(self.name, self.password, self.project)

    def token(self) -> str:
        return self.sdk().session.get_token()


@pytest.fixture(scope="session")
def keystone(tmp_path_factory):
    d = tmp_path_factory.mktemp("keystone")
    r = _aio("start", "--dir", str(d))
    if r.returncode != 0:
        pytest.fail(f"could not start Keystone (scripts/keystone_aio.py): {r.stderr[-3000:]}")
    try:
        yield Keystone(d, read_env(Path(r.stdout.strip().splitlines()[-1])))
    finally:
        _aio("stop", "--dir", str(d), timeout=60)


def keystone_server(keystone: Keystone, workdir: Path, **env: str) -> ApiServer:
    """A started `vhdkit serve --auth keystone`, the catalog's image endpoint."""
    server_env = {k: v for k, v in keystone.env.items() if k.startswith("VHDKIT_")}
    server_env.update(env)
    server = ApiServer(workdir, env=server_env).start()
    keystone.image_endpoint(server.url)
    return server
