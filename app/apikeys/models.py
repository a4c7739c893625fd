from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class ApiKey(Base):
    """A key a user made for scripts: ``gch_`` + :attr:`prefix`'s 8 characters + a secret.

    Only the SHA-256 of the whole key is stored (a leaked database opens no account); the
    prefix is kept in the clear so lists and ``gouache keys revoke`` can name the key. A
    revoked key stays (its row names what was revoked, and when) but authenticates nothing.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(12), unique=True)  # "gch_" + 8 characters
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Written at most once a minute per key (see app.apikeys.service.LAST_USED_EVERY).
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
