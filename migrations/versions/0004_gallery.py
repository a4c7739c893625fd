"""gallery: thumbnails, favourites, collections, filter indexes, prompt search

Images get their thumbnail's key, a favourite flag, and copies of the job's mode and
model and of their aspect, so that every gallery filter's first page is one index range
scan over (user_id, value, created_at, id); a collection's members carry their image's
created_at for the same reason.

Prompt search: on SQLite an FTS5 table ``image_search`` whose rowid is the image's
rowid, kept by triggers on ``images`` (a later migration that *recreates* ``images``
changes rowids and must refill it: DELETE FROM image_search, then INSERT ... SELECT
as below). On PostgreSQL a GIN index on ``to_tsvector('simple', jobs.prompt)``.
Both use simple word tokens (no stemming), so prefix search behaves the same.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FILTER_INDEXES = {
    "ix_images_user_created_id": (),
    "ix_images_user_mode": ("mode",),
    "ix_images_user_model": ("model",),
    "ix_images_user_aspect": ("aspect",),
    "ix_images_user_favourite": ("favourite",),
}


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    # ADD COLUMN with defaults: native on both databases, no table copy.
    op.add_column("images", sa.Column("thumbnail_key", sa.String(length=512), nullable=True))
    op.add_column("images", sa.Column("mode", sa.String(length=16), nullable=False, server_default="txt2img"))
    op.add_column("images", sa.Column("model", sa.String(length=255), nullable=False, server_default=""))
    op.add_column("images", sa.Column("aspect", sa.String(length=9), nullable=False, server_default="square"))
    op.add_column("images", sa.Column("favourite", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute(
        "UPDATE images SET mode = (SELECT jobs.mode FROM jobs WHERE jobs.id = images.job_id), "
        "model = (SELECT jobs.model FROM jobs WHERE jobs.id = images.job_id), "
        "aspect = CASE WHEN width = height THEN 'square' WHEN height > width THEN 'portrait' ELSE 'landscape' END"
    )
    op.drop_index("ix_images_user_created", table_name="images")
    for name, columns in FILTER_INDEXES.items():
        op.create_index(name, "images", ["user_id", *columns, "created_at", "id"])

    op.create_table(
        "collections",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "name"),
    )
    op.create_index("ix_collections_user_id", "collections", ["user_id"])
    op.create_table(
        "collection_images",
        sa.Column("collection_id", sa.String(length=36), nullable=False),
        sa.Column("image_id", sa.String(length=36), nullable=False),
        sa.Column("image_created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["collection_id"], ["collections.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("collection_id", "image_id"),
    )
    op.create_index("ix_collection_images_image_id", "collection_images", ["image_id"])
    op.create_index(
        "ix_collection_images_order", "collection_images", ["collection_id", "image_created_at", "image_id"]
    )

    if sqlite:
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


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS image_search_delete")
        op.execute("DROP TRIGGER IF EXISTS image_search_insert")
        op.execute("DROP TABLE IF EXISTS image_search")
    else:
        op.execute("DROP INDEX IF EXISTS ix_jobs_prompt_search")
    op.drop_index("ix_collection_images_order", table_name="collection_images")
    op.drop_index("ix_collection_images_image_id", table_name="collection_images")
    op.drop_table("collection_images")
    op.drop_index("ix_collections_user_id", table_name="collections")
    op.drop_table("collections")
    for name in FILTER_INDEXES:
        op.drop_index(name, table_name="images")
    op.create_index("ix_images_user_created", "images", ["user_id", "created_at"])
    with op.batch_alter_table("images") as batch:
        for column in ("favourite", "aspect", "model", "mode", "thumbnail_key"):
            batch.drop_column(column)
