"""Image members (sharing between accounts): :class:`MemberService`.

Only ``shared`` images have members; a member starts ``pending``; only the
owner adds or removes members; only the member changes its own status.  The
owner sees every member of its image, a member sees only its own entry."""
from __future__ import annotations

from ..errors import ConflictError, ForbiddenError, InvalidInputError, NotFoundError
from .models import MEMBER_STATUSES, Member
from .rbac import Caller

TYPE_CHECKING = False   # typing is not imported at run time
if TYPE_CHECKING:  # pragma: no cover
    from typing import List

    from .context import Context
    from .images import ImageService


def _member(row) -> Member:
    return Member(row["image_id"], row["member"], row["status"], row["created_at"], row["updated_at"])


class MemberService:
    """The members of the images of ``images`` (the registry open as ``ctx``)."""

    def __init__(self, ctx: Context, images: ImageService):
        self.ctx, self.images = ctx, images

    def add_member(self, caller: Caller, image_id: str, member_id: str) -> Member:
        Caller(member_id)  # validates the account id
        with self.ctx.write() as conn:
            img = self.images.get_for("add_member", caller, image_id, conn)
            if img.visibility != "shared":
                raise ForbiddenError(f"image {img.id} is '{img.visibility}': only shared images have members")
            if member_id == img.owner:
                raise InvalidInputError("the owner account cannot be a member of its own image")
            if conn.execute("SELECT 1 FROM image_members WHERE image_id = ? AND member = ?",
                            (img.id, member_id)).fetchone():
                raise ConflictError(f"account {member_id} is already a member of image {img.id}")
            n = conn.execute("SELECT count(*) FROM image_members WHERE image_id = ?", (img.id,)).fetchone()[0]
            self.ctx.quota("members", n + 1)
            now = self.ctx.now()
            conn.execute("INSERT INTO image_members (image_id, member, status, created_at, updated_at) "
                         "VALUES (?, ?, 'pending', ?, ?)", (img.id, member_id, now, now))
            row = conn.execute("SELECT * FROM image_members WHERE image_id = ? AND member = ?",
                               (img.id, member_id)).fetchone()
        return _member(row)

    def list_members(self, caller: Caller, image_id: str) -> List[Member]:
        with self.ctx.read() as conn:
            img = self.images.get_for("list_members", caller, image_id, conn)
            if caller.is_service or caller.account == img.owner:
                rows = conn.execute("SELECT * FROM image_members WHERE image_id = ? ORDER BY created_at, member",
                                    (img.id,)).fetchall()
            else:
                rows = conn.execute("SELECT * FROM image_members WHERE image_id = ? AND member = ?",
                                    (img.id, caller.account)).fetchall()
        return [_member(r) for r in rows]

    def show_member(self, caller: Caller, image_id: str, member_id: str) -> Member:
        with self.ctx.read() as conn:
            img = self.images.get_for("show_member", caller, image_id, conn)
            row = None
            if caller.is_service or caller.account in (img.owner, member_id):
                row = conn.execute("SELECT * FROM image_members WHERE image_id = ? AND member = ?",
                                   (img.id, member_id)).fetchone()
            if row is None:
                raise NotFoundError(f"account {member_id} is not a member of image {img.id}")
        return _member(row)

    def update_member(self, caller: Caller, image_id: str, member_id: str,
                      status: str) -> Member:
        """The member account accepts/rejects (or resets to pending) a share."""
        if status not in MEMBER_STATUSES:
            raise InvalidInputError(f"invalid member status {status!r}: expected one of {', '.join(MEMBER_STATUSES)}")
        with self.ctx.write() as conn:
            img = self.images.get_for("update_member", caller, image_id, conn, member=member_id)
            cur = conn.execute("UPDATE image_members SET status = ?, updated_at = ? WHERE image_id = ? AND member = ?",
                               (status, self.ctx.now(), img.id, member_id))
            if cur.rowcount == 0:
                raise NotFoundError(f"account {member_id} is not a member of image {img.id}")
            row = conn.execute("SELECT * FROM image_members WHERE image_id = ? AND member = ?",
                               (img.id, member_id)).fetchone()
        return _member(row)

    def delete_member(self, caller: Caller, image_id: str, member_id: str) -> None:
        with self.ctx.write() as conn:
            img = self.images.get_for("delete_member", caller, image_id, conn)
            cur = conn.execute("DELETE FROM image_members WHERE image_id = ? AND member = ?", (img.id, member_id))
            if cur.rowcount == 0:
                raise NotFoundError(f"account {member_id} is not a member of image {img.id}")
