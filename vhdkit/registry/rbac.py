"""Who may do what: the roles and the operation matrix of docs/rbac.md.

:data:`MATRIX` is the one table.  :meth:`vhdkit.registry.Registry` enforces it
through :func:`require`, and the tests are generated from it (and then check
behaviour: the call must succeed, or fail with 403/404).

Order of checks for an operation on an existing image (so that nothing leaks):

1. the image must be *visible* to the caller's account (owner, public,
   community, or a member of a ``shared`` image), otherwise :class:`NotFoundError`
   -- a non-member never learns that a private image exists;
2. the caller's roles must allow the operation (403);
3. the ownership scope of the row must hold: ``owner`` (only the owner account),
   ``member`` (only the member itself, e.g. accepting a share) (403).
"""
from __future__ import annotations

from .._record import factory, record

TYPE_CHECKING = False   # typing and dataclasses are not imported at run time (start-up of `vhdkit image show`)
if TYPE_CHECKING:
    from typing import Any, Dict, FrozenSet, Iterable, Optional, Union

from ..errors import ForbiddenError, InvalidInputError

# ---- roles (docs/rbac.md "Roles") ----
USER_ADMIN = "identity:user-admin"
ADMIN = "admin"
OBSERVER = "observer"
CI_ADMIN = "cloudImages:admin"
CI_CREATOR = "cloudImages:creator"
CI_OBSERVER = "cloudImages:observer"
#: Not a customer role: the operator / pipeline identity.  It may do every
#: operation and, under the default protections file, write ``com.rackspace*``
#: properties and make images public.
SERVICE = "vhdkit:service"

ADMINS: FrozenSet[str] = frozenset({USER_ADMIN, ADMIN, CI_ADMIN})
CREATORS: FrozenSet[str] = frozenset({CI_CREATOR})
OBSERVERS: FrozenSet[str] = frozenset({OBSERVER, CI_OBSERVER})
CUSTOMER_ROLES: FrozenSet[str] = ADMINS | CREATORS | OBSERVERS
ALL_ROLES: FrozenSet[str] = CUSTOMER_ROLES | {SERVICE}

_R = OBSERVERS | CREATORS | ADMINS | {SERVICE}   # read
_C = CREATORS | ADMINS | {SERVICE}               # create
_A = ADMINS | {SERVICE}                          # admin


@record(frozen=True)
class Rule:
    """``roles`` (a frozenset) may do it; ``scope``: None: no image involved;
    "visible": any account that can see the image; "owner": the owner account
    only; "member": the member account itself only; ``api`` the v2 call."""

    roles: FrozenSet[str]
    scope: Optional[str]
    api: str


#: THE operation matrix (docs/rbac.md "Operations": the upstream table plus the operations it does
#: not list, marked "ext": create/upload follow the role descriptions
#: "create, read, update", download/read follow "read").
MATRIX: Dict[str, Rule] = {
    "list_images":    Rule(_R, None, "GET /v2/images"),
    "show_image":     Rule(_R, "visible", "GET /v2/images/{id}"),
    "update_image":   Rule(_A, "owner", "PATCH /v2/images/{id}"),
    "delete_image":   Rule(_A, "owner", "DELETE /v2/images/{id}"),
    "add_member":     Rule(_C, "owner", "POST /v2/images/{id}/members"),
    "list_members":   Rule(_R, "visible", "GET /v2/images/{id}/members"),
    "show_member":    Rule(_R, "visible", "GET /v2/images/{id}/members/{member}"),
    "update_member":  Rule(_A, "member", "PUT /v2/images/{id}/members/{member}"),
    "delete_member":  Rule(_A, "owner", "DELETE /v2/images/{id}/members/{member}"),
    "add_tag":        Rule(_R, "owner", "PUT /v2/images/{id}/tags/{tag}"),
    "delete_tag":     Rule(_R, "owner", "DELETE /v2/images/{id}/tags/{tag}"),
    "schemas":        Rule(_R, None, "GET /v2/schemas/*"),
    "create_task":    Rule(_A, None, "POST /v2/tasks"),
    "list_tasks":     Rule(_R, None, "GET /v2/tasks"),
    "show_task":      Rule(_R, None, "GET /v2/tasks/{id}"),
    # ext: not in the upstream table
    "create_image":   Rule(_C, None, "POST /v2/images (ext)"),
    "upload_data":    Rule(_C, "owner", "PUT /v2/images/{id}/file (ext)"),
    "download_data":  Rule(_R, "visible", "GET /v2/images/{id}/file (ext)"),
    "deactivate":     Rule(_A, "owner", "POST /v2/images/{id}/actions/deactivate (ext)"),
    "reactivate":     Rule(_A, "owner", "POST /v2/images/{id}/actions/reactivate (ext)"),
}

