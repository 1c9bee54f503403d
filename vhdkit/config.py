"""vhdkit's settings: the one table of them, and the one place that reads them.

Every setting is a field of :class:`Config` with its environment variable,
its default and one line of help (the table ``docs/configuration.md`` shows,
checked against this class by ``tests/test_config.py``).  :func:`load` builds
the effective values once per process, each from the first of

1. a flag (what a command line or a caller passes as ``flags``),
2. the environment (``VHDKIT_*``),
3. the configuration file: ``$VHDKIT_CONFIG``, else
   ``$XDG_CONFIG_HOME/vhdkit/config.toml`` when it exists (TOML, the
   field names as keys: ``data_dir = "/srv/vhdkit"``),
4. the default,

and remembers which one each came from (``vhdkit config show``).  Code below
the surfaces receives a :class:`Config` (or the values it needs) as an
argument; nothing else in the package reads ``VHDKIT_*`` from the environment.
The native core takes its options as arguments (``vhdkit.native``); test-only
hooks live in :mod:`vhdkit.testhooks`.

Start-up cost: this module imports only ``os`` and ``typing`` and builds no
code at import (no dataclass machinery); ``tomllib`` is imported only when a
configuration file exists.
"""
from __future__ import annotations

import os

TYPE_CHECKING = False   # typing is not imported at run time (every registry command loads this module)
if TYPE_CHECKING:
    from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

#: the interoperable import methods the API server implements (api/imports.py)
IMPORT_METHODS = ("glance-direct", "web-download")

#: the environment variable naming the configuration file
CONFIG_ENV = "VHDKIT_CONFIG"

#: where a setting's effective value came from
SOURCES = ("default", "file", "env", "flag")

MASK = "********"


class Setting:
    """One row of the table: a setting's default (its type is the default's,
    a string when the default is None), environment variable, help, whether
    it is a secret, and its group.  Read on the class, a setting is its
    default (``Config.lease_seconds``); on a :class:`Config`, its value."""

    __slots__ = ("name", "default", "env", "help", "secret", "group")

    def __init__(self, default: Any, env: str, help: str, *, secret: bool = False, group: str) -> None:
        self.default, self.env, self.help, self.secret, self.group = default, env, help, secret, group
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        _TABLE.append(self)

    def __get__(self, obj: Any, owner: Optional[type] = None) -> Any:
        return self.default   # only reached on the class: an instance holds every value itself


_TABLE: List[Setting] = []
_s = Setting


_CLI, _STORE, _BLOBS, _PIPE, _CORE = "data and identity", "object store", "image data", "tasks", "native core"
_API, _IMPORT, _KS = "HTTP API", "web-download import", "Keystone identity"


