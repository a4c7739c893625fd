"""The operator's actions (make admin, suspend, unsuspend, grant credits), each recorded
in the audit log in its own transaction, and the reads behind the admin pages: users,
jobs and queues, money and generation cost.

Credits move only through :mod:`app.credits.ledger`; jobs are cancelled through
:mod:`app.generation.service`, which releases their holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import ColumnElement, case, delete, func, literal, select, update
from sqlalchemy.orm import Session, aliased

from app.accounts.models import LoginSession, User
from app.admin.models import AdminAction
from app.config import Settings
from app.credits import ledger
from app.credits.models import PAID, LedgerEntry, Purchase
from app.db import transaction, utcnow
from app.enums import JobStatus
from app.errors import NotFound, UserError
from app.generation import service as generation
from app.generation.catalog import get_catalog
from app.generation.models import Job

PAGE_SIZE = 50
MAX_PAGE = 10_000  # offset pages: an admin pages a few screens, not to the millionth row
MAX_GRANT = 1_000_000  # credits in one grant or correction (the balance is a 32-bit integer)
MAX_REASON = 500

# Audit log actions
MAKE_ADMIN, REVOKE_ADMIN, SUSPEND, UNSUSPEND, GRANT = "make_admin", "revoke_admin", "suspend", "unsuspend", "grant"
ACTION_LABELS = {
    MAKE_ADMIN: "Made admin",
    REVOKE_ADMIN: "Revoked admin",
    SUSPEND: "Suspended",
    UNSUSPEND: "Unsuspended",
    GRANT: "Granted credits",
}


@dataclass(frozen=True)
class Actor:
    """Who acts: an admin (their account) or the ``gouache`` command on the server."""

    label: str
    id: int | None = None


CLI = Actor("cli")


def record(
    session: Session, actor: Actor, action: str, target: User | None, *, detail: str = "", reason: str = ""
) -> AdminAction:
    """Append one audit row, in the caller's transaction (so it exists iff the action does)."""
    row = AdminAction(
        actor=actor.label,
        actor_id=actor.id,
        action=action,
        target_user_id=target.id if target else None,
        target=target.email if target else "",
        detail=detail[:255],
        reason=reason[:MAX_REASON],
    )
    session.add(row)
    session.flush()
    return row


def forget_user(session: Session, user_id: int) -> None:
    """A deleted account's address leaves the audit log too: the rows stay (what was done,
    when, why), naming the tombstone instead. The only change ever made to those rows."""
    tombstone = f"deleted-{user_id}@invalid"
    session.execute(update(AdminAction).where(AdminAction.target_user_id == user_id).values(target=tombstone))
    session.execute(update(AdminAction).where(AdminAction.actor_id == user_id).values(actor=tombstone))


def _reason(reason: str) -> str:
    reason = " ".join((reason or "").split())
    if not reason:
        raise UserError("Give a reason: it goes in the audit log.", field="reason")
    if len(reason) > MAX_REASON:
        raise UserError(f"Keep the reason under {MAX_REASON} characters.", field="reason")
    return reason


def _locked_user(session: Session, user_id: int) -> User:
    user = session.execute(select(User).where(User.id == user_id).with_for_update()).scalar_one_or_none()
    if user is None:
        raise NotFound("No such user.")
    return user


# ---- actions ---------------------------------------------------------------------


def set_admin(settings: Settings, email: str, is_admin: bool, actor: Actor = CLI) -> bool:
    """Make the account with ``email`` an admin (or not); whether anything changed. A
    change is recorded in the audit log."""
    with transaction(settings) as session:
        user = session.scalar(select(User).where(User.email == email.strip().lower()).with_for_update())
        if user is None:
            raise NotFound(f"No account with the email {email.strip()!r}.")
        if user.is_admin == is_admin:
            return False
        user.is_admin = is_admin
        record(session, actor, MAKE_ADMIN if is_admin else REVOKE_ADMIN, user)
        return True


