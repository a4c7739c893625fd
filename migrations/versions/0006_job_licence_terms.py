"""job licence terms: each job keeps its licence's URL and commercial-use flag

0005 recorded only the licence's name; the page looked the rest up in the current catalog,
so an operator's edit rewrote what older images said. Older rows keep an empty URL and an
unknown (NULL) flag.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


# Plain ALTER TABLE on both databases (SQLite has dropped columns in place since 3.35):
# a batch-mode copy of jobs would trip the foreign keys that images hold on it.


def upgrade() -> None:
    op.add_column("jobs", sa.Column("licence_url", sa.String(512), nullable=False, server_default=""))
    op.add_column("jobs", sa.Column("licence_commercial", sa.Boolean(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "licence_commercial")
    op.drop_column("jobs", "licence_url")
