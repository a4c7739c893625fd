"""gallery search stemming: "stars" finds "star", "painting" finds "paint"

SQLite: ``image_search`` is rebuilt with FTS5's ``porter`` tokenizer (over unicode61,
as before, and with the same prefix indexes) and refilled from the images' prompts, so
the index holds word stems and a query's words are stemmed the same way. Its rowid is
still the image's rowid; the triggers on images are unchanged.

PostgreSQL: ``images.search`` becomes the prompt's ``english`` tsvector (stems, without
stop words) concatenated with its ``simple`` one (every word as written), recomputed
for every image, and the trigger fills it so. A search word matches either, so the
stop words ("a", "in") and partly typed words ("paintin") still match as prefixes.

Downgrade puts back 0007's index (SQLite) and 0005's ``simple`` tsvector (PostgreSQL).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-20
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

PREFIXES = "2 3 4 5 6 7 8"
STEMMED = "to_tsvector('english', prompt) || to_tsvector('simple', prompt)"
PLAIN = "to_tsvector('simple', prompt)"


def _sqlite_rebuild(tokenize: str) -> None:
    op.execute("DROP TABLE image_search")
    op.execute(f"CREATE VIRTUAL TABLE image_search USING fts5(prompt, tokenize='{tokenize}', prefix='{PREFIXES}')")
    op.execute(
        "INSERT INTO image_search(rowid, prompt) "
        "SELECT images.rowid, jobs.prompt FROM images JOIN jobs ON jobs.id = images.job_id"
    )


def _postgres_refill(vector: str) -> None:
    op.execute(
        "CREATE OR REPLACE FUNCTION images_search_fill() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"NEW.search := (SELECT {vector} FROM jobs WHERE id = NEW.job_id); "
        "RETURN NEW; END $$"
    )
    op.execute(f"UPDATE images SET search = (SELECT {vector} FROM jobs WHERE jobs.id = images.job_id)")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_rebuild("porter unicode61")
    else:
        _postgres_refill(STEMMED)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_rebuild("unicode61")
    else:
        _postgres_refill(PLAIN)
