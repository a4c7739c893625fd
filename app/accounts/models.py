from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, Float, ForeignKey, Index, Integer, String, false
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
    # Set when the owner followed a link sent to ``email`` (the welcome credits come then).
    email_verified_at: Mapped[datetime | None]
    # A deleted account stays as a tombstone the ledger's rows point at: no email, no
    # password, no sessions (app.erasure).
    deleted_at: Mapped[datetime | None]

    @property
    def verified(self) -> bool:
        return self.email_verified_at is not None

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


class RateLimitHit(Base):
    """One counted event of a throttle (a failed login, a sign-up), for the database storage
    of the ``limits`` library (app/accounts/throttle.py): a moving window counts a key's rows
    younger than the window. Rows are deleted once they expire."""

    __tablename__ = "rate_limit_hits"
    __table_args__ = (Index("ix_rate_limit_hits_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # The limit's key; its identifiers (an email, an address) are hashed, so no personal data.
    key: Mapped[str] = mapped_column(String(255))
    at: Mapped[float] = mapped_column(Float)  # Unix time of the event
    expires_at: Mapped[float] = mapped_column(Float, index=True)


VERIFY, RESET, CHANGE_EMAIL = "verify", "reset", "email"


class AccountToken(Base):
    """A link sent by email (confirm the address, reset the password, confirm a new
    address): works once, until ``expires_at``, and only for the address it was sent to."""

    __tablename__ = "account_tokens"

    # SHA-256 of the link's token, as for sessions: the database alone opens no link.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(16))
    email: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
