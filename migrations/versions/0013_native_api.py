"""native API: jobs listed newest first, collections created once per Idempotency-Key

An index ``(user_id, created_at, id)`` on ``jobs`` makes each page of ``GET
/api/v1/generations`` one range scan. ``collections.client_request_id`` records the
Idempotency-Key a collection was created with (unique per user), so a retried
``POST /api/v1/collections`` finds the first collection instead of making a second.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-15
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_user_created_id", "jobs", ["user_id", "created_at", "id"])
    op.add_column("collections", sa.Column("client_request_id", sa.String(64), nullable=True))
    op.create_index("ix_collections_user_request", "collections", ["user_id", "client_request_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_collections_user_request", table_name="collections")
    op.drop_column("collections", "client_request_id")
    op.drop_index("ix_jobs_user_created_id", table_name="jobs")
