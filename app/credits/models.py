from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class LedgerEntry(Base):
    """One append-only movement of credits. A balance is the sum of its entries.

    kinds (sign of ``amount``): ``grant`` (+: signup, monthly refill, admin),
    ``purchase`` (+), ``hold`` (−, the price at submit), ``capture`` (0: the hold
    becomes a charge), ``release`` (+, the hold given back), ``refund`` and
    ``chargeback`` (−, a purchase clawed back), ``adjustment`` (±, by an admin).
    """

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(Integer)
    # Unique: applying the same event twice writes one row.
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    # What caused it: "job:<id>", "purchase:<id>", "stripe:<event id>", "admin:<reason>", "refill:<YYYY-MM>".
    reference: Mapped[str] = mapped_column(String(255), default="")
    job_id: Mapped[str | None] = mapped_column(String(36), index=True)
    memo: Mapped[str] = mapped_column(String(255), default="")
    # Indexed for the operator's reads by time (the money page, /metrics' new entries).
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


PENDING, PAID, CANCELED = "pending", "paid", "canceled"


class Purchase(Base):
    """A credit pack bought (or being bought) through Stripe Checkout or the local test checkout."""

    __tablename__ = "purchases"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    pack_id: Mapped[str] = mapped_column(String(64))
    credits: Mapped[int] = mapped_column(Integer)
    amount: Mapped[int] = mapped_column(Integer)  # in the currency's minor unit (cents)
    currency: Mapped[str] = mapped_column(String(3))
    provider: Mapped[str] = mapped_column(String(16))  # "stripe" or "test"
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    checkout_session_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    payment_intent_id: Mapped[str | None] = mapped_column(String(255), index=True)
    # Credits accounted for by refunds and by disputes (taken back or short), the
    # part actually taken back, and what could not be taken because the user had
    # already spent it (flagged for an operator; a balance never goes negative).
    refunded_credits: Mapped[int] = mapped_column(Integer, default=0)
    disputed_credits: Mapped[int] = mapped_column(Integer, default=0)
    credits_clawed_back: Mapped[int] = mapped_column(Integer, default=0)
    clawback_shortfall: Mapped[int] = mapped_column(Integer, default=0)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    paid_at: Mapped[datetime | None]