def suspend(settings: Settings, actor: Actor, user_id: int, reason: str) -> int:
    """Suspend the account: it cannot log in or submit jobs, its sessions end now, and its
    queued and running jobs are cancelled with their credits released (a suspended user's
    work should stop using the workers; releasing keeps the ledger fair if the suspension
    is lifted). Returns how many jobs were cancelled.

    The account row is locked first, so a submit racing this either commits its job before
    (and the job is found and cancelled below) or sees the suspension and is refused."""
    reason = _reason(reason)
    with transaction(settings) as session:
        user = _locked_user(session, user_id)
        if user.is_admin:
            raise UserError("Admins cannot be suspended: revoke admin first (gouache users revoke-admin).")
        if user.suspended_at is not None:
            raise UserError("This account is already suspended.")
        user.suspended_at = utcnow()
        user.suspension_reason = reason
        session.execute(delete(LoginSession).where(LoginSession.user_id == user.id))
        active = list(session.scalars(select(Job.id).where(Job.user_id == user.id, Job.status.in_(generation.ACTIVE))))
        detail = f"{len(active)} active job(s) cancelled" if active else ""
        record(session, actor, SUSPEND, user, detail=detail, reason=reason)
    for job_id in active:  # after the commit: each cancel is its own transaction (and releases the hold)
        generation.request_cancel(settings, user_id, job_id)
    return len(active)


def unsuspend(settings: Settings, actor: Actor, user_id: int, reason: str) -> None:
    """Lift a suspension: the user may log in and generate again."""
    reason = _reason(reason)
    with transaction(settings) as session:
        user = _locked_user(session, user_id)
        if user.suspended_at is None:
            raise UserError("This account is not suspended.")
        user.suspended_at = None
        user.suspension_reason = ""
        record(session, actor, UNSUSPEND, user, reason=reason)


def parse_amount(raw: str) -> int:
    """A grant's amount from a form: a whole number of credits, not zero, within bounds."""
    try:
        amount = int((raw or "").strip().replace(",", "").replace("_", ""))
    except ValueError:
        raise UserError("Enter a whole number of credits, e.g. 500 or -200.", field="amount") from None
    if amount == 0 or abs(amount) > MAX_GRANT:
        raise UserError(f"Grant between 1 and {MAX_GRANT:,} credits (negative to take back).", field="amount")
    return amount


def grant(settings: Settings, actor: Actor, user_id: int, amount: int, reason: str, *, request_id: str) -> bool:
    """Give credits (``amount`` > 0: a ``grant`` entry) or take them back (< 0: an
    ``adjustment``, refused if the balance would go below zero), with the reason in the
    ledger and the audit log. ``request_id`` comes from the form: submitting it twice
    grants once. Whether it was applied now."""
    reason = _reason(reason)
    if amount == 0 or abs(amount) > MAX_GRANT:
        raise UserError(f"Grant between 1 and {MAX_GRANT:,} credits (negative to take back).", field="amount")
    request_id = "".join(c for c in (request_id or "") if c.isalnum())[:64]
    if not request_id:
        raise UserError("The form is missing its request id; reload the page and try again.")
    key = f"admin:grant:{request_id}"
    with transaction(settings) as session:
        user = _locked_user(session, user_id)
        memo, reference = f"From the operator: {reason}", f"admin:{reason}"[:255]
        if amount > 0:
            if user.balance + amount > 2**31 - 1:
                raise UserError("That would make the balance larger than an account can hold.", field="amount")
            written = ledger.grant(session, user.id, amount, key=key, memo=memo, reference=reference)
        else:
            written = ledger.adjust(session, user.id, amount, key=key, memo=memo, reference=reference)
        if written:
            record(session, actor, GRANT, user, detail=f"{amount:+,} credits", reason=reason)
        return written


# ---- users -----------------------------------------------------------------------

