from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Integer, String, false
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class User(Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint("balance >= 0", name="ck_users_balance_not_negative"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    # Cached sum of this user's ledger entries; written only by app.credits.ledger,
    # in the same transaction as the entry, and checked against the sum by tests.
    balance: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The operator's: admins see /admin (`gouache users make-admin`); a suspended account
    # cannot log in or generate (app/admin/service.py sets these, with an audit row).
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    suspended_at: Mapped[datetime | None]
    suspension_reason: Mapped[str] = mapped_column(String(500), default="", server_default="")


class LoginSession(Base):
    """A server-side session: deleting the row logs the browser out."""

    __tablename__ = "sessions"

    # SHA-256 of the cookie's token, so a leaked database cannot be replayed as cookies.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
