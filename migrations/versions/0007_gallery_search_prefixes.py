"""gallery search prefixes: SQLite's FTS5 table indexes prefixes of 2 to 8 characters

A gallery page checks a window of the user's newest images against the search words
within the window's rowid range. FTS5 seeks a term's doclist to that range, but a
prefix term longer than the table's prefix indexes ("detailed"* with prefix='2 3') is
first merged from every matching term's whole doclist, which costs more the more
images match. With prefix indexes up to 8 characters, words of that length are one
doclist each; longer words still merge, but they are rarer.

The table is rebuilt and refilled (its rowid is the image's rowid, as 0004 made it);
the triggers on images are unchanged. PostgreSQL: nothing to do.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _rebuild(prefix: str) -> None:
    op.execute("DROP TABLE image_search")
    op.execute(f"CREATE VIRTUAL TABLE image_search USING fts5(prompt, tokenize='unicode61', prefix='{prefix}')")
    op.execute(
        "INSERT INTO image_search(rowid, prompt) "
        "SELECT images.rowid, jobs.prompt FROM images JOIN jobs ON jobs.id = images.job_id"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild("2 3 4 5 6 7 8")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild("2 3")
