"""0002: one index per (owner | visibility, sort key) ending in the sort's
tie-breakers (created_at, id), so every branch of a list walks an index in
the requested order and stops after a page (see vhdkit/registry/query.py)."""
from vhdkit.registry.migrations import dialect, run
from vhdkit.registry.db import _list_indexes

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


_DROPPED = ("ix_images_owner_name", "ix_images_owner_created", "ix_images_vis_name", "ix_images_vis_created")


def upgrade() -> None:
    d = dialect()
    run([f"DROP INDEX {name}" for name in _DROPPED]
        + [f"CREATE INDEX {name} ON images({d.index_columns(cols)})" for name, cols in _list_indexes()])
