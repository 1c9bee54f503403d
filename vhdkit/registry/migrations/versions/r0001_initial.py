"""0001: images, tags, properties, members, trash and tasks."""
from vhdkit.registry.migrations import run_script

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SQL = """
    CREATE TABLE images (
        id TEXT PRIMARY KEY,
        name TEXT,
        status TEXT NOT NULL,
        visibility TEXT NOT NULL,
        protected INTEGER NOT NULL DEFAULT 0,
        owner TEXT NOT NULL,
        checksum TEXT,
        os_hash_algo TEXT,
        os_hash_value TEXT,
        size INTEGER,
        virtual_size INTEGER,
        disk_format TEXT,
        container_format TEXT,
        min_disk INTEGER NOT NULL DEFAULT 0,
        min_ram INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        blob TEXT,
        upload_token TEXT
    );
    CREATE INDEX ix_images_owner_name ON images(owner, name, id);
    CREATE INDEX ix_images_owner_created ON images(owner, created_at, id);
    CREATE INDEX ix_images_vis_name ON images(visibility, name, id);
    CREATE INDEX ix_images_vis_created ON images(visibility, created_at, id);
    CREATE INDEX ix_images_status ON images(status);

    CREATE TABLE image_tags (
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        tag TEXT NOT NULL,
        PRIMARY KEY (image_id, tag)
    ) WITHOUT ROWID;
    CREATE INDEX ix_tags_tag ON image_tags(tag, image_id);

    CREATE TABLE image_properties (
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (image_id, name)
    ) WITHOUT ROWID;
    CREATE INDEX ix_props_name_value ON image_properties(name, value, image_id);

    CREATE TABLE image_members (
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        member TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (image_id, member)
    ) WITHOUT ROWID;
    CREATE INDEX ix_members_member ON image_members(member, status, image_id);

    -- blobs to remove once no upload holds them (deleted images, failed uploads)
    CREATE TABLE trash (
        path TEXT PRIMARY KEY,
        created_at TEXT NOT NULL
    );

    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        status TEXT NOT NULL,
        input TEXT NOT NULL,
        result TEXT,
        message TEXT NOT NULL DEFAULT '',
        owner TEXT NOT NULL,
        owner_roles TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        expires_at TEXT,
        worker_id TEXT,
        lease_expires_at TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        stage TEXT,
        bytes_done INTEGER,
        bytes_total INTEGER
    );
    CREATE INDEX ix_tasks_owner_created ON tasks(owner, created_at, id);
    CREATE INDEX ix_tasks_status_created ON tasks(status, created_at);
    """


def upgrade() -> None:
    run_script(SQL)
