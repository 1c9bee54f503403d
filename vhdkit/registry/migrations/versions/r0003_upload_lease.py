"""0003: an upload holds a lease: the time (stored text form) until which it
counts as alive (see vhdkit/registry/data.py)."""
from vhdkit.registry.migrations import run_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("ALTER TABLE images ADD COLUMN upload_lease_until TEXT;")
