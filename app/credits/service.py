"""Buying credits, fulfilling purchases exactly once, clawing back refunds and
disputes, the free credits (signup grant, monthly refill), and the billing history.

Stripe is reached only through app.credits.stripe; its events arrive through
app.credits.webhooks, which calls the functions here."""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import Subquery

from app.config import Settings
from app.credits import ledger
from app.credits import stripe as stripe_glue
from app.credits.models import CANCELED, PAID, PENDING, LedgerEntry, Purchase
from app.db import reading, transaction, utcnow
from app.errors import NotFound, ServiceUnavailable, UserError

log = logging.getLogger(__name__)

TEST_PROVIDER, STRIPE_PROVIDER = "test", "stripe"


class PaymentMismatch(Exception):
    """Stripe says something that does not match our purchase row: never credit it."""


class PurchasesNotConfigured(UserError):
    status_code = 403

    def __init__(self) -> None:
        super().__init__("Purchases are not configured on this server, so credits cannot be bought here.")


def checkout_mode(settings: Settings) -> str | None:
    """How packs are paid for: "stripe" (keys set), "test" (no keys, and the operator turned
    the test checkout on: GOUACHE_TEST_CHECKOUT, on under `gouache dev`), or None: no way to
    buy, so nothing can be minted on a deployment that forgot its keys."""
    if settings.stripe_enabled:
        return STRIPE_PROVIDER
    return TEST_PROVIDER if settings.test_checkout else None


# ---- buying -----------------------------------------------------------------------------


def start_purchase(settings: Settings, user_id: int, pack_id: str, *, base_url: str) -> tuple[Purchase, str]:
    """Create a pending purchase and where to send the browser to pay for it."""
    if checkout_mode(settings) is None:
        raise PurchasesNotConfigured()
    pack = settings.pack(pack_id)
    if pack is None:
        raise UserError("That credit pack does not exist.", field="pack")
    purchase = Purchase(
        id=str(uuid.uuid4()),
        user_id=user_id,
        pack_id=pack.id,
        credits=pack.credits,
        amount=pack.amount,
        currency=pack.currency,
        provider=STRIPE_PROVIDER if settings.stripe_enabled else TEST_PROVIDER,
        status=PENDING,
    )
    with transaction(settings) as session:
        session.add(purchase)
    if not settings.stripe_enabled:
        return purchase, f"/billing/test-checkout/{purchase.id}"

    try:
        checkout = stripe_glue.create_checkout_session(settings, purchase, pack.name, base_url=base_url.rstrip("/"))
    except Exception as exc:
        log.exception("could not create a Stripe Checkout Session for purchase %s", purchase.id)
        with transaction(settings) as session:
            session.get_one(Purchase, purchase.id).status = CANCELED
        raise ServiceUnavailable("Payments are unavailable right now; you were not charged. Please try again.") from exc
    with transaction(settings) as session:
        session.get_one(Purchase, purchase.id).checkout_session_id = checkout["id"]
    purchase.checkout_session_id = checkout["id"]
    return purchase, checkout["url"]


def _fulfil(settings: Settings, purchase_id: str, *, payment_intent_id: str | None) -> bool:
    """Credit the purchase and mark it paid; does nothing the second time."""
    with transaction(settings) as session:
        purchase = session.execute(select(Purchase).where(Purchase.id == purchase_id).with_for_update()).scalar_one()
        credited = ledger.credit_purchase(
            session,
            purchase.user_id,
            purchase.credits,
            purchase_id=purchase.id,
            memo=f"Bought {purchase.credits} credits ({purchase.pack_id})",
        )
        if purchase.status != PAID:
            purchase.status = PAID
            purchase.paid_at = utcnow()
        if payment_intent_id and not purchase.payment_intent_id:
            purchase.payment_intent_id = payment_intent_id
        return credited


