"""Server settings: limits and timeouts, from the environment so that every
uvicorn worker process sees the same values (``vhdkit serve`` sets them)."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Mapping, Optional

from ..registry.db import DATABASE_URL_ENV

#: the interoperable import methods this server implements (api/imports.py)
IMPORT_METHODS = ("glance-direct", "web-download")


@dataclass(frozen=True)
class Settings:
    data_dir: Optional[str] = None       # VHDKIT_HOME (the registry's default when None)
    database_url: Optional[str] = None   # postgresql://... (None: SQLite in data_dir); see registry/db.py
    max_json_body: int = 64 * 1024        # bytes of a JSON request body
    max_json_depth: int = 16              # nesting of arrays/objects in a JSON body
    max_image_size: int = 1 << 40         # bytes of uploaded image data (Glance's image_size_cap)
    upload_idle_timeout: float = 60.0     # seconds without a byte of upload data -> give up
    upload_min_rate: int = 1024           # bytes/s an upload must average ...
    upload_rate_grace: float = 60.0       # ... once it has run this many seconds
    chunk_size: int = 1 << 20             # bytes per streamed download chunk
    # interoperable image import (Images API 2.6): the methods offered, and
    # the filter of web-download URLs (see api/webdownload.py): comma lists,
    # an allow list (when set) replaces the deny list beside it
    import_methods: str = "glance-direct,web-download"
    import_allowed_schemes: str = "http,https"
    import_disallowed_schemes: str = ""
    import_allowed_hosts: str = ""        # names, addresses, networks; may be private (explicitly allowed)
    import_disallowed_hosts: str = ""
    import_allowed_ports: str = "80,443"
    import_disallowed_ports: str = ""
    import_slots: int = 4                 # web-downloads running at once per process (503 beyond)
    # ---- identity (vhdkit/api/auth.py; README "Identity") ----
    auth: str = "headers"                 # "headers" (trusted upstream) or "keystone" (validate X-Auth-Token)
    keystone_url: Optional[str] = None    # Keystone v3 auth URL, e.g. http://keystone:5000/v3
    keystone_public_url: Optional[str] = None  # named in 401s' WWW-Authenticate (default: keystone_url)
    keystone_user: Optional[str] = None   # the service user that validates tokens ...
    keystone_password: Optional[str] = None    # ... its password (environment only, never a flag)
    keystone_project: str = "service"     # ... and the project it is scoped to
    keystone_user_domain: str = "Default"
    keystone_project_domain: str = "Default"
    keystone_cache_seconds: float = 300.0  # a validated token is trusted this long at most (or until it expires)
    keystone_cache_size: int = 10000      # tokens remembered per process
    keystone_timeout: float = 30.0        # seconds for one call to Keystone
    keystone_role_map: str = "member=cloudImages:admin,reader=cloudImages:observer"  # keystone role=vhdkit role
    keystone_operator_roles: str = "admin"  # on the admin project: set owner, make public, see all images

    ENV = {
        "data_dir": "VHDKIT_HOME",
        "database_url": DATABASE_URL_ENV,
        "max_json_body": "VHDKIT_API_MAX_JSON_BODY",
        "max_json_depth": "VHDKIT_API_MAX_JSON_DEPTH",
        "max_image_size": "VHDKIT_API_MAX_IMAGE_SIZE",
        "upload_idle_timeout": "VHDKIT_API_UPLOAD_IDLE_TIMEOUT",
        "upload_min_rate": "VHDKIT_API_UPLOAD_MIN_RATE",
        "upload_rate_grace": "VHDKIT_API_UPLOAD_RATE_GRACE",
        "chunk_size": "VHDKIT_API_CHUNK_SIZE",
        "import_methods": "VHDKIT_IMPORT_METHODS",
        "import_allowed_schemes": "VHDKIT_IMPORT_ALLOWED_SCHEMES",
        "import_disallowed_schemes": "VHDKIT_IMPORT_DISALLOWED_SCHEMES",
        "import_allowed_hosts": "VHDKIT_IMPORT_ALLOWED_HOSTS",
        "import_disallowed_hosts": "VHDKIT_IMPORT_DISALLOWED_HOSTS",
        "import_allowed_ports": "VHDKIT_IMPORT_ALLOWED_PORTS",
        "import_disallowed_ports": "VHDKIT_IMPORT_DISALLOWED_PORTS",
        "import_slots": "VHDKIT_IMPORT_SLOTS",
        "auth": "VHDKIT_AUTH",
        "keystone_url": "VHDKIT_KEYSTONE_URL",
        "keystone_public_url": "VHDKIT_KEYSTONE_PUBLIC_URL",
        "keystone_user": "VHDKIT_KEYSTONE_USER",
        "keystone_password": "VHDKIT_KEYSTONE_PASSWORD",
        "keystone_project": "VHDKIT_KEYSTONE_PROJECT",
        "keystone_user_domain": "VHDKIT_KEYSTONE_USER_DOMAIN",
        "keystone_project_domain": "VHDKIT_KEYSTONE_PROJECT_DOMAIN",
        "keystone_cache_seconds": "VHDKIT_KEYSTONE_CACHE_SECONDS",
        "keystone_cache_size": "VHDKIT_KEYSTONE_CACHE_SIZE",
        "keystone_timeout": "VHDKIT_KEYSTONE_TIMEOUT",
        "keystone_role_map": "VHDKIT_KEYSTONE_ROLE_MAP",
        "keystone_operator_roles": "VHDKIT_KEYSTONE_OPERATOR_ROLES",
    }

    def too_slow(self, received: int, elapsed: float) -> bool:
        """Whether a transfer that moved ``received`` bytes in ``elapsed``
        seconds is an endless trickle to cut off (uploads, web-downloads)."""
        return elapsed > self.upload_rate_grace and received < self.upload_min_rate * elapsed

    def enabled_import_methods(self) -> list:
        """The import methods offered."""
        return [m for m in (x.strip() for x in self.import_methods.split(",")) if m in IMPORT_METHODS]

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "Settings":
        env = os.environ if env is None else env
        kw = {}
        for f in fields(cls):
            raw = env.get(cls.ENV[f.name])
            if raw is None or raw == "":
                continue
            try:
                kw[f.name] = raw if f.default is None else type(f.default)(raw)
            except ValueError:
                raise ValueError(f"{cls.ENV[f.name]}: {raw!r} is not a number") from None
        return cls(**kw)

    def to_env(self) -> dict:
        return {self.ENV[f.name]: str(getattr(self, f.name))
                for f in fields(self) if getattr(self, f.name) is not None}
