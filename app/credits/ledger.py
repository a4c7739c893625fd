"""The only code that writes ledger entries and the cached balance.

Every entry carries a unique idempotency key, so applying the same event twice
writes one row. The cached ``users.balance`` changes in the same transaction as
its entry. Debits are conditional (``balance >= amount``) or take at most the
balance under a row lock, so a balance can never go negative and two concurrent
debits can never spend the same credit, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.accounts.models import User
from app.credits.models import LedgerEntry
from app.errors import InsufficientCredits, UserError

GRANT, PURCHASE, HOLD, CAPTURE, RELEASE = "grant", "purchase", "hold", "capture", "release"
REFUND, CHARGEBACK, ADJUSTMENT = "refund", "chargeback", "adjustment"
KINDS = (GRANT, PURCHASE, HOLD, CAPTURE, RELEASE, REFUND, CHARGEBACK, ADJUSTMENT)


def balance(session: Session, user_id: int) -> int:
    return session.scalar(select(User.balance).where(User.id == user_id)) or 0


def ledger_sum(session: Session, user_id: int) -> int:
    total = select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(LedgerEntry.user_id == user_id)
    return session.execute(total).scalar_one()


def has_entry(session: Session, key: str) -> bool:
    return session.scalar(select(LedgerEntry.id).where(LedgerEntry.idempotency_key == key)) is not None


def _lock_balance(session: Session, user_id: int) -> int:
    """Read the balance with the account row locked (PostgreSQL: FOR UPDATE; SQLite's
    BEGIN IMMEDIATE already holds the database's write lock)."""
    return session.execute(select(User.balance).where(User.id == user_id).with_for_update()).scalar_one()


def _append(
    session: Session,
    *,
    user_id: int,
    kind: str,
    amount: int,
    key: str,
    memo: str,
    reference: str = "",
    job_id: str | None = None,
) -> bool:
    """Write one entry unless its key exists; returns whether it was written."""
    if has_entry(session, key):
        return False
    try:
        with session.begin_nested():
            session.add(
                LedgerEntry(
                    user_id=user_id,
                    kind=kind,
                    amount=amount,
                    idempotency_key=key,
                    reference=reference,
                    job_id=job_id,
                    memo=memo[:255],
                )
            )
            session.flush()
    except IntegrityError:
        return False  # a concurrent writer applied the same key first
    if amount:
        session.execute(update(User).where(User.id == user_id).values(balance=User.balance + amount))
    return True


def grant(session: Session, user_id: int, amount: int, *, key: str, memo: str, reference: str = "") -> bool:
    """Free credits (signup, monthly refill, an admin's gift)."""
    if amount < 0:
        raise ValueError("a grant adds credits")
    return _append(session, user_id=user_id, kind=GRANT, amount=amount, key=key, memo=memo, reference=reference)


def credit_purchase(session: Session, user_id: int, amount: int, *, purchase_id: str, memo: str) -> bool:
    """Credits bought; the key is the purchase, so a purchase is credited once whatever calls this."""
    if amount <= 0:
        raise ValueError("a purchase adds credits")
    return _append(
        session,
        user_id=user_id,
        kind=PURCHASE,
        amount=amount,
        key=f"purchase:{purchase_id}",
        memo=memo,
        reference=f"purchase:{purchase_id}",
    )


def hold(session: Session, user_id: int, amount: int, *, job_id: str, memo: str) -> None:
    """Reserve ``amount`` credits for a job, or raise InsufficientCredits."""
    if amount <= 0:
        raise ValueError("a hold reserves a positive amount")
    debit = update(User).where(User.id == user_id, User.balance >= amount).values(balance=User.balance - amount)
    taken = cast(CursorResult[Any], session.execute(debit)).rowcount  # an UPDATE's result is a cursor's
    if taken != 1:
        have = balance(session, user_id)
        raise InsufficientCredits(
            f"Not enough credits: this costs {amount} and your balance is {have}.", field="credits"
        )
    session.add(
        LedgerEntry(
            user_id=user_id,
            kind=HOLD,
            amount=-amount,
            idempotency_key=f"job:{job_id}:hold",
            reference=f"job:{job_id}",
            job_id=job_id,
            memo=memo,
        )
    )
    session.flush()


def capture(session: Session, user_id: int, *, job_id: str) -> bool:
    """The job delivered: its hold becomes a charge (a zero-amount marker entry)."""
    return _append(
        session,
        user_id=user_id,
        kind=CAPTURE,
        amount=0,
        key=f"job:{job_id}:settle",
        memo="Charge captured",
        reference=f"job:{job_id}",
        job_id=job_id,
    )


def release(session: Session, user_id: int, amount: int, *, job_id: str, memo: str) -> bool:
    """The job failed: give the held credits back. Shares capture's key, so a job
    is settled once, one way or the other."""
    return _append(
        session,
        user_id=user_id,
        kind=RELEASE,
        amount=amount,
        key=f"job:{job_id}:settle",
        memo=memo,
        reference=f"job:{job_id}",
        job_id=job_id,
    )


def take_back(session: Session, user_id: int, wanted: int, *, kind: str, key: str, memo: str, reference: str) -> int:
    """Debit up to ``wanted`` credits, never below zero; returns how many were taken.

    For refunds and chargebacks of purchases: what the user already spent cannot be
    taken back, and the caller records the shortfall.
    """
    if kind not in (REFUND, CHARGEBACK) or wanted < 0:
        raise ValueError("take_back is for refunds and chargebacks")
    if has_entry(session, key):
        return 0
    taken = min(wanted, _lock_balance(session, user_id))
    # A concurrent call with the same key may have written it while this one waited
    # for the lock (PostgreSQL): then nothing was taken here.
    written = _append(session, user_id=user_id, kind=kind, amount=-taken, key=key, memo=memo, reference=reference)
    return taken if written else 0


def adjust(session: Session, user_id: int, delta: int, *, key: str, memo: str, reference: str) -> bool:
    """An operator's correction, up or down; never below zero."""
    if delta < 0 and _lock_balance(session, user_id) < -delta:
        raise UserError(f"That would make the balance negative (it is {balance(session, user_id)}).")
    return _append(session, user_id=user_id, kind=ADJUSTMENT, amount=delta, key=key, memo=memo, reference=reference)


def top_up_to(session: Session, user_id: int, target: int, *, key: str, memo: str, reference: str) -> int:
    """Grant what brings the balance up to ``target`` (nothing if it is already there),
    once per key: a free monthly refill that does not accumulate."""
    if has_entry(session, key):
        return 0
    missing = max(0, target - _lock_balance(session, user_id))
    written = _append(session, user_id=user_id, kind=GRANT, amount=missing, key=key, memo=memo, reference=reference)
    return missing if written else 0  # as in take_back: a concurrent call may have applied the key


@dataclass(frozen=True)
class Mismatch:
    user_id: int
    email: str
    cached: int
    summed: int


def audit(session: Session) -> list[Mismatch]:
    """Every account whose cached balance differs from the sum of its entries (or is negative)."""
    sums = (
        select(LedgerEntry.user_id, func.sum(LedgerEntry.amount).label("total"))
        .group_by(LedgerEntry.user_id)
        .subquery()
    )
    rows = session.execute(
        select(User.id, User.email, User.balance, func.coalesce(sums.c.total, 0))
        .outerjoin(sums, sums.c.user_id == User.id)
        .order_by(User.id)
    ).all()
    return [Mismatch(*row) for row in rows if row[2] != row[3] or row[2] < 0]