USER_FILTERS = {"all": "All", "active": "Active", "suspended": "Suspended", "admins": "Admins"}


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):  # noqa: UP046  (Python 3.11: no PEP 695 generics yet)
    rows: list[T]
    page: int
    has_next: bool


def _page(page: int) -> int:
    return min(max(1, page), MAX_PAGE)


def find_users(session: Session, query: str = "", status: str = "all", page: int = 1) -> Page[User]:
    """Accounts whose email contains ``query``, newest first, one page."""
    page = _page(page)
    stmt = select(User)
    query = query.strip().lower()[:320]
    if query:
        stmt = stmt.where(User.email.contains(query, autoescape=True))
    if status == "active":
        stmt = stmt.where(User.suspended_at.is_(None))
    elif status == "suspended":
        stmt = stmt.where(User.suspended_at.is_not(None))
    elif status == "admins":
        stmt = stmt.where(User.is_admin.is_(True))
    rows = list(session.scalars(stmt.order_by(User.id.desc()).limit(PAGE_SIZE + 1).offset((page - 1) * PAGE_SIZE)))
    return Page(rows[:PAGE_SIZE], page, len(rows) > PAGE_SIZE)


@dataclass(frozen=True)
class UserDetail:
    user: User
    entries: list[LedgerEntry]
    jobs: list[Job]
    actions: list[AdminAction]
    job_counts: dict[str, int]
    sessions: int
    spent: int


def user_detail(session: Session, user_id: int) -> UserDetail:
    """One account as the admin page shows it: recent ledger entries, jobs, and audit rows."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("No such user.")
    entries = session.scalars(
        select(LedgerEntry).where(LedgerEntry.user_id == user_id).order_by(LedgerEntry.id.desc()).limit(15)
    )
    jobs = session.scalars(select(Job).where(Job.user_id == user_id).order_by(Job.created_at.desc()).limit(10))
    actions = session.scalars(
        select(AdminAction).where(AdminAction.target_user_id == user_id).order_by(AdminAction.id.desc()).limit(20)
    )
    counts = dict(
        session.execute(select(Job.status, func.count()).where(Job.user_id == user_id).group_by(Job.status)).all()
    )
    sessions = session.scalar(
        select(func.count())
        .select_from(LoginSession)
        .where(LoginSession.user_id == user_id, LoginSession.expires_at > utcnow())
    )
    return UserDetail(
        user=user,
        entries=list(entries),
        jobs=list(jobs),
        actions=list(actions),
        job_counts={status: counts.get(status, 0) for status in JobStatus},
        sessions=sessions or 0,
        spent=captured(session, user_id),
    )


# ---- jobs and queues ---------------------------------------------------------------


@dataclass(frozen=True)
class JobRow:
    job: Job
    email: str


def jobs_by_state(session: Session, state: str | None = None, page: int = 1) -> Page[JobRow]:
    """Jobs newest first (of one state, or all), with their owner's email and error."""
    page = _page(page)
    stmt = select(Job, User.email).join(User, User.id == Job.user_id)
    if state:
        stmt = stmt.where(Job.status == state)
    rows = session.execute(
        stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(PAGE_SIZE + 1).offset((page - 1) * PAGE_SIZE)
    ).all()
    return Page([JobRow(job, email) for job, email in rows[:PAGE_SIZE]], page, len(rows) > PAGE_SIZE)


def state_counts(session: Session) -> dict[str, int]:
    """How many jobs are in each state (every state named, zeros included)."""
    counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    return {status.value: counts.get(status, 0) for status in JobStatus}


@dataclass
class Queue:
    """One model's queue, as the jobs table sees it: jobs waiting (sent or not) and running."""

    model: str
    name: str
    queued: int = 0
    running: int = 0
    oldest_queued_at: datetime | None = None

    def waiting_s(self, now: datetime) -> float | None:
        return (now - self.oldest_queued_at).total_seconds() if self.oldest_queued_at else None


