"""job leases: attempts, a lease the worker renews, and the transactional enqueue's sent_at

A running job gets a lease (``lease_expires_at``) its worker renews and an attempt count; the
janitor requeues a job whose lease expired. ``sent_at`` is NULL until the job's message went
to the broker, so the janitor can send one a crash left unsent. Indexes serve the janitor's
sweeps: active jobs by status, leftover previews and inputs by their keys.

Rows from before: every job was sent when it was made (``sent_at = created_at``); a running job
counts as its first attempt and gets a lease that has already expired at its last heartbeat, so
the janitor takes it over (its worker, if alive, renews it first).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# Plain ALTER TABLE on both databases, as in 0006: a batch-mode copy of jobs would trip
# the foreign keys that images hold on it.


def upgrade() -> None:
    op.add_column("jobs", sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
    op.execute("UPDATE jobs SET sent_at = created_at")
    op.execute("UPDATE jobs SET attempts = 1 WHERE status <> 'queued'")
    op.execute("UPDATE jobs SET lease_expires_at = COALESCE(heartbeat_at, created_at) WHERE status = 'running'")
    op.create_index("ix_jobs_status", "jobs", ["status", "user_id"])
    op.create_index("ix_jobs_preview_key", "jobs", ["preview_key"])
    op.create_index("ix_jobs_source_key", "jobs", ["source_key"])


def downgrade() -> None:
    op.drop_index("ix_jobs_source_key", table_name="jobs")
    op.drop_index("ix_jobs_preview_key", table_name="jobs")
    op.drop_index("ix_jobs_status", table_name="jobs")
    op.drop_column("jobs", "attempts")
    op.drop_column("jobs", "lease_expires_at")
    op.drop_column("jobs", "sent_at")
