"""0006: a failed task's remains (its image, segments, work directory) are
removed once; 1 when that was done (see tasks.py, fencing)."""
from vhdkit.registry.migrations import run_script

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("ALTER TABLE tasks ADD COLUMN swept INTEGER NOT NULL DEFAULT 0;")