def queues(session: Session, settings: Settings) -> list[Queue]:
    """Queue depth per model: every catalog model (zeros included), then any model that
    still has active jobs but has left the catalog. Only active jobs are read (by the
    status index)."""
    catalog = get_catalog(settings)
    found = {m.id: Queue(m.id, m.name) for m in catalog}
    rows = session.execute(
        select(Job.model, Job.status, func.count(), func.min(Job.created_at))
        .where(Job.status.in_(generation.ACTIVE))
        .group_by(Job.model, Job.status)
    ).all()
    for model, status, count, oldest in rows:
        queue = found.setdefault(model, Queue(model, f"{model} (not in the catalog)"))
        if status == JobStatus.QUEUED:
            queue.queued, queue.oldest_queued_at = count, oldest
        else:
            queue.running = count
    return list(found.values())


def held_now(session: Session) -> int:
    """Credits held right now for jobs not yet settled (each active job holds its price)."""
    return session.scalar(select(func.coalesce(func.sum(Job.price), 0)).where(Job.status.in_(generation.ACTIVE))) or 0


# ---- money -----------------------------------------------------------------------


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def day_of(session: Session, column: Any) -> ColumnElement[str]:
    """The UTC day of a timestamp column, as 'YYYY-MM-DD', on SQLite and PostgreSQL."""
    if _dialect(session) == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", column)


def seconds_between(session: Session, start: Any, end: Any) -> ColumnElement[float]:
    """``end - start`` in seconds (a float), on SQLite and PostgreSQL."""
    if _dialect(session) == "postgresql":
        return cast(ColumnElement[float], func.extract("epoch", end - start))
    return (func.julianday(end) - func.julianday(start)) * literal(86400.0)


def captured(session: Session, user_id: int | None = None) -> int:
    """Credits charged (of one user, or everyone): the holds of jobs whose settlement was
    a capture (a zero-amount marker entry)."""
    hold, settle = aliased(LedgerEntry), aliased(LedgerEntry)
    stmt = (
        select(func.coalesce(func.sum(-hold.amount), 0))
        .select_from(settle)
        .join(hold, (hold.job_id == settle.job_id) & (hold.kind == ledger.HOLD))
        .where(settle.kind == ledger.CAPTURE)
    )
    if user_id is not None:
        stmt = stmt.where(settle.user_id == user_id)
    return session.scalar(stmt) or 0


@dataclass
class Day:
    day: str
    sold: int = 0  # credits bought (ledger purchase entries), test checkout included
    sold_test: int = 0  # of which through the test checkout (no money moved)
    spent: int = 0  # credits charged for finished jobs (captured holds), by the day of capture
    granted: int = 0  # free credits: signup, refill, operators' grants
    revenue: dict[str, int] = field(default_factory=dict)  # currency -> minor units, Stripe only

    @property
    def busy(self) -> bool:
        """Anything sold, spent, granted or paid on this day."""
        return bool(self.sold or self.spent or self.granted or self.revenue)


@dataclass(frozen=True)
class Money:
    days: list[Day]
    totals: Day
    since: date


