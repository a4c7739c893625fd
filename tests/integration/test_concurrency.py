"""Money under concurrency, on SQLite and on PostgreSQL: simultaneous submits never
spend the same credit, a purchase is credited once however many times it is
fulfilled at once, clawbacks never overdraw, and the monthly refill is granted
once. No worker runs: accepted jobs stay queued."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.accounts.models import User
from app.accounts.service import sign_up
from app.credits import ledger, pricing
from app.credits import service as credits
from app.credits.models import PAID, PENDING, LedgerEntry, Purchase
from app.db import transaction
from app.generation.models import Job
from app.main import create_app
from tests.support import PASSWORD, Browserless, run_threads

SUBMITS = 50
SAME_TIME = 20


def new_user(settings, email: str, grant: int | None = None) -> int:
    """A user whose only entry is a signup grant of ``grant`` credits."""
    if grant is not None:
        settings = settings.model_copy(update={"signup_grant_credits": grant})
    with transaction(settings) as session:
        user = sign_up(session, email, PASSWORD)
        credits.grant_signup_credits(session, settings, user.id)  # as the sign-up route does
        return user.id


def consistent_balance(settings, user_id: int) -> int:
    """The cached balance, after checking it against the ledger and the whole audit."""
    with transaction(settings) as session:
        assert ledger.audit(session) == []
        cached = ledger.balance(session, user_id)
        assert cached == ledger.ledger_sum(session, user_id) >= 0
        return cached


def entries(settings, user_id: int, kind: str) -> list[LedgerEntry]:
    with transaction(settings) as session:
        return list(
            session.scalars(
                select(LedgerEntry)
                .where(LedgerEntry.user_id == user_id, LedgerEntry.kind == kind)
                .order_by(LedgerEntry.id)
            )
        )


def test_simultaneous_submits_spend_each_credit_once(any_db_settings):
    """50 API submits at once against a balance that covers exactly k of them."""
    request = {"prompt": "a lighthouse at dusk", "width": 128, "height": 128, "steps": 8, "n": 3}
    price = pricing.price(any_db_settings, width=128, height=128, steps=8, n_images=3, multiplier=1.0)
    assert price >= 2
    k = 17
    start = k * price + price - 1  # k submits fit, a (k+1)th would not
    # money is the limit here, not the per-user cap on active jobs
    settings = any_db_settings.model_copy(update={"signup_grant_credits": start, "max_active_jobs_per_user": 0})
    app = create_app(settings)
    owner = Browserless(app)
    owner.sign_up("racer@example.com")
    with transaction(settings) as session:
        user_id = session.scalar(select(User.id).where(User.email == "racer@example.com"))
    assert consistent_balance(settings, user_id) == start
    # One client per thread (each its own connection to the app), all in the same
    # logged-in browser session.
    cookies = {name: owner.http.cookies[name] for name in ("gouache_session", "gouache_csrf")}
    clients = [TestClient(app, cookies=cookies) for _ in range(SUBMITS)]

    def submit(i: int):
        return clients[i].post(
            "/api/v1/generations",
            json=request,
            headers={"X-CSRF-Token": cookies["gouache_csrf"], "Idempotency-Key": f"race-{i}"},
        )

    try:
        responses = run_threads(SUBMITS, submit)
    finally:
        for client in clients:
            client.close()

    crashed = [r for r in responses if isinstance(r, BaseException)]
    assert crashed == []
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202] * k + [402] * (SUBMITS - k), [r.text for r in responses if r.status_code not in (202, 402)]
    accepted = [r.json() for r in responses if r.status_code == 202]
    assert {job["price"] for job in accepted} == {price}
    for refused in (r.json() for r in responses if r.status_code == 402):
        assert refused["error"].startswith(f"Not enough credits: this costs {price} and your balance is ")
        assert refused["field"] == "credits"

    final = consistent_balance(settings, user_id)
    assert final == start - k * price == price - 1
    with transaction(settings) as session:
        jobs = session.scalars(select(Job).where(Job.user_id == user_id)).all()
    assert sorted(job.id for job in jobs) == sorted(job["id"] for job in accepted)
    assert {job.status for job in jobs} == {"queued"}
    holds = entries(settings, user_id, ledger.HOLD)
    assert sorted(e.job_id for e in holds) == sorted(job["id"] for job in accepted)
    assert {e.amount for e in holds} == {-price}


def test_a_purchase_fulfilled_many_times_at_once_is_credited_once(any_db_settings):
    user_id = new_user(any_db_settings, "buyer@example.com")
    start = consistent_balance(any_db_settings, user_id)
    purchase_id = str(uuid.uuid4())
    with transaction(any_db_settings) as session:
        session.add(
            Purchase(
                id=purchase_id,
                user_id=user_id,
                pack_id="starter",
                credits=1000,
                amount=1000,
                currency="usd",
                provider=credits.TEST_PROVIDER,
                status=PENDING,
            )
        )

    results = run_threads(
        SAME_TIME, lambda i: credits._fulfil(any_db_settings, purchase_id, payment_intent_id=f"test_{purchase_id}")
    )

    assert sorted(results, key=repr) == [False] * (SAME_TIME - 1) + [True]
    assert consistent_balance(any_db_settings, user_id) == start + 1000
    [entry] = entries(any_db_settings, user_id, ledger.PURCHASE)
    assert (entry.amount, entry.idempotency_key) == (1000, f"purchase:{purchase_id}")
    with transaction(any_db_settings) as session:
        purchase = session.get(Purchase, purchase_id)
        assert (purchase.status, purchase.payment_intent_id) == (PAID, f"test_{purchase_id}")
        assert purchase.paid_at is not None


def test_simultaneous_clawbacks_never_overdraw(any_db_settings):
    """20 refunds at once, each wanting 35 of a balance of 200: 200 is taken, the rest is shortfall."""
    wanted, start = 35, 200
    user_id = new_user(any_db_settings, "refunded@example.com", grant=start)

    def refund(i: int) -> int:
        with transaction(any_db_settings) as session:
            return ledger.take_back(
                session,
                user_id,
                wanted,
                kind=ledger.REFUND,
                key=f"refund:test:{i}",
                memo="Purchase refunded",
                reference=f"purchase:test-{i}",
            )

    taken = run_threads(SAME_TIME, refund)

    assert all(isinstance(t, int) for t in taken), taken
    full, rest = divmod(start, wanted)  # 5 refunds get all they want, one gets the last 25
    assert sorted(taken) == [0] * (SAME_TIME - full - 1) + [rest] + [wanted] * full
    assert sum(wanted - t for t in taken) == SAME_TIME * wanted - start  # the shortfall callers record
    assert consistent_balance(any_db_settings, user_id) == 0
    refunds = entries(any_db_settings, user_id, ledger.REFUND)
    assert len(refunds) == SAME_TIME and sum(e.amount for e in refunds) == -start


def test_simultaneous_monthly_refills_grant_once_and_do_not_accumulate(any_db_settings):
    settings = any_db_settings.model_copy(update={"monthly_refill_credits": 500})
    low = new_user(settings, "low@example.com", grant=120)
    high = new_user(settings, "high@example.com", grant=800)

    low_results = run_threads(SAME_TIME, lambda i: credits.apply_monthly_refill(settings, low))
    high_results = run_threads(SAME_TIME, lambda i: credits.apply_monthly_refill(settings, high))

    assert sorted(low_results, key=repr) == [0] * (SAME_TIME - 1) + [380]
    assert high_results == [0] * SAME_TIME
    assert consistent_balance(settings, low) == 500
    assert consistent_balance(settings, high) == 800
    for user_id, amount in ((low, 380), (high, 0)):
        refills = [e for e in entries(settings, user_id, ledger.GRANT) if e.idempotency_key.startswith("refill:")]
        assert [e.amount for e in refills] == [amount]
    with transaction(settings) as session:
        assert session.scalar(select(func.count()).select_from(LedgerEntry)) == 4  # 2 signups, 2 refills


def test_the_same_clawback_delivered_many_times_at_once_is_taken_once(any_db_settings):
    """20 deliveries of one refund (one key) at once: one takes the credits, the others
    take, and report, nothing."""
    wanted, start = 35, 200
    user_id = new_user(any_db_settings, "twice@example.com", grant=start)

    def refund(_: int) -> int:
        with transaction(any_db_settings) as session:
            return ledger.take_back(
                session,
                user_id,
                wanted,
                kind=ledger.REFUND,
                key="refund:test:same",
                memo="Purchase refunded",
                reference="purchase:test",
            )

    taken = run_threads(SAME_TIME, refund)

    assert sorted(taken, key=repr) == [0] * (SAME_TIME - 1) + [wanted]
    assert consistent_balance(any_db_settings, user_id) == start - wanted
    assert [e.amount for e in entries(any_db_settings, user_id, ledger.REFUND)] == [-wanted]
