"""gallery search: the first page of a prompt search costs the same at 1k or 100k images

0004's search collected every matching image, then sorted them by created_at to take
the newest page, so its cost grew with the number of matches.

SQLite: ``image_search`` is rebuilt with a rowid that follows the gallery's order,
``images.search_key`` = created_at in microseconds * 1024 + a slot for images made in
the same microsecond (assigned by the insert trigger; the key never changes, since
created_at never does). FTS5 then yields matches newest first and stops after a page
(``ORDER BY rowid DESC LIMIT``). An ``owner`` column holds ``u<user_id>`` so one
user's search never walks another user's matches.

PostgreSQL: ``images.search`` holds the prompt's tsvector (filled from the job by a
trigger, so the filter is not recomputed per row) with its own GIN index; the planner
then picks between the user's newest images filtered by it (common words) and the GIN
bitmap (rare words). It replaces 0004's index on jobs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# created_at (SQLite's text 'YYYY-MM-DD HH:MM:SS.ffffff') in microseconds since 1970,
# times the 1024 slots of one microsecond; good until the year 2255.
SQLITE_BUCKET = (
    "((CAST(strftime('%s', {0}.created_at) AS INTEGER) * 1000000 "
    "+ CAST(substr({0}.created_at, 21, 6) AS INTEGER)) * 1024)"
)
SLOTS = 1024


def _sqlite_upgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS image_search_insert")
    op.execute("DROP TRIGGER IF EXISTS image_search_delete")
    op.execute("DROP TABLE IF EXISTS image_search")
    op.add_column("images", sa.Column("search_key", sa.BigInteger(), nullable=True))
    bucket = SQLITE_BUCKET.format("images")
    op.execute(
        "UPDATE images SET search_key = keyed.key FROM ("
        f"SELECT rowid AS rid, {bucket} + ROW_NUMBER() OVER (PARTITION BY {bucket} ORDER BY id) - 1 AS key "
        "FROM images) AS keyed WHERE images.rowid = keyed.rid"
    )
    op.create_index("ix_images_search_key", "images", ["search_key"], unique=True)
    op.execute("CREATE VIRTUAL TABLE image_search USING fts5(prompt, owner, tokenize='unicode61', prefix='2 3')")
    op.execute(
        "INSERT INTO image_search(rowid, prompt, owner) "
        "SELECT images.search_key, jobs.prompt, 'u' || images.user_id "
        "FROM images JOIN jobs ON jobs.id = images.job_id"
    )
    new = SQLITE_BUCKET.format("NEW")
    free_slot = (
        f"COALESCE((SELECT max(search_key) + 1 FROM images WHERE search_key >= {new} "
        f"AND search_key < {new} + {SLOTS}), {new})"
    )
    op.execute(
        "CREATE TRIGGER image_search_insert AFTER INSERT ON images BEGIN "
        # more than 1024 images in one microsecond would break the key's order: refuse
        f"SELECT RAISE(ABORT, 'too many images in one microsecond') WHERE {free_slot} >= {new} + {SLOTS}; "
        f"UPDATE images SET search_key = {free_slot} WHERE rowid = NEW.rowid; "
        "INSERT INTO image_search(rowid, prompt, owner) "
        "SELECT (SELECT search_key FROM images WHERE rowid = NEW.rowid), prompt, 'u' || NEW.user_id "
        "FROM jobs WHERE id = NEW.job_id; END"
    )
    op.execute(
        "CREATE TRIGGER image_search_delete AFTER DELETE ON images BEGIN "
        "DELETE FROM image_search WHERE rowid = OLD.search_key; END"
    )


def _postgres_upgrade() -> None:
    op.execute("ALTER TABLE images ADD COLUMN search tsvector")
    op.execute("UPDATE images SET search = to_tsvector('simple', jobs.prompt) FROM jobs WHERE jobs.id = images.job_id")
    op.execute(
        "CREATE FUNCTION images_search_fill() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "NEW.search := (SELECT to_tsvector('simple', prompt) FROM jobs WHERE id = NEW.job_id); "
        "RETURN NEW; END $$"
    )
    op.execute(
        "CREATE TRIGGER images_search_fill BEFORE INSERT ON images FOR EACH ROW EXECUTE FUNCTION images_search_fill()"
    )
    op.execute("CREATE INDEX ix_images_search ON images USING gin (search)")
    op.execute("DROP INDEX IF EXISTS ix_jobs_prompt_search")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_upgrade()
    else:
        _postgres_upgrade()


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS image_search_delete")
        op.execute("DROP TRIGGER IF EXISTS image_search_insert")
        op.execute("DROP TABLE IF EXISTS image_search")
        op.drop_index("ix_images_search_key", table_name="images")
        op.drop_column("images", "search_key")
        # 0004's table, triggers and rows, keyed by the image's rowid
        op.execute("CREATE VIRTUAL TABLE image_search USING fts5(prompt, tokenize='unicode61', prefix='2 3')")
        op.execute(
            "INSERT INTO image_search(rowid, prompt) "
            "SELECT images.rowid, jobs.prompt FROM images JOIN jobs ON jobs.id = images.job_id"
        )
        op.execute(
            "CREATE TRIGGER image_search_insert AFTER INSERT ON images BEGIN "
            "INSERT INTO image_search(rowid, prompt) SELECT NEW.rowid, prompt FROM jobs WHERE id = NEW.job_id; END"
        )
        op.execute(
            "CREATE TRIGGER image_search_delete AFTER DELETE ON images BEGIN "
            "DELETE FROM image_search WHERE rowid = OLD.rowid; END"
        )
    else:
        op.execute("CREATE INDEX ix_jobs_prompt_search ON jobs USING gin (to_tsvector('simple', prompt))")
        op.execute("DROP INDEX IF EXISTS ix_images_search")
        op.execute("DROP TRIGGER IF EXISTS images_search_fill ON images")
        op.execute("DROP FUNCTION IF EXISTS images_search_fill()")
        op.execute("ALTER TABLE images DROP COLUMN search")
