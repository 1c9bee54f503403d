"""0004: Images API 2.7 hidden images (left out of lists unless asked for;
checked on the walked rows, see query.py); an interoperable import's
os_glance_import_task lives exactly as long as the image is importing:
whatever ends it (success, failure, a reset by cleanup after a crash,
deletion) drops the property in the same transaction."""
from vhdkit.registry.migrations import dialect, run, run_script
from vhdkit.registry.models import IMPORT_TASK_PROPERTY

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("ALTER TABLE images ADD COLUMN os_hidden INTEGER NOT NULL DEFAULT 0;")
    run(dialect().import_ended_trigger(IMPORT_TASK_PROPERTY))