class Config:
    """The effective settings (see the module doc), immutable.  Construct it
    with keywords (the rest keep their defaults) or through :func:`load`."""

    # ---- where the data lives and who the command-line caller is
    data_dir: Optional[str] = _s(None, "VHDKIT_HOME", "data directory: registry, blobs, objects/, work/ "
                                 "(default $XDG_DATA_HOME/vhdkit, ~/.local/share/vhdkit)", group=_CLI)
    account: Optional[str] = _s(None, "VHDKIT_ACCOUNT", "the command line's account (tenant) id", group=_CLI)
    roles: Optional[str] = _s(None, "VHDKIT_ROLES", "the command line's roles, comma-separated", group=_CLI)
    database_url: Optional[str] = _s(None, "VHDKIT_DATABASE_URL", "the registry database (unset: SQLite "
                                     "registry.db in the data directory)", secret=True, group=_CLI)
    property_protections: Optional[str] = _s(None, "VHDKIT_PROPERTY_PROTECTIONS", "property protection rules "
                                             "file (default DATA/property-protections.conf if present, else "
                                             "the built-in rules)", group=_CLI)
    # ---- customer containers
    store: str = _s("", "VHDKIT_STORE", "customer object store: empty for DATA/objects, dir:PATH, or "
                    "swift+http(s)://PROXY", group=_STORE)
    swift_auth_url: Optional[str] = _s(None, "VHDKIT_SWIFT_AUTH_URL", "Swift auth v1 URL (default "
                                       "PROXY/auth/v1.0 of the store's URL)", group=_STORE)
    swift_user: Optional[str] = _s(None, "VHDKIT_SWIFT_USER", "Swift reseller-admin user", group=_STORE)
    swift_key: Optional[str] = _s(None, "VHDKIT_SWIFT_KEY", "Swift user's key", secret=True, group=_STORE)
    swift_parallel: int = _s(3, "VHDKIT_SWIFT_PARALLEL", "segment uploads in flight at once (1..16)",
                             group=_STORE)
    swift_spool_dir: Optional[str] = _s(None, "VHDKIT_SWIFT_SPOOL_DIR", "directory of upload spool files "
                                        "(default the system's temporary directory)", group=_STORE)
    # ---- image data
    blob_store: str = _s("local", "VHDKIT_BLOB_STORE", "where image data lives: local (DATA/blobs), swift, or "
                         "swift+http(s)://PROXY", group=_BLOBS)
    blob_account: str = _s("vhdkit-service", "VHDKIT_BLOB_ACCOUNT", "Swift account of image data",
                           group=_BLOBS)
    blob_container: str = _s("images", "VHDKIT_BLOB_CONTAINER", "Swift container of image data",
                             group=_BLOBS)
    blob_segment_size: int = _s(200 << 20, "VHDKIT_BLOB_SEGMENT_SIZE", "bytes per Swift segment of image "
                                "data", group=_BLOBS)
    # ---- import/export tasks
    max_virtual_size: int = _s(40 * 10**9, "VHDKIT_MAX_VIRTUAL_SIZE", "largest virtual size an import "
                               "accepts, bytes", group=_PIPE)
    max_file_size: int = _s(40 * 10**9, "VHDKIT_MAX_FILE_SIZE", "largest VHD file an import accepts, bytes",
                            group=_PIPE)
    segment_size: int = _s(200 << 20, "VHDKIT_SEGMENT_SIZE", "bytes per segment of an export", group=_PIPE)
    lease_seconds: float = _s(60.0, "VHDKIT_LEASE_SECONDS", "a worker's lease on its task", group=_PIPE)
    heartbeat_seconds: float = _s(5.0, "VHDKIT_HEARTBEAT_SECONDS", "how often a worker renews its lease",
                                  group=_PIPE)
    # ---- the native core
    io_threads: int = _s(0, "VHDKIT_WORKERS", "I/O threads of a seekable conversion (1..8; 0: one per CPU, "
                         "2..4)", group=_CORE)
    # ---- the HTTP API (vhdkit serve)
    max_json_body: int = _s(64 * 1024, "VHDKIT_API_MAX_JSON_BODY", "bytes of a JSON request body", group=_API)
    max_json_depth: int = _s(16, "VHDKIT_API_MAX_JSON_DEPTH", "nesting of arrays/objects in a JSON body",
                             group=_API)
    max_image_size: int = _s(1 << 40, "VHDKIT_API_MAX_IMAGE_SIZE", "bytes of uploaded image data (Glance's "
                             "image_size_cap)", group=_API)
    max_request_head: int = _s(64 * 1024, "VHDKIT_API_MAX_REQUEST_HEAD", "bytes of request line plus headers "
                               "(414/431 beyond; at least 1024)", group=_API)
    upload_idle_timeout: float = _s(60.0, "VHDKIT_API_UPLOAD_IDLE_TIMEOUT", "seconds without a byte of upload "
                                    "data before the upload is cut off", group=_API)
    upload_min_rate: int = _s(1024, "VHDKIT_API_UPLOAD_MIN_RATE", "bytes/s an upload must average ...",
                              group=_API)
    upload_rate_grace: float = _s(60.0, "VHDKIT_API_UPLOAD_RATE_GRACE", "... once it has run this many seconds",
                                  group=_API)
    chunk_size: int = _s(1 << 20, "VHDKIT_API_CHUNK_SIZE", "bytes per streamed download chunk", group=_API)
    upload_lease: float = _s(60.0, "VHDKIT_UPLOAD_LEASE_SECONDS", "seconds of an upload's lease on its image "
                             "(renewed every third; 1..3600): how long a dead host's upload blocks it", group=_API)
    # ---- interoperable import: the methods offered and the web-download URL
    # filter (api/webdownload.py); comma lists, an allow list (when set)
    # replaces the deny list beside it
    import_methods: str = _s("glance-direct,web-download", "VHDKIT_IMPORT_METHODS", "import methods offered",
                             group=_IMPORT)
    import_allowed_schemes: str = _s("http,https", "VHDKIT_IMPORT_ALLOWED_SCHEMES", "URL schemes web-download "
                                     "may fetch", group=_IMPORT)
    import_disallowed_schemes: str = _s("", "VHDKIT_IMPORT_DISALLOWED_SCHEMES", "URL schemes refused",
                                        group=_IMPORT)
    import_allowed_hosts: str = _s("", "VHDKIT_IMPORT_ALLOWED_HOSTS", "hosts (names, addresses, networks) "
                                   "allowed, private ones included (empty: any global address)", group=_IMPORT)
    import_disallowed_hosts: str = _s("", "VHDKIT_IMPORT_DISALLOWED_HOSTS", "hosts refused", group=_IMPORT)
    import_allowed_ports: str = _s("80,443", "VHDKIT_IMPORT_ALLOWED_PORTS", "ports allowed", group=_IMPORT)
    import_disallowed_ports: str = _s("", "VHDKIT_IMPORT_DISALLOWED_PORTS", "ports refused", group=_IMPORT)
    import_slots: int = _s(4, "VHDKIT_IMPORT_SLOTS", "web-downloads one server process runs at once (503 "
                           "beyond)", group=_IMPORT)
    # ---- identity (vhdkit/api/auth.py; README "Identity")
    auth: str = _s("headers", "VHDKIT_AUTH", "headers (trusted upstream) or keystone (validate X-Auth-Token)",
                   group=_KS)
    keystone_url: Optional[str] = _s(None, "VHDKIT_KEYSTONE_URL", "Keystone v3 auth URL (required for "
                                     "keystone)", group=_KS)
    keystone_public_url: Optional[str] = _s(None, "VHDKIT_KEYSTONE_PUBLIC_URL", "named in 401s' "
                                            "WWW-Authenticate (default keystone_url)", group=_KS)
    keystone_user: Optional[str] = _s(None, "VHDKIT_KEYSTONE_USER", "service user that validates tokens "
                                      "(required for keystone)", group=_KS)
    keystone_password: Optional[str] = _s(None, "VHDKIT_KEYSTONE_PASSWORD", "its password (environment or "
                                          "file only, never a flag)", secret=True, group=_KS)
    keystone_project: str = _s("service", "VHDKIT_KEYSTONE_PROJECT", "project of the service user", group=_KS)
    keystone_user_domain: str = _s("Default", "VHDKIT_KEYSTONE_USER_DOMAIN", "domain of the service user",
                                   group=_KS)
    keystone_project_domain: str = _s("Default", "VHDKIT_KEYSTONE_PROJECT_DOMAIN", "domain of its project",
                                      group=_KS)
    keystone_cache_seconds: float = _s(300.0, "VHDKIT_KEYSTONE_CACHE_SECONDS", "a validated token is trusted "
                                       "this long at most (or until it expires)", group=_KS)
    keystone_cache_size: int = _s(10000, "VHDKIT_KEYSTONE_CACHE_SIZE", "tokens remembered per server process",
                                  group=_KS)
    keystone_timeout: float = _s(30.0, "VHDKIT_KEYSTONE_TIMEOUT", "seconds for one call to Keystone", group=_KS)
    keystone_role_map: str = _s("member=cloudImages:admin,reader=cloudImages:observer",
                                "VHDKIT_KEYSTONE_ROLE_MAP", "Keystone role=vhdkit role, comma-separated",
                                group=_KS)
    keystone_operator_roles: str = _s("admin", "VHDKIT_KEYSTONE_OPERATOR_ROLES", "roles that on the admin "
                                      "project set owners, make images public, see all images", group=_KS)

    #: where each value came from (name -> one of SOURCES); not a setting
    sources: Mapping[str, str]

    def __init__(self, *, sources: Optional[Mapping[str, str]] = None, **values: Any) -> None:
        unknown = values.keys() - _BY_NAME.keys()
        if unknown:
            raise TypeError(f"Config() got unknown settings {sorted(unknown)}")
        d = self.__dict__
        for s in _TABLE:
            d[s.name] = values.get(s.name, s.default)
        d["sources"] = dict(sources or {})

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Config is immutable: use with_flags()")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        return all(getattr(self, s.name) == getattr(other, s.name) for s in _TABLE)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "Config(" + ", ".join(f"{n}={v['value']!r}" for n, v in self.shown().items()) + ")"

    # ------------------------------------------------------------ building
    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "Config":
        """The settings of ``env`` (default ``os.environ``) and the file it names."""
        return load(env=env)

    def with_flags(self, **flags: Any) -> "Config":
        """These settings with the flags given (None: not given) on top."""
        given = {k: _convert(k, v, f"--{k.replace('_', '-')}") for k, v in flags.items() if v is not None}
        if not given:
            return self
        values = {s.name: getattr(self, s.name) for s in _TABLE}
        return Config(**{**values, **given}, sources={**self.sources, **{k: "flag" for k in given}})

    # ------------------------------------------------------------ reading
    def source(self, name: str) -> str:
        return self.sources.get(name, "default")

    def shown(self) -> Dict[str, Dict[str, Any]]:
        """Every setting with its value (secrets masked), source and variable."""
        out = {}
        for s in _TABLE:
            v = getattr(self, s.name)
            if s.secret and v:
                v = MASK
            out[s.name] = {"value": v, "source": self.source(s.name), "env": s.env}
        return out

    # ---- derived views, each parsed here only
    def object_store_kind(self) -> Tuple[str, Optional[str]]:
        """``("local", None)`` for DATA/objects, ``("dir", PATH)`` or ``("swift", PROXY_URL)``."""
        spec = self.store
        if not spec:
            return "local", None
        if spec.startswith("swift+"):
            from urllib.parse import urlsplit

            u = urlsplit(spec[len("swift+"):])
            if u.scheme not in ("http", "https") or not u.netloc:
                raise _invalid(f"VHDKIT_STORE {spec!r} is not swift+http(s)://HOST[:PORT]")
            return "swift", spec[len("swift+"):]
        if spec.startswith(("dir:", "file:")):
            return "dir", spec.split(":", 1)[1]
        raise _invalid(f"VHDKIT_STORE {spec!r}: expected swift+http(s)://… or dir:PATH")

    def blobs_in_swift(self) -> bool:
        """Whether image data lives in Swift (``blob_store``)."""
        spec = self.blob_store
        if spec in ("", "local", "dir"):
            return False
        if spec == "swift" or spec.startswith("swift+"):
            return True
        raise _invalid(f"VHDKIT_BLOB_STORE {spec!r}: expected 'local', 'swift' or swift+http(s)://PROXY")

    def swift_auth(self, proxy: Optional[str] = None) -> str:
        """The Swift auth URL: ``swift_auth_url``, else PROXY/auth/v1.0 of ``proxy``
        or of a swift+ store URL."""
        if self.swift_auth_url:
            return self.swift_auth_url
        if proxy is None and self.store.startswith("swift+"):
            proxy = self.store[len("swift+"):]
        if not proxy:
            raise _invalid("VHDKIT_STORE is not a swift+http(s):// URL and VHDKIT_SWIFT_AUTH_URL is not set")
        return proxy.rstrip("/") + "/auth/v1.0"

    # ---- the HTTP API's helpers
    def too_slow(self, received: int, elapsed: float) -> bool:
        """Whether a transfer that moved ``received`` bytes in ``elapsed``
        seconds is an endless trickle to cut off (uploads, web-downloads)."""
        return elapsed > self.upload_rate_grace and received < self.upload_min_rate * elapsed

    def enabled_import_methods(self) -> list:
        """The import methods offered."""
        return [m for m in (x.strip() for x in self.import_methods.split(",")) if m in IMPORT_METHODS]


