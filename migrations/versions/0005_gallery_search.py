"""gallery search: PostgreSQL searches a tsvector stored on images, with its own GIN index

0004's search collected every matching image, then sorted them by created_at to take
the newest page, so its cost grew with the number of matches.

SQLite: unchanged. Keying ``image_search`` rows by created_at (so FTS5 yields matches
newest first and LIMIT stops the scan) was tried and measured slower: FTS5 3.40 builds
the whole doclist of a prefix term longer than its prefix indexes before the first row.

PostgreSQL: ``images.search`` holds the prompt's tsvector (filled from the job by a
trigger, so the filter is not recomputed per row) with its own GIN index; the planner
then picks between the user's newest images filtered by it (common words) and the GIN
bitmap (rare words). It replaces 0004's index on jobs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


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
    if op.get_bind().dialect.name != "sqlite":
        _postgres_upgrade()


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    op.execute("CREATE INDEX ix_jobs_prompt_search ON jobs USING gin (to_tsvector('simple', prompt))")
    op.execute("DROP INDEX IF EXISTS ix_images_search")
    op.execute("DROP TRIGGER IF EXISTS images_search_fill ON images")
    op.execute("DROP FUNCTION IF EXISTS images_search_fill()")
    op.execute("ALTER TABLE images DROP COLUMN search")