def fulfil_checkout_session(settings: Settings, session_id: str) -> Purchase | None:
    """Re-read a Checkout Session from Stripe and credit its purchase if it is paid.

    Called by the webhook and by the success redirect, in any order, any number
    of times, concurrently: the ledger key makes the credit happen once. Returns
    the purchase (paid or still pending), or None if the session is not ours.
    """
    checkout = stripe_glue.retrieve_checkout_session(settings, session_id)
    purchase_id = checkout.get("client_reference_id") or (checkout.get("metadata") or {}).get("purchase_id")
    with transaction(settings) as session:
        purchase = session.get(Purchase, purchase_id) if purchase_id else None
    if purchase is None or purchase.provider != STRIPE_PROVIDER:
        log.warning("checkout session %s is not one of our purchases", session_id)
        return None
    if purchase.checkout_session_id and purchase.checkout_session_id != checkout["id"]:
        raise PaymentMismatch(f"session {checkout['id']} does not belong to purchase {purchase.id}")
    if checkout.get("amount_total") != purchase.amount or (checkout.get("currency") or "").lower() != purchase.currency:
        raise PaymentMismatch(
            f"purchase {purchase.id}: Stripe says {checkout.get('amount_total')} {checkout.get('currency')}, "
            f"we sold {purchase.amount} {purchase.currency}"
        )
    if checkout.get("payment_status") != "paid":
        return purchase  # not paid (yet): async payment methods complete later
    _fulfil(settings, purchase.id, payment_intent_id=checkout.get("payment_intent"))
    with transaction(settings) as session:
        return session.get(Purchase, purchase.id)


def complete_test_checkout(settings: Settings, user_id: int, purchase_id: str) -> Purchase:
    """The local test checkout (no Stripe keys, GOUACHE_TEST_CHECKOUT on): pay without money,
    through the same fulfilment."""
    check_test_checkout(settings)
    purchase = get_purchase(settings, user_id, purchase_id)
    if purchase.provider != TEST_PROVIDER:
        raise NotFound("No such test purchase.")
    _fulfil(settings, purchase.id, payment_intent_id=f"test_{purchase.id}")
    return get_purchase(settings, user_id, purchase_id)


def check_test_checkout(settings: Settings) -> None:
    """Refuse (404) unless the test checkout is what this server uses to sell credits."""
    if checkout_mode(settings) != TEST_PROVIDER:
        off = "this server takes real payments" if settings.stripe_enabled else "purchases are not configured"
        raise NotFound(f"The test checkout is off: {off}.")


def get_purchase(settings: Settings, user_id: int, purchase_id: str) -> Purchase:
    with reading(settings) as session:
        purchase = session.get(Purchase, purchase_id)
    if purchase is None or purchase.user_id != user_id:
        raise NotFound("No such purchase.")
    return purchase


# ---- refunds and disputes -------------------------------------------------------------------


def _purchase_for_payment(settings: Settings, payment_intent_id: str | None) -> str | None:
    if not payment_intent_id:
        # A charge made outside Checkout. (Never query "payment_intent_id == None": that is
        # IS NULL, which matches every unpaid purchase.)
        return None
    with transaction(settings) as session:
        found = session.scalar(select(Purchase.id).where(Purchase.payment_intent_id == payment_intent_id))
    if found or not settings.stripe_enabled:
        return found
    # The refund can arrive before the checkout's completion event: ask Stripe which
    # Checkout Session this payment belongs to, and fulfil it first.
    for checkout in stripe_glue.checkout_sessions_for_payment(settings, payment_intent_id):
        purchase = fulfil_checkout_session(settings, checkout["id"])
        if purchase is not None and purchase.status == PAID:
            return purchase.id
    return None


def _take_back(settings: Settings, purchase_id: str, *, kind: str, wanted: int, key: str, memo: str) -> int:
    """Take credits back for a refund (``wanted``: the refunded total so far, as Stripe
    reports it) or a dispute (``wanted``: this dispute's share), never more than the
    purchase has left unaccounted for."""
    with transaction(settings) as session:
        purchase = session.execute(select(Purchase).where(Purchase.id == purchase_id).with_for_update()).scalar_one()
        accounted = purchase.refunded_credits + purchase.disputed_credits
        delta = wanted - purchase.refunded_credits if kind == ledger.REFUND else wanted
        delta = max(0, min(delta, purchase.credits - accounted))
        if delta == 0 or ledger.has_entry(session, key):
            return 0
        taken = ledger.take_back(
            session, purchase.user_id, delta, kind=kind, key=key, memo=memo, reference=f"purchase:{purchase.id}"
        )
        if kind == ledger.REFUND:
            purchase.refunded_credits += delta
        else:
            purchase.disputed_credits += delta
        purchase.credits_clawed_back += taken
        if taken < delta:
            purchase.clawback_shortfall += delta - taken
            purchase.flagged = True
            log.warning("purchase %s: %d credits already spent could not be taken back", purchase.id, delta - taken)
        return taken