#: An account id: letters, digits and ``_ . @ : + -``, at most 255, not starting
#: with ``.`` (so never ``.``, ``..`` or a hidden name: the object store and the
#: data directory keep one directory per account, named by this id).  Every
#: door an account id comes through (HTTP headers, member ids, the CLI, task
#: owners) checks it with this one rule, :func:`is_account_id`.
MAX_ACCOUNT = 255
_ACCOUNT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.@:+-")


def is_account_id(account: Any) -> bool:
    """Is ``account`` a valid account id (see above)?  A character set, not a
    regular expression: every registry command checks its caller, and ``re``
    is start-up cost of ``vhdkit image show|list``."""
    return (isinstance(account, str) and 0 < len(account) <= MAX_ACCOUNT and account[0] != "."
            and _ACCOUNT_CHARS.issuperset(account))


@record(frozen=True)
class Caller:
    """The identity an operation runs as: an account (tenant) id and its roles."""

    account: str
    roles: FrozenSet[str] = factory(frozenset)

    def __post_init__(self) -> None:
        if not is_account_id(self.account):
            raise InvalidInputError(f"invalid account id {self.account!r}")
        object.__setattr__(self, "roles", frozenset(r.strip() for r in self.roles if r.strip()))

    @classmethod
    def parse(cls, account: str, roles: Union[str, Iterable[str], None]) -> "Caller":
        """``Caller.parse("acct", "admin,observer")``."""
        if roles is None:
            roles = ()
        elif isinstance(roles, str):
            roles = roles.split(",")
        return cls(account, frozenset(roles))

    @classmethod
    def service(cls, account: str) -> "Caller":
        """The pipeline/operator identity acting for ``account``."""
        return cls(account, frozenset({SERVICE}))

    def has_any(self, roles: Iterable[str]) -> bool:
        return not self.roles.isdisjoint(roles)

    @property
    def is_service(self) -> bool:
        return SERVICE in self.roles

    @property
    def is_customer_admin(self) -> bool:
        return self.has_any(ADMINS) or self.is_service


def role_allows(op: str, caller: Caller) -> bool:
    return caller.has_any(MATRIX[op].roles)


def require_role(op: str, caller: Caller) -> None:
    """403 unless one of the caller's roles may perform ``op``."""
    if not role_allows(op, caller):
        allowed = ", ".join(sorted(MATRIX[op].roles & CUSTOMER_ROLES))
        raise ForbiddenError(
            f"account {caller.account} with roles [{', '.join(sorted(caller.roles)) or 'none'}] "
            f"may not {op.replace('_', ' ')} (allowed roles: {allowed})")


def require_scope(op: str, caller: Caller, *, owner: str, member: Optional[str] = None) -> None:
    """403 unless the ownership scope of ``op`` holds (after visibility and role)."""
    scope = MATRIX[op].scope
    if caller.is_service:
        return
    if scope == "owner" and caller.account != owner:
        raise ForbiddenError(f"only the owner account may {op.replace('_', ' ')}")
    if scope == "member" and caller.account != member:
        raise ForbiddenError(f"only the member account itself may {op.replace('_', ' ')}")