def money(session: Session, days: int = 30) -> Money:
    """Credits sold, spent and granted, and revenue, per UTC day over the last ``days``
    days (today included), newest first; a few grouped queries."""
    today = utcnow().date()
    since_day = today - timedelta(days=days - 1)
    since = datetime.combine(since_day, time.min, tzinfo=UTC)
    table = {(today - timedelta(days=i)).isoformat(): Day((today - timedelta(days=i)).isoformat()) for i in range(days)}

    entry_day = day_of(session, LedgerEntry.created_at)
    kinds = session.execute(
        select(entry_day, LedgerEntry.kind, func.sum(LedgerEntry.amount))
        .where(LedgerEntry.created_at >= since, LedgerEntry.kind.in_((ledger.PURCHASE, ledger.GRANT)))
        .group_by(entry_day, LedgerEntry.kind)
    ).all()
    for day, kind, amount in kinds:
        row = table.get(day)
        if row is not None:
            if kind == ledger.PURCHASE:
                row.sold += amount or 0
            else:
                row.granted += amount or 0

    hold, settle = aliased(LedgerEntry), aliased(LedgerEntry)
    settle_day = day_of(session, settle.created_at)
    spent = session.execute(
        select(settle_day, func.sum(-hold.amount))
        .select_from(settle)
        .join(hold, (hold.job_id == settle.job_id) & (hold.kind == ledger.HOLD))
        .where(settle.kind == ledger.CAPTURE, settle.created_at >= since)
        .group_by(settle_day)
    ).all()
    for day, amount in spent:
        if day in table:
            table[day].spent += amount or 0

    paid_day = day_of(session, Purchase.paid_at)
    purchases = session.execute(
        select(
            paid_day,
            Purchase.currency,
            func.sum(case((Purchase.provider == "test", 0), else_=Purchase.amount)),
            func.sum(case((Purchase.provider == "test", Purchase.credits), else_=0)),
        )
        .where(Purchase.status == PAID, Purchase.paid_at >= since)
        .group_by(paid_day, Purchase.currency)
    ).all()
    for day, currency, amount, test_credits in purchases:
        row = table.get(day)
        if row is not None:
            if amount:
                row.revenue[currency] = row.revenue.get(currency, 0) + amount
            row.sold_test += test_credits or 0

    totals = Day("total")
    for row in table.values():
        totals.sold += row.sold
        totals.sold_test += row.sold_test
        totals.spent += row.spent
        totals.granted += row.granted
        for currency, amount in row.revenue.items():
            totals.revenue[currency] = totals.revenue.get(currency, 0) + amount
    return Money(days=sorted(table.values(), key=lambda d: d.day, reverse=True), totals=totals, since=since_day)


@dataclass(frozen=True)
class ModelCost:
    """What a model's finished jobs took: to price its images above what they cost."""

    model: str
    jobs: int
    images: int
    seconds: float  # summed over jobs, from the last attempt's start to the finish
    credits: int  # charged for those jobs

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.images if self.images else 0.0

    @property
    def credits_per_image(self) -> float:
        return self.credits / self.images if self.images else 0.0

    @property
    def credits_per_second(self) -> float:
        return self.credits / self.seconds if self.seconds > 0 else 0.0


def generation_costs(session: Session, days: int = 30) -> list[ModelCost]:
    """Per model, the succeeded jobs finished in the last ``days`` days: images made,
    worker seconds (``finished_at - started_at`` of the attempt that made them, model
    loading included, since a worker pays for it too) and credits charged."""
    since = utcnow() - timedelta(days=days)
    seconds = seconds_between(session, Job.started_at, Job.finished_at)
    rows = session.execute(
        select(Job.model, func.count(), func.sum(Job.n_images), func.sum(seconds), func.sum(Job.price))
        .where(Job.status == JobStatus.SUCCEEDED, Job.finished_at >= since, Job.started_at.is_not(None))
        .group_by(Job.model)
        .order_by(Job.model)
    ).all()
    return [
        ModelCost(model, jobs, int(images or 0), max(0.0, float(total or 0)), int(credits or 0))
        for model, jobs, images, total, credits in rows
    ]


# ---- the audit log -------------------------------------------------------------------


def audit_log(session: Session, page: int = 1) -> Page[AdminAction]:
    """Every admin action, newest first, one page."""
    page = _page(page)
    rows = list(
        session.scalars(
            select(AdminAction).order_by(AdminAction.id.desc()).limit(PAGE_SIZE + 1).offset((page - 1) * PAGE_SIZE)
        )
    )
    return Page(rows[:PAGE_SIZE], page, len(rows) > PAGE_SIZE)