def settings() -> Iterator[Setting]:
    """The table: every :class:`Setting`, in the order of :class:`Config`."""
    return iter(_TABLE)


_BY_NAME: Dict[str, Setting] = {s.name: s for s in _TABLE}
#: setting name -> its environment variable
ENV: Dict[str, str] = {s.name: s.env for s in _TABLE}


def env_name(name: str) -> str:
    return ENV[name]


def _invalid(message: str) -> Exception:
    from .errors import InvalidInputError

    return InvalidInputError(message)


def _convert(name: str, raw: Any, where: str) -> Any:
    """``raw`` (a string from the environment or a flag, or a TOML value) as
    the setting's type: the type of its default, a string when that is None."""
    s = _BY_NAME.get(name)
    if s is None:
        raise _invalid(f"{where}: no setting {name!r}")
    kind = str if s.default is None else type(s.default)
    if isinstance(raw, kind) and not isinstance(raw, bool):
        return raw
    if kind is str:
        return str(raw)
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise _invalid(f"{where}: {raw!r} is not a number") from None


def default_data_dir(env: Optional[Mapping[str, str]] = None) -> str:
    """The per-user ``$XDG_DATA_HOME/vhdkit`` (``~/.local/share/vhdkit`` when
    XDG_DATA_HOME is unset or relative, as the XDG base directory specification
    says) -- never the current directory, so every command run anywhere by one
    user finds the same registry."""
    env = os.environ if env is None else env
    xdg = env.get("XDG_DATA_HOME", "")
    if not os.path.isabs(xdg):
        xdg = os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(xdg, "vhdkit")


