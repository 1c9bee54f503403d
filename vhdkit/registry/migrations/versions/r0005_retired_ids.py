"""0005: ids of deleted images, never handed out again (OpenStack OSSN-0075:
a new image under an old id would be taken for the old one)."""
from vhdkit.registry.migrations import run_script

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("CREATE TABLE retired_image_ids (id TEXT PRIMARY KEY, deleted_at TEXT NOT NULL);")
