"""operator: admins, suspended accounts and the audit log of admin actions

``users.is_admin`` (set by ``gouache users make-admin``), ``users.suspended_at`` and
``suspension_reason`` (a suspended account cannot log in or generate), and
``admin_actions``, the append-only record of what admins did. Existing accounts are
neither admins nor suspended. Indexes on ``jobs.finished_at`` and
``ledger_entries.created_at`` let the money page and /metrics read a span of time
instead of the whole history.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# Plain ALTER TABLE on both databases, as in 0006 and 0008: a batch-mode copy of users
# would trip the foreign keys that every other table holds on it.


def upgrade() -> None:
    op.add_column("users", sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("users", sa.Column("suspended_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", sa.Column("suspension_reason", sa.String(500), nullable=False, server_default=""))
    op.create_table(
        "admin_actions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(320), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target_user_id", sa.Integer(), nullable=True),
        sa.Column("target", sa.String(320), nullable=False),
        sa.Column("detail", sa.String(255), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
    )
    op.create_index("ix_admin_actions_target_user_id", "admin_actions", ["target_user_id"])
    # The money page and /metrics read by time: what was settled or entered since a moment.
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])
    op.create_index("ix_ledger_entries_created_at", "ledger_entries", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_ledger_entries_created_at", table_name="ledger_entries")
    op.drop_index("ix_jobs_finished_at", table_name="jobs")
    op.drop_index("ix_admin_actions_target_user_id", table_name="admin_actions")
    op.drop_table("admin_actions")
    op.drop_column("users", "suspension_reason")
    op.drop_column("users", "suspended_at")
    op.drop_column("users", "is_admin")
