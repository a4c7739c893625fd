"""The only code that writes ledger entries and the cached balance.

Every entry carries a unique idempotency key, so applying the same event twice
writes one row. The cached ``users.balance`` changes in the same transaction as
its entry, and a hold is a conditional update (``balance >= price``), which is
atomic on SQLite and PostgreSQL alike: a balance can never go negative and two
concurrent holds can never spend the same credit.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.accounts.models import User
from app.credits.models import LedgerEntry  # noqa: F401  (re-exported for callers)
from app.errors import InsufficientCredits

GRANT, HOLD, CAPTURE, RELEASE = "grant", "hold", "capture", "release"


def balance(session: Session, user_id: int) -> int:
    return session.scalar(select(User.balance).where(User.id == user_id)) or 0


def ledger_sum(session: Session, user_id: int) -> int:
    return session.scalar(select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(LedgerEntry.user_id == user_id))


def _entry_exists(session: Session, key: str) -> bool:
    return session.scalar(select(LedgerEntry.id).where(LedgerEntry.idempotency_key == key)) is not None


def _append(session: Session, *, user_id: int, kind: str, amount: int, key: str, job_id: str | None, memo: str) -> bool:
    """Write one entry unless its key exists; returns whether it was written."""
    if _entry_exists(session, key):
        return False
    try:
        with session.begin_nested():
            session.add(
                LedgerEntry(user_id=user_id, kind=kind, amount=amount, idempotency_key=key, job_id=job_id, memo=memo)
            )
            session.flush()
    except IntegrityError:
        return False  # a concurrent writer applied the same key first
    if amount:
        session.execute(update(User).where(User.id == user_id).values(balance=User.balance + amount))
    return True


def grant(session: Session, user_id: int, amount: int, *, key: str, memo: str) -> bool:
    if amount < 0:
        raise ValueError("a grant adds credits")
    return _append(session, user_id=user_id, kind=GRANT, amount=amount, key=key, job_id=None, memo=memo)


def hold(session: Session, user_id: int, amount: int, *, job_id: str, memo: str) -> None:
    """Reserve ``amount`` credits for a job, or raise InsufficientCredits."""
    if amount <= 0:
        raise ValueError("a hold reserves a positive amount")
    taken = session.execute(
        update(User).where(User.id == user_id, User.balance >= amount).values(balance=User.balance - amount)
    ).rowcount
    if taken != 1:
        have = balance(session, user_id)
        raise InsufficientCredits(
            f"Not enough credits: this costs {amount} and your balance is {have}.", field="credits"
        )
    session.add(
        LedgerEntry(
            user_id=user_id, kind=HOLD, amount=-amount, idempotency_key=f"job:{job_id}:hold", job_id=job_id, memo=memo
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
        job_id=job_id,
        memo="Charge captured",
    )


def release(session: Session, user_id: int, amount: int, *, job_id: str, memo: str) -> bool:
    """The job failed: give the held credits back. Shares capture's key, so a job
    is settled once, one way or the other."""
    return _append(
        session, user_id=user_id, kind=RELEASE, amount=amount, key=f"job:{job_id}:settle", job_id=job_id, memo=memo
    )