def config_file(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The configuration file to read: ``$VHDKIT_CONFIG`` (which must exist),
    else ``$XDG_CONFIG_HOME/vhdkit/config.toml`` if it exists, else None."""
    env = os.environ if env is None else env
    named = env.get(CONFIG_ENV)
    if named:
        return named
    xdg = env.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(xdg):
        xdg = os.path.join(os.path.expanduser("~"), ".config")
    p = os.path.join(xdg, "vhdkit", "config.toml")
    return p if os.path.isfile(p) else None


def _read_file(path: str) -> Dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise _invalid(f"configuration file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise _invalid(f"configuration file {path}: {exc}") from None
    return {k: _convert(k, v, f"{path}: {k}") for k, v in data.items()}


def load(env: Optional[Mapping[str, str]] = None, flags: Optional[Mapping[str, Any]] = None) -> Config:
    """The effective settings: flags over the environment over the file over
    the defaults (see the module doc).  ``data_dir`` is always filled in."""
    env = os.environ if env is None else env
    values: Dict[str, Any] = {}
    sources: Dict[str, str] = {}
    path = config_file(env)
    if path:
        for k, v in _read_file(path).items():
            values[k], sources[k] = v, "file"
    for name, var in ENV.items():
        raw = env.get(var)
        if raw:
            values[name], sources[name] = _convert(name, raw, var), "env"
    if not values.get("data_dir"):
        values["data_dir"] = default_data_dir(env)
    cfg = Config(**values, sources=sources)
    return cfg.with_flags(**(flags or {}))


def data_home(explicit: Optional[Any] = None, cfg: Optional[Config] = None) -> str:
    """``explicit`` if given, else the data directory of ``cfg`` (default: the
    settings of this process's environment and file, :func:`load`)."""
    if explicit:
        return os.fspath(explicit)
    return (cfg or load()).data_dir  # type: ignore[return-value]


def markdown_table() -> str:
    """The table of docs/configuration.md (tests/test_config.py keeps them equal)."""
    rows = ["| setting (file key) | environment | default | meaning |", "|---|---|---|---|"]
    group = None
    for s in _TABLE:
        if s.group != group:
            group = s.group
            rows.append(f"| **{group}** | | | |")
        d = "" if s.default in (None, "") else f"`{s.default}`"
        secret = " (secret: masked by `config show`)" if s.secret else ""
        rows.append(f"| `{s.name}` | `{s.env}` | {d} | {s.help}{secret} |")
    return "\n".join(rows) + "\n"
