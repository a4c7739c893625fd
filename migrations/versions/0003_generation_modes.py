"""generation modes: sampler, strength, input images, cancel, live preview, licence

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("sampler", sa.String(length=32), nullable=False, server_default="euler"))
        batch.add_column(sa.Column("strength", sa.Float(), nullable=True))
        batch.add_column(sa.Column("source_key", sa.String(length=512), nullable=True))
        batch.add_column(sa.Column("mask_key", sa.String(length=512), nullable=True))
        batch.add_column(sa.Column("source_image_id", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("preview_key", sa.String(length=512), nullable=True))
        batch.add_column(sa.Column("licence", sa.String(length=255), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for column in (
            "licence",
            "preview_key",
            "cancel_requested",
            "source_image_id",
            "mask_key",
            "source_key",
            "strength",
            "sampler",
        ):
            batch.drop_column(column)
