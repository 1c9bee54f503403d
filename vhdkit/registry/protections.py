"""Property protections: a rules file in the format of Glance's
``property-protections`` *roles* file.

Each section is a regular expression matched (``re.search``, as Glance does)
against the property name; the first matching section (file order) wins.  Keys
``create``, ``read``, ``update``, ``delete`` hold comma-separated role lists;
``@`` means every role (and no role), ``!`` means nobody.  A property that
matches no section is denied for every operation (Glance's behaviour), so
files normally end with a ``[.*]`` catch-all.

Only extra (free-form) properties are subject to the rules; base fields have
their own rules (``name`` and the other writable base fields need the
``update_image`` permission; read-only base fields are never writable).
"""
from __future__ import annotations

import os
import re
from ..errors import ForbiddenError, InvalidInputError
from .rbac import ADMINS, SERVICE, Caller

TYPE_CHECKING = False   # typing is not imported at run time (start-up of `vhdkit image show`)
if TYPE_CHECKING:  # pragma: no cover
    from typing import Dict, FrozenSet, List, Optional, Tuple

OPERATIONS = ("create", "read", "update", "delete")

_ADMINS = ",".join(sorted(ADMINS) + [SERVICE])

#: The default rules: ``com.rackspace*`` properties are readable by everyone and
#: writable only by the service identity; every other extra property may be
#: created/updated/deleted by customer admins only (docs/rbac.md "Properties").
DEFAULT_RULES = f"""\
[^com\\.rackspace]
create = {SERVICE}
read = @
update = {SERVICE}
delete = {SERVICE}

[.*]
create = {_ADMINS}
read = @
update = {_ADMINS}
delete = {_ADMINS}
"""


EVERYONE = "@"
NOBODY = "!"


class _Sections(dict):
    """``{section: {key: value}}`` read as the parts of RawConfigParser that
    :class:`PropertyProtections` uses."""

    def sections(self) -> List[str]:
        return list(self)

    def options(self, section: str) -> List[str]:
        return list(self[section])

    def get(self, section: str, key: str, fallback=None):  # type: ignore[override]
        return self[section].get(key, fallback)


def _parse(text: str, source: str):
    """The rules text's sections.  :data:`DEFAULT_RULES` (our own text: one
    ``[section]`` or ``key = value`` per line) is split without configparser,
    which costs a registry command more start-up than the rest of its rules;
    any other text goes through configparser."""
    if text is DEFAULT_RULES:
        out = _Sections()
        for line in filter(None, text.splitlines()):
            if line.startswith("["):
                cur = out[line[1:-1]] = {}
            else:
                k, _, v = line.partition("=")
                cur[k.strip()] = v.strip()
        return out
    import configparser  # only here: a Registry parses rules on first use (see Registry.protections)

    cp = configparser.RawConfigParser(delimiters=("=",), interpolation=None)
    cp.optionxform = str  # type: ignore[assignment]
    try:
        cp.read_string(text, source=source)
    except configparser.Error as exc:
        raise InvalidInputError(f"property protections file {source}: {exc}") from None
    return cp


class PropertyProtections:
    """Parsed rules; ``allowed(caller, name, op)`` and ``check(...)``."""

    def __init__(self, text: str = DEFAULT_RULES, *, source: str = "<default>"):
        cp = _parse(text, source)
        self.source = source
        self.rules: List[Tuple[re.Pattern, Dict[str, Optional[FrozenSet[str]]]]] = []
        for section in cp.sections():
            try:
                rx = re.compile(section)
            except re.error as exc:
                raise InvalidInputError(
                    f"property protections file {source}: bad regular expression [{section}]: {exc}") from None
            perms: Dict[str, Optional[FrozenSet[str]]] = {}
            for op in OPERATIONS:
                raw = cp.get(section, op, fallback=None)
                if raw is None:
                    raise InvalidInputError(
                        f"property protections file {source}: section [{section}] lacks '{op}'")
                roles = [r.strip() for r in raw.split(",") if r.strip()]
                if (EVERYONE in roles or NOBODY in roles) and len(roles) > 1:
                    raise InvalidInputError(
                        f"property protections file {source}: [{section}] {op}: '@' and '!' stand alone")
                if roles == [EVERYONE]:
                    perms[op] = None          # everyone
                elif roles == [NOBODY] or not roles:
                    perms[op] = frozenset()   # nobody
                else:
                    perms[op] = frozenset(roles)
            unknown = set(cp.options(section)) - set(OPERATIONS)
            if unknown:
                raise InvalidInputError(
                    f"property protections file {source}: [{section}] unknown keys {sorted(unknown)}")
            self.rules.append((rx, perms))

    @classmethod
    def from_file(cls, path: "os.PathLike[str] | str") -> "PropertyProtections":
        with open(path, encoding="utf-8") as f:
            return cls(f.read(), source=str(path))

    def allowed(self, caller: Caller, name: str, op: str) -> bool:
        for rx, perms in self.rules:
            if rx.search(name):
                roles = perms[op]
                return roles is None or caller.has_any(roles)
        return False

    def check(self, caller: Caller, name: str, op: str) -> None:
        if not self.allowed(caller, name, op):
            verb = {"create": "create", "read": "read", "update": "update", "delete": "delete"}[op]
            raise ForbiddenError(f"property '{name}' is protected: your roles may not {verb} it")
