"""The free monthly refill through the web app, on SQLite and PostgreSQL: the first
request of a month tops a balance up to the monthly amount, once; a balance above
it gets nothing (free credits do not accumulate); the next month it applies again."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from app.accounts.models import User
from app.credits import ledger, pricing
from app.credits import service as credits
from app.credits.models import LedgerEntry
from app.db import transaction
from app.main import create_app
from tests.support import Browserless

REFILL = 500


class Clock:
    """The refill's idea of now, set by the test (so no month ends mid-test)."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock(datetime(2031, 3, 14, 9, 30, tzinfo=UTC))
    monkeypatch.setattr(credits, "utcnow", clock)
    return clock


@pytest.fixture
def refill_settings(any_db_settings):
    return any_db_settings.model_copy(update={"monthly_refill_credits": REFILL})


def signed_up(settings, email: str, grant: int) -> tuple[Browserless, int]:
    """A browser signed up (and not yet back on any page) with a welcome grant of ``grant``."""
    c = Browserless(create_app(settings.model_copy(update={"signup_grant_credits": grant})))
    c.sign_up(email)
    with transaction(settings) as session:
        user_id = session.scalar(select(User.id).where(User.email == email))
    return c, user_id


def balance(settings, user_id: int) -> int:
    with transaction(settings) as session:
        assert ledger.audit(session) == []
        cached = ledger.balance(session, user_id)
        assert cached == ledger.ledger_sum(session, user_id) >= 0
        return cached


def shown_balance(c: Browserless) -> int:
    page = c.get("/")
    assert page.status_code == 200
    return int(re.search(r"<strong>(\d+)</strong> credits</a>", page.text).group(1))


def refills(settings, user_id: int) -> list[tuple[str, int]]:
    with transaction(settings) as session:
        rows = session.execute(
            select(LedgerEntry.reference, LedgerEntry.amount)
            .where(LedgerEntry.user_id == user_id, LedgerEntry.idempotency_key.startswith("refill:"))
            .order_by(LedgerEntry.id)
        ).all()
    return [tuple(row) for row in rows]


def test_a_low_balance_is_topped_up_once_a_month(refill_settings, clock):
    c, user_id = signed_up(refill_settings, "low@example.com", grant=120)
    assert balance(refill_settings, user_id) == 120  # signing up is not yet a visit

    assert shown_balance(c) == REFILL  # the next request tops it up, and shows it
    assert balance(refill_settings, user_id) == REFILL
    assert refills(refill_settings, user_id) == [("refill:2031-03", REFILL - 120)]

    assert shown_balance(c) == REFILL  # a second request changes nothing
    price = pricing.price(refill_settings, width=64, height=64, steps=4, n_images=2, multiplier=1.0)
    spent = c.api_post("/api/v1/generations", {"prompt": "a fox", "width": 64, "height": 64, "steps": 4, "n": 2})
    assert spent.status_code == 202 and spent.json()["price"] == price
    clock.now = datetime(2031, 3, 31, 23, 59, 59, tzinfo=UTC)
    assert shown_balance(c) == REFILL - price  # spending does not earn a second refill this month
    assert refills(refill_settings, user_id) == [("refill:2031-03", REFILL - 120)]

    clock.now = datetime(2031, 4, 1, 0, 0, 1, tzinfo=UTC)  # next month it applies again
    assert shown_balance(c) == REFILL
    assert shown_balance(c) == REFILL
    assert refills(refill_settings, user_id) == [("refill:2031-03", REFILL - 120), ("refill:2031-04", price)]
    assert balance(refill_settings, user_id) == REFILL


def test_a_balance_above_the_refill_gets_nothing(refill_settings, clock):
    c, user_id = signed_up(refill_settings, "rich@example.com", grant=800)
    assert shown_balance(c) == 800
    assert shown_balance(c) == 800
    assert balance(refill_settings, user_id) == 800
    assert all(amount == 0 for _, amount in refills(refill_settings, user_id))

    clock.now = datetime(2031, 4, 2, tzinfo=UTC)
    assert shown_balance(c) == 800  # still nothing: free credits do not accumulate
    assert balance(refill_settings, user_id) == 800
    assert all(amount == 0 for _, amount in refills(refill_settings, user_id))


def test_the_refill_is_off_by_default(any_db_settings, clock):
    assert any_db_settings.monthly_refill_credits == 0
    c, user_id = signed_up(any_db_settings, "plain@example.com", grant=120)
    assert shown_balance(c) == 120
    assert refills(any_db_settings, user_id) == []


def test_a_new_year_is_a_new_month(refill_settings, clock):
    clock.now = datetime(2031, 12, 31, 12, tzinfo=UTC)
    c, user_id = signed_up(refill_settings, "newyear@example.com", grant=0)
    assert shown_balance(c) == REFILL
    fireworks = {"prompt": "fireworks", "width": 64, "height": 64, "steps": 4, "n": 1}
    assert c.api_post("/api/v1/generations", fireworks).status_code == 202
    clock.now = datetime(2032, 1, 1, tzinfo=UTC)
    assert shown_balance(c) == REFILL
    assert [ref for ref, _ in refills(refill_settings, user_id)] == ["refill:2031-12", "refill:2032-01"]