def apply_refund(settings: Settings, payment_intent_id: str | None, *, amount_refunded: int) -> int | None:
    """A charge was refunded (``amount_refunded`` is Stripe's running total): take back
    the matching share of the credits. Returns credits taken, None if not ours."""
    purchase_id = _purchase_for_payment(settings, payment_intent_id)
    if purchase_id is None:
        return None
    with transaction(settings) as session:
        purchase = session.get_one(Purchase, purchase_id)
        target = min(purchase.credits, purchase.credits * amount_refunded // purchase.amount)
    return _take_back(
        settings,
        purchase_id,
        kind=ledger.REFUND,
        wanted=target,
        key=f"refund:{purchase_id}:{target}",
        memo="Purchase refunded",
    )


def apply_dispute(settings: Settings, payment_intent_id: str | None, *, dispute_id: str, amount: int) -> int | None:
    """A charge was disputed: take back the disputed share of its credits, once per dispute."""
    purchase_id = _purchase_for_payment(settings, payment_intent_id)
    if purchase_id is None:
        return None
    with transaction(settings) as session:
        purchase = session.get_one(Purchase, purchase_id)
        wanted = min(purchase.credits, -(-purchase.credits * amount // purchase.amount))
    return _take_back(
        settings,
        purchase_id,
        kind=ledger.CHARGEBACK,
        wanted=wanted,
        key=f"chargeback:{dispute_id}",
        memo="Payment disputed",
    )


# ---- free credits ----------------------------------------------------------------------------


def grant_signup_credits(session: Session, settings: Settings, user_id: int) -> bool:
    """The welcome credits, once per account; called in the transaction that creates it."""
    if not settings.signup_grant_credits:
        return False
    return ledger.grant(
        session,
        user_id,
        settings.signup_grant_credits,
        key=f"signup:{user_id}",
        memo="Welcome credits",
        reference="signup",
    )


def forfeit_balance(session: Session, user_id: int) -> int:
    """A deleted account's unused credits, written off by one last ledger entry, so the
    tombstone's balance and the sum of its entries are both 0. Returns how many."""
    left = ledger.balance(session, user_id)
    if left > 0:
        ledger.adjust(
            session,
            user_id,
            -left,
            key=f"closed:{user_id}",
            memo="Account deleted: unused credits forfeited",
            reference="account-deleted",
        )
    return left


def apply_monthly_refill(settings: Settings, user_id: int) -> int:
    """Top the balance up to the monthly free amount, once per calendar month (UTC)."""
    if not settings.monthly_refill_credits:
        return 0
    period = utcnow().strftime("%Y-%m")
    key = f"refill:{user_id}:{period}"
    # Every page and API call asks; once this month's refill is given the answer is a read,
    # which on SQLite takes no write lock (a write transaction would queue behind the worker).
    with reading(settings) as session:
        if ledger.has_entry(session, key):
            return 0
    with transaction(settings) as session:
        if ledger.has_entry(session, key):  # given meanwhile by a concurrent request
            return 0
        return ledger.top_up_to(
            session,
            user_id,
            settings.monthly_refill_credits,
            key=key,
            memo=f"Monthly free credits ({period})",
            reference=f"refill:{period}",
        )


def balance(settings: Settings, user_id: int) -> int:
    with reading(settings) as session:
        return ledger.balance(session, user_id)


# ---- history ---------------------------------------------------------------------------------

HISTORY_PAGE = 25
JOB = "job"  # a history row made of a job's entries (its hold, then its capture or release)


@dataclass(frozen=True)
class HistoryRow:
    """One line of the billing history as people think of it: a job (its hold and its
    settlement together, so a failed job's released hold nets to zero on its own line), or
    one entry without a job (a purchase, grant, refund, chargeback or adjustment)."""

    kind: str  # JOB, or the entry's ledger kind
    entry: LedgerEntry  # the row's first entry: a job's hold, or the entry itself
    amount: int  # the row's effect on the balance: a job's charge (0 once its hold came back)
    balance: int  # the balance after this row (and every row before it)
    settled: str | None = None  # a job's: ledger.CAPTURE (charged), ledger.RELEASE (given back), None (held)
    purchase: Purchase | None = None  # a purchase's row: what was paid

    @property
    def held(self) -> int:
        """What a job's hold reserved (its price at submit)."""
        return -self.entry.amount if self.kind == JOB else 0


@dataclass(frozen=True)
class History:
    rows: list[HistoryRow]
    purchases: list[Purchase]
    page: int
    total: int

    @property
    def has_next(self) -> bool:
        return self.page * HISTORY_PAGE < self.total

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // HISTORY_PAGE))


def _history_groups(user_id: int) -> Subquery:
    """One group per history row: a job's entries together, every other entry alone; each
    placed at its first entry (a job's hold: when it was submitted)."""
    alone = case((LedgerEntry.job_id.is_(None), LedgerEntry.id), else_=0)
    return (
        select(func.min(LedgerEntry.id).label("first_id"), func.sum(LedgerEntry.amount).label("net"))
        .where(LedgerEntry.user_id == user_id)
        .group_by(LedgerEntry.job_id, alone)
        .subquery()
    )


def history(session: Session, user_id: int, page: int = 1) -> History:
    """A page of the user's billing history, newest first, with the balance after each row.

    The balance after a row is the sum of the entries of that row and of every row before it,
    so the newest row's is the balance, and each row's is the one below it plus its amount.
    (A job's release is counted on the job's own row: the credits a failed job held never
    show as spent, even on the rows of grants made while it ran.)"""
    page = max(1, page)
    groups = _history_groups(user_id)
    total = session.scalar(select(func.count()).select_from(groups)) or 0
    found = session.execute(
        select(groups.c.first_id, groups.c.net)
        .order_by(groups.c.first_id.desc())
        .limit(HISTORY_PAGE)
        .offset((page - 1) * HISTORY_PAGE)
    ).all()
    purchases = list(
        session.scalars(
            select(Purchase)
            .where(Purchase.user_id == user_id, Purchase.status == PAID)
            .order_by(Purchase.paid_at.desc())
        )
    )
    if not found:
        return History(rows=[], purchases=purchases, page=page, total=total)
    newest = found[0].first_id
    # int(): PostgreSQL sums a bigint column into a numeric
    balance_after = int(
        session.execute(
            select(func.coalesce(func.sum(groups.c.net), 0)).where(groups.c.first_id <= newest)
        ).scalar_one()
    )
    entries = {e.id: e for e in session.scalars(select(LedgerEntry).where(LedgerEntry.id.in_([r[0] for r in found])))}
    job_ids = [e.job_id for e in entries.values() if e.job_id]
    settled: dict[str | None, str] = dict(
        session.execute(
            select(LedgerEntry.job_id, LedgerEntry.kind).where(
                LedgerEntry.user_id == user_id,
                LedgerEntry.job_id.in_(job_ids),
                LedgerEntry.kind.in_((ledger.CAPTURE, ledger.RELEASE)),
            )
        ).all()
    )
    purchase_ids = [e.reference.removeprefix("purchase:") for e in entries.values() if e.kind == ledger.PURCHASE]
    bought = {
        f"purchase:{p.id}": p
        for p in session.scalars(select(Purchase).where(Purchase.user_id == user_id, Purchase.id.in_(purchase_ids)))
    }
    rows = []
    for first_id, net in found:
        entry = entries[first_id]
        rows.append(
            HistoryRow(
                kind=JOB if entry.job_id else entry.kind,
                entry=entry,
                amount=int(net),
                balance=balance_after,
                settled=settled.get(entry.job_id) if entry.job_id else None,
                purchase=bought.get(entry.reference) if entry.kind == ledger.PURCHASE else None,
            )
        )
        balance_after -= int(net)
    return History(rows=rows, purchases=purchases, page=page, total=total)


def money(amount: int, currency: str) -> str:
    """An amount in a currency's minor unit as people read it: $1,234.00, 9.00 CHF."""
    symbol = {"usd": "$", "eur": "€", "gbp": "£"}.get(currency.lower())
    major = f"{amount / 100:,.2f}"
    return f"{symbol}{major}" if symbol else f"{major} {currency.upper()}"


# ---- the API's ledger: keyset pages, newest first ------------------------------------------

LEDGER_PAGE = 50


def _ledger_cursor(entry_id: int) -> str:
    return base64.urlsafe_b64encode(f"ledger:{entry_id}".encode()).decode().rstrip("=")


def _ledger_position(token: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        kind, _, number = raw.partition(":")
        if kind != "ledger" or not number.isdigit():
            raise ValueError
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise UserError("That page link is broken; start again from the first page.", field="after") from None


def ledger_page(
    session: Session, user_id: int, after: str | None = None, limit: int = LEDGER_PAGE
) -> tuple[list[LedgerEntry], str | None]:
    """One keyset page of the user's ledger entries, newest first, and the next page's cursor."""
    query = select(LedgerEntry).where(LedgerEntry.user_id == user_id)
    if after:
        query = query.where(LedgerEntry.id < _ledger_position(after))
    entries = list(session.scalars(query.order_by(LedgerEntry.id.desc()).limit(limit + 1)))
    more = len(entries) > limit
    entries = entries[:limit]
    return entries, _ledger_cursor(entries[-1].id) if more else None
