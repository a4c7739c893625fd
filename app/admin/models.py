from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class AdminAction(Base):
    """One thing an admin (or the ``gouache`` CLI) did: who, what, to whom, why, when.

    Append-only: rows are written by :func:`app.admin.service.record` in the same
    transaction as the action, and nothing updates or deletes them. Actor and target are
    copied as they were (ids without foreign keys), so the record outlives the accounts.
    """

    __tablename__ = "admin_actions"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(320))  # the admin's email then, or "cli"
    actor_id: Mapped[int | None] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(32))  # make_admin, revoke_admin, suspend, unsuspend, grant
    target_user_id: Mapped[int | None] = mapped_column(Integer, index=True)
    target: Mapped[str] = mapped_column(String(320), default="")  # the account's email then
    detail: Mapped[str] = mapped_column(String(255), default="")  # "+500 credits", "3 jobs cancelled"
    reason: Mapped[str] = mapped_column(String(500), default="")
