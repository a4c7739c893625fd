"""Buying credits, told as a buyer's and as Stripe's stories.

The app runs with Stripe keys and the REAL ``stripe`` library, pointed at a small
Stripe API on loopback (tests/integration/fake_stripe.py): no network. Webhooks are
real event payloads signed exactly as Stripe signs them, delivered late, twice, out
of order, concurrently with the success redirect, with bad signatures and stale
timestamps. After every story that moves credits, the books must balance: every
cached balance equals the sum of its ledger entries and none is negative.
"""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.accounts.models import User
from app.credits import ledger
from app.credits import stripe as stripe_glue
from app.credits.models import PAID, PENDING, LedgerEntry, Purchase
from app.db import transaction
from app.main import create_app
from tests.integration.fake_stripe import FakeStripe, payload, sign
from tests.support import Browserless, make_settings, migrated, run_threads

WEBHOOK_SECRET = "whsec_test"
GRANT = 200  # make_settings' signup grant
STARTER = dict(credits=1000, amount=1000)  # the default packs
STUDIO = dict(credits=5500, amount=5000)


@pytest.fixture
def settings(tmp_path, tiny_model_path):
    """No Stripe keys, and the test checkout turned on (as `gouache dev` does)."""
    return migrated(make_settings(tmp_path / "data", tiny_model_path, test_checkout=True))


@pytest.fixture
def fake():
    with FakeStripe() as server:
        yield server


@pytest.fixture
def stripe_settings(tmp_path, tiny_model_path, fake):
    return migrated(
        make_settings(
            tmp_path / "stripe-data",
            tiny_model_path,
            stripe_secret_key="sk_test_x",
            stripe_webhook_secret=WEBHOOK_SECRET,
            stripe_api_base=fake.url,
        )
    )


class Shop:
    """The app with Stripe on: a signed-up buyer's browser, and Stripe's side of the wire."""

    def __init__(self, settings, fake: FakeStripe, email: str = "ada@example.com"):
        self.settings, self.fake = settings, fake
        self.app = create_app(settings)
        self.buyer = self.browser(email)
        self.stripe = TestClient(self.app, follow_redirects=False)  # no cookies: webhooks come from Stripe

    def browser(self, email: str) -> Browserless:
        b = Browserless(self.app)
        b.sign_up(email)
        return b

    def user_id(self, email: str = "ada@example.com") -> int:
        with transaction(self.settings) as s:
            return s.scalar(select(User.id).where(User.email == email))

    def buy(self, pack: str = "starter", buyer: Browserless | None = None) -> Purchase:
        """Click Buy: the app makes a Checkout Session and sends the browser to Stripe's page."""
        response = (buyer or self.buyer).form("/billing/checkout", {"pack": pack})
        assert response.status_code == 303, response.text
        with transaction(self.settings) as s:
            purchase = s.scalars(select(Purchase).order_by(Purchase.created_at.desc())).first()
        assert purchase.status == PENDING and purchase.checkout_session_id
        assert response.headers["location"] == self.fake.session(purchase.checkout_session_id)["url"]
        return purchase

    def deliver(self, event: dict, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None, body=None):
        """Stripe posts the event to the webhook endpoint."""
        body = payload(event) if body is None else body
        return self.stripe.post("/billing/webhook", content=body, headers=sign(body, secret, timestamp=timestamp))

    def complete(self, purchase: Purchase):
        return self.deliver(self.fake.checkout_completed_event(purchase.checkout_session_id))

    def success(self, purchase: Purchase, buyer: Browserless | None = None):
        """Stripe's success redirect lands in the buyer's browser."""
        return (buyer or self.buyer).get(f"/billing/success?session_id={purchase.checkout_session_id}")

    def refund(self, purchase: Purchase, amount_refunded: int):
        pi = self.fake.session(purchase.checkout_session_id)["payment_intent"]
        return self.deliver(
            self.fake.charge_refunded_event(pi, amount=purchase.amount, amount_refunded=amount_refunded)
        )

    def dispute(self, purchase: Purchase, amount: int, dispute_id: str):
        pi = self.fake.session(purchase.checkout_session_id)["payment_intent"]
        return self.deliver(self.fake.dispute_created_event(pi, amount=amount, dispute_id=dispute_id))

    def balance(self, email: str = "ada@example.com") -> int:
        with transaction(self.settings) as s:
            user_id = s.scalar(select(User.id).where(User.email == email))
            cached = ledger.balance(s, user_id)
            assert cached == ledger.ledger_sum(s, user_id)
            return cached

    def purchase(self, purchase_id: str) -> Purchase:
        with transaction(self.settings) as s:
            return s.get(Purchase, purchase_id)

    def entries(self, purchase: Purchase) -> list[tuple[str, int]]:
        with transaction(self.settings) as s:
            rows = s.scalars(
                select(LedgerEntry).where(LedgerEntry.reference == f"purchase:{purchase.id}").order_by(LedgerEntry.id)
            ).all()
            return [(e.kind, e.amount) for e in rows]

    def assert_books_balance(self) -> None:
        with transaction(self.settings) as s:
            assert ledger.audit(s) == []


@pytest.fixture
def shop(stripe_settings, fake) -> Shop:
    return Shop(stripe_settings, fake)


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


# ---- buying: the webhook and the success redirect, in any order ------------------------------------


def test_buy_pay_then_the_webhook_credits_once_and_the_success_redirect_changes_nothing(shop, fake):
    purchase = shop.buy("starter")
    session = fake.session(purchase.checkout_session_id)
    assert session["client_reference_id"] == purchase.id
    assert session["metadata"]["purchase_id"] == purchase.id
    assert (session["amount_total"], session["currency"]) == (STARTER["amount"], "usd")
    assert session["success_url"].endswith("/billing/success?session_id={CHECKOUT_SESSION_ID}")
    assert shop.balance() == GRANT  # nothing until Stripe says it is paid

    pi = fake.pay(purchase.checkout_session_id)
    assert ok(shop.complete(purchase))["outcome"] == "purchase paid"
    assert shop.balance() == GRANT + STARTER["credits"]
    paid = shop.purchase(purchase.id)
    assert paid.status == PAID and paid.payment_intent_id == pi and paid.paid_at is not None

    landed = shop.success(purchase)
    assert landed.status_code == 303 and landed.headers["location"] == f"/billing?paid={purchase.id}"
    page = shop.buyer.get(landed.headers["location"]).text
    assert f"{STARTER['credits']:,} credits were added" in page
    assert shop.balance() == GRANT + STARTER["credits"]
    assert shop.entries(purchase) == [("purchase", STARTER["credits"])]
    shop.assert_books_balance()


def test_the_success_redirect_first_credits_and_the_late_webhook_changes_nothing(shop, fake):
    purchase = shop.buy("studio")
    fake.pay(purchase.checkout_session_id)
    assert shop.success(purchase).status_code == 303
    assert shop.balance() == GRANT + STUDIO["credits"]
    assert ok(shop.complete(purchase))["outcome"] == "purchase paid"
    assert shop.success(purchase).status_code == 303  # the buyer reloads the page
    assert shop.balance() == GRANT + STUDIO["credits"]
    assert shop.entries(purchase) == [("purchase", STUDIO["credits"])]
    shop.assert_books_balance()


def test_the_same_webhook_delivered_five_times_credits_once(shop, fake):
    purchase = shop.buy()
    fake.pay(purchase.checkout_session_id)
    event = fake.checkout_completed_event(purchase.checkout_session_id)
    for _ in range(5):  # Stripe redelivers the same event (same id), signed afresh each time
        assert ok(shop.deliver(event))["received"] is True
    assert shop.balance() == GRANT + STARTER["credits"]
    assert shop.entries(purchase) == [("purchase", STARTER["credits"])]
    shop.assert_books_balance()


def test_success_redirects_and_webhooks_racing_on_threads_credit_exactly_once(shop, fake):
    purchase = shop.buy()
    fake.pay(purchase.checkout_session_id)
    event = fake.checkout_completed_event(purchase.checkout_session_id)
    # one client per thread: ten browser tabs of the buyer, ten Stripe deliveries
    tabs = [TestClient(shop.app, follow_redirects=False, cookies=dict(shop.buyer.http.cookies)) for _ in range(10)]
    hooks = [TestClient(shop.app) for _ in range(10)]
    body = payload(event)

    def one(i: int):
        if i % 2:
            return tabs[i // 2].get(f"/billing/success?session_id={purchase.checkout_session_id}").status_code
        return hooks[i // 2].post("/billing/webhook", content=body, headers=sign(body, WEBHOOK_SECRET)).status_code

    results = run_threads(20, one)
    assert results == [200, 303] * 10
    assert shop.balance() == GRANT + STARTER["credits"]
    assert shop.entries(purchase) == [("purchase", STARTER["credits"])]
    assert shop.purchase(purchase.id).status == PAID
    shop.assert_books_balance()


def test_a_completed_but_unpaid_session_credits_nothing_until_the_payment_succeeds(shop, fake):
    purchase = shop.buy()
    # e.g. a bank debit: the session completes first, the money arrives later
    assert ok(shop.complete(purchase))["outcome"] == "purchase pending"
    landed = shop.success(purchase)
    assert landed.status_code == 303
    page = shop.buyer.get(landed.headers["location"]).text
    assert "credits were added" not in page and "processing" in page
    assert shop.balance() == GRANT and shop.purchase(purchase.id).status == PENDING
    assert shop.buyer.get(f"/billing/receipts/{purchase.id}").status_code == 404  # no receipt for unpaid

    fake.pay(purchase.checkout_session_id)
    later = fake.event("checkout.session.async_payment_succeeded", fake.session(purchase.checkout_session_id))
    assert ok(shop.deliver(later))["outcome"] == "purchase paid"
    assert shop.balance() == GRANT + STARTER["credits"]
    assert shop.buyer.get(f"/billing/receipts/{purchase.id}").status_code == 200
    shop.assert_books_balance()


@pytest.mark.parametrize("tampered", [dict(amount_total=1), dict(currency="eur")], ids=["amount", "currency"])
def test_a_session_that_disagrees_with_the_purchase_is_never_credited(shop, fake, tampered):
    purchase = shop.buy()
    fake.pay(purchase.checkout_session_id)
    fake.tamper(purchase.checkout_session_id, **tampered)
    refused = shop.complete(purchase)
    assert 400 <= refused.status_code < 500  # Stripe keeps retrying; an operator looks at it
    landed = shop.success(purchase)
    assert 400 <= landed.status_code < 500 and "not been credited" in landed.text
    assert shop.balance() == GRANT
    assert shop.purchase(purchase.id).status == PENDING
    assert shop.entries(purchase) == []
    shop.assert_books_balance()


def test_the_success_page_for_a_session_stripe_does_not_know_is_not_found(shop):
    assert shop.buyer.get("/billing/success?session_id=cs_test_made_up").status_code == 404
    assert shop.buyer.get("/billing/success").status_code == 404
    assert shop.balance() == GRANT


def test_when_stripe_cannot_answer_the_webhook_asks_for_a_retry_and_the_buyer_is_told(shop, fake):
    purchase = shop.buy()
    fake.pay(purchase.checkout_session_id)
    fake.busy_for = 2
    assert shop.complete(purchase).status_code == 500  # Stripe will deliver it again later
    landed = shop.success(purchase)
    assert landed.status_code == 503 and "as soon as Stripe confirms it" in landed.text
    assert shop.balance() == GRANT
    assert ok(shop.complete(purchase))["outcome"] == "purchase paid"  # the retry
    assert shop.balance() == GRANT + STARTER["credits"]
    shop.assert_books_balance()


# ---- signatures ------------------------------------------------------------------------------------


def test_bad_stale_and_foreign_signatures_are_refused_and_change_nothing(shop, fake, stripe_settings):
    purchase = shop.buy()
    fake.pay(purchase.checkout_session_id)
    event = fake.checkout_completed_event(purchase.checkout_session_id)
    body = payload(event)
    stale = int(time.time()) - stripe_settings.stripe_webhook_tolerance_s - 60

    forged = body.replace(b'"amount_total":1000', b'"amount_total":1')
    assert forged != body
    attempts = {
        "no signature": shop.stripe.post("/billing/webhook", content=body),
        "garbage header": shop.stripe.post("/billing/webhook", content=body, headers={"Stripe-Signature": "nonsense"}),
        "body changed after signing": shop.stripe.post(
            "/billing/webhook", content=forged, headers=sign(body, WEBHOOK_SECRET)
        ),
        "replayed old timestamp": shop.deliver(event, timestamp=stale),
        "signed with another secret": shop.deliver(event, secret="whsec_someone_else"),
        "signed but not JSON": shop.deliver(event, body=b"not json at all"),
    }
    assert {name: r.status_code for name, r in attempts.items()} == {name: 400 for name in attempts}
    assert shop.balance() == GRANT
    assert fake.requests_to("GET", f"/v1/checkout/sessions/{purchase.checkout_session_id}") == []  # never looked

    assert ok(shop.deliver(event))["outcome"] == "purchase paid"  # the genuine one still works
    assert shop.balance() == GRANT + STARTER["credits"]
    shop.assert_books_balance()


def test_an_unknown_event_type_is_acknowledged_and_changes_nothing(shop, fake):
    purchase = shop.buy()
    fake.pay(purchase.checkout_session_id)
    before = len(fake.requests)
    assert ok(shop.deliver(fake.unknown_event()))["outcome"] == "ignored"
    assert ok(shop.deliver(fake.unknown_event("payment_intent.created")))["outcome"] == "ignored"
    assert len(fake.requests) == before  # did not even ask Stripe
    assert shop.balance() == GRANT and shop.purchase(purchase.id).status == PENDING
    shop.assert_books_balance()


def test_webhooks_are_refused_when_no_endpoint_secret_is_configured(tmp_path, tiny_model_path, fake):
    settings = migrated(
        make_settings(tmp_path / "no-secret", tiny_model_path, stripe_secret_key="sk_test_x", stripe_api_base=fake.url)
    )
    shop = Shop(settings, fake)
    purchase = shop.buy()
    fake.pay(purchase.checkout_session_id)
    assert shop.complete(purchase).status_code == 400
    assert shop.balance() == GRANT


# ---- refunds and disputes ----------------------------------------------------------------------------


def test_a_full_refund_takes_all_the_purchase_credits_back(shop, fake):
    purchase = shop.buy()
    fake.pay(purchase.checkout_session_id)
    ok(shop.complete(purchase))
    assert ok(shop.refund(purchase, STARTER["amount"]))["outcome"] == f"took back {STARTER['credits']}"
    assert shop.balance() == GRANT
    after = shop.purchase(purchase.id)
    assert after.refunded_credits == after.credits_clawed_back == STARTER["credits"]
    assert not after.flagged and after.clawback_shortfall == 0
    assert shop.entries(purchase) == [("purchase", 1000), ("refund", -1000)]
    assert ok(shop.refund(purchase, STARTER["amount"]))["outcome"] == "took back 0"  # redelivered
    assert shop.balance() == GRANT
    receipt = shop.buyer.get(f"/billing/receipts/{purchase.id}").text
    assert "1000 credits (refund or dispute)" in receipt
    shop.assert_books_balance()


def test_partial_refunds_take_back_the_matching_share_of_the_running_total(shop, fake):
    purchase = shop.buy("studio")  # 5500 credits for $50.00
    fake.pay(purchase.checkout_session_id)
    ok(shop.complete(purchase))
    full = GRANT + STUDIO["credits"]

    assert ok(shop.refund(purchase, 2500))["outcome"] == "took back 2750"  # half the money, half the credits
    assert shop.balance() == full - 2750
    assert ok(shop.refund(purchase, 2500))["outcome"] == "took back 0"  # the same total again: nothing more
    assert shop.balance() == full - 2750
    assert ok(shop.refund(purchase, 4000))["outcome"] == "took back 1650"  # 80% in all: only the difference
    assert shop.balance() == full - 4400
    assert ok(shop.refund(purchase, 2500))["outcome"] == "took back 0"  # an older event arriving late
    assert shop.balance() == full - 4400
    assert shop.purchase(purchase.id).refunded_credits == 4400
    assert shop.entries(purchase) == [("purchase", 5500), ("refund", -2750), ("refund", -1650)]
    shop.assert_books_balance()


def test_a_refund_that_arrives_before_the_completion_event_credits_then_takes_back(shop, fake):
    purchase = shop.buy()
    pi = fake.pay(purchase.checkout_session_id)
    # Stripe's events are not ordered: the refund is the first thing the app hears
    assert ok(shop.refund(purchase, 500))["outcome"] == "took back 500"
    assert [r.query for r in fake.requests_to("GET", "/v1/checkout/sessions")] == [{"payment_intent": pi}]
    after = shop.purchase(purchase.id)
    assert after.status == PAID and after.payment_intent_id == pi
    assert shop.balance() == GRANT + 1000 - 500

    ok(shop.complete(purchase))  # the completion event, late
    assert shop.success(purchase).status_code == 303  # and the buyer's redirect
    assert shop.balance() == GRANT + 500
    assert shop.entries(purchase) == [("purchase", 1000), ("refund", -500)]
    shop.assert_books_balance()


def test_a_refund_of_credits_already_spent_empties_the_balance_and_flags_the_purchase(shop, fake):
    purchase = shop.buy()
    fake.pay(purchase.checkout_session_id)
    ok(shop.complete(purchase))
    with transaction(shop.settings) as s:  # the buyer spends most of it on generations
        ledger.hold(s, shop.user_id(), 1150, job_id="job-spent", memo="Generation")
    assert shop.balance() == 50

    assert ok(shop.refund(purchase, STARTER["amount"]))["outcome"] == "took back 50"
    assert shop.balance() == 0  # never negative
    flagged = shop.purchase(purchase.id)
    assert flagged.flagged and flagged.clawback_shortfall == 950 and flagged.credits_clawed_back == 50
    assert flagged.refunded_credits == 1000
    assert ok(shop.refund(purchase, STARTER["amount"]))["outcome"] == "took back 0"
    assert shop.purchase(purchase.id).clawback_shortfall == 950  # not counted twice
    shop.assert_books_balance()


def test_a_dispute_takes_credits_back_once_per_dispute(shop, fake):
    purchase = shop.buy()
    fake.pay(purchase.checkout_session_id)
    ok(shop.complete(purchase))

    assert ok(shop.dispute(purchase, 400, "dp_first"))["outcome"] == "took back 400"
    assert ok(shop.dispute(purchase, 400, "dp_first"))["outcome"] == "took back 0"  # redelivered
    assert shop.balance() == GRANT + 600
    assert shop.purchase(purchase.id).disputed_credits == 400
    # a full refund afterwards only takes what the dispute has not already taken
    assert ok(shop.refund(purchase, STARTER["amount"]))["outcome"] == "took back 600"
    assert ok(shop.dispute(purchase, 1000, "dp_second"))["outcome"] == "took back 0"
    assert shop.balance() == GRANT
    assert shop.entries(purchase) == [("purchase", 1000), ("chargeback", -400), ("refund", -600)]
    shop.assert_books_balance()


def test_refunds_and_disputes_for_payments_that_are_not_ours_change_nothing(shop, fake):
    paid = shop.buy()
    fake.pay(paid.checkout_session_id)
    ok(shop.complete(paid))
    shop.buy()  # another purchase, left unpaid (no payment intent yet)
    before = shop.balance()

    strangers = [
        fake.charge_refunded_event("pi_elsewhere", amount=1000, amount_refunded=1000),
        fake.dispute_created_event("pi_elsewhere", amount=1000),
        # a charge made outside Checkout has no payment intent at all
        fake.charge_refunded_event(None, amount=1000, amount_refunded=1000),
        fake.dispute_created_event(None, amount=1000),
    ]
    assert [ok(shop.deliver(event))["outcome"] for event in strangers] == ["not ours"] * 4
    assert shop.balance() == before
    with transaction(shop.settings) as s:
        assert s.scalars(select(LedgerEntry.kind).where(LedgerEntry.amount < 0)).all() == []
    shop.assert_books_balance()


# ---- creating sessions ------------------------------------------------------------------------------


def test_a_retried_create_sends_the_same_idempotency_key_and_makes_one_session(shop, fake):
    purchase = shop.buy()
    again = stripe_glue.create_checkout_session(shop.settings, purchase, "Starter", base_url="http://testserver")
    assert again["id"] == purchase.checkout_session_id
    assert fake.sessions_created == 1
    keys = [r.headers.get("idempotency-key") for r in fake.requests_to("POST", "/v1/checkout/sessions")]
    assert keys == [f"gouache-purchase-{purchase.id}"] * 2
    sent = fake.requests_to("POST", "/v1/checkout/sessions")[0].params
    assert sent["line_items"][0]["price_data"]["unit_amount"] == "1000"
    assert sent["line_items"][0]["price_data"]["currency"] == "usd"


def test_a_network_error_after_stripe_made_the_session_is_retried_into_the_same_session(shop, fake):
    fake.drop_next_create_response = True  # Stripe makes the session; the answer never arrives
    purchase = shop.buy()  # the stripe library retries by itself, with the same key
    creates = fake.requests_to("POST", "/v1/checkout/sessions")
    assert len(creates) == 2 and fake.sessions_created == 1
    assert {r.headers["idempotency-key"] for r in creates} == {f"gouache-purchase-{purchase.id}"}
    fake.pay(purchase.checkout_session_id)
    ok(shop.complete(purchase))
    assert shop.balance() == GRANT + STARTER["credits"]
    shop.assert_books_balance()


def test_when_stripe_refuses_the_buyer_is_told_and_nothing_is_charged(tmp_path, tiny_model_path, fake):
    settings = migrated(
        make_settings(
            tmp_path / "bad-key",
            tiny_model_path,
            stripe_secret_key="rk_live_wrong",  # the fake answers 401, like Stripe for a bad key
            stripe_webhook_secret=WEBHOOK_SECRET,
            stripe_api_base=fake.url,
        )
    )
    shop = Shop(settings, fake)
    response = shop.buyer.form("/billing/checkout", {"pack": "starter"})
    assert response.status_code == 503 and "you were not charged" in response.text
    with transaction(settings) as s:
        assert s.scalars(select(Purchase.status)).all() == ["canceled"]
    assert fake.sessions_created == 0 and shop.balance() == GRANT


def test_an_unknown_pack_is_refused(shop, fake):
    response = shop.buyer.form("/billing/checkout", {"pack": "platinum"})
    assert response.status_code == 422 and "does not exist" in response.text
    assert fake.requests == []


# ---- the local test checkout --------------------------------------------------------------------------


def test_the_test_checkout_is_refused_when_stripe_keys_are_set(shop, fake):
    purchase = shop.buy()
    for url in (f"/billing/test-checkout/{purchase.id}", "/billing/test-checkout/whatever"):
        assert shop.buyer.get(url).status_code == 404
        assert shop.buyer.form(url, {}).status_code == 404
    assert shop.balance() == GRANT and shop.purchase(purchase.id).status == PENDING
    assert "test mode" not in shop.buyer.get("/billing").text


def test_without_keys_the_test_checkout_credits_once_even_when_paid_twice(user_client, settings):
    billing = user_client.get("/billing").text
    assert "test mode" in billing
    bought = user_client.form("/billing/checkout", {"pack": "starter"})
    assert bought.status_code == 303 and bought.headers["location"].startswith("/billing/test-checkout/")
    checkout_url = bought.headers["location"]
    purchase_id = checkout_url.rsplit("/", 1)[1]
    page = user_client.get(checkout_url)
    assert page.status_code == 200
    assert "Test checkout — no real payment" in page.text and "Pay (test)" in page.text

    for _ in range(2):  # a double click, or Back and pay again
        paid = user_client.form(checkout_url, {})
        assert paid.status_code == 303 and paid.headers["location"] == f"/billing?paid={purchase_id}"
    assert "1,000 credits were added" in user_client.get(f"/billing?paid={purchase_id}").text
    assert "Pay (test)" not in user_client.get(checkout_url).text  # paid: nothing more to pay

    with transaction(settings) as s:
        user_id = s.scalar(select(User.id).where(User.email == "ada@example.com"))
        assert ledger.balance(s, user_id) == GRANT + 1000
        kinds = s.scalars(select(LedgerEntry.kind).where(LedgerEntry.reference == f"purchase:{purchase_id}")).all()
        assert kinds == ["purchase"]
        assert s.get(Purchase, purchase_id).provider == "test"
        assert ledger.audit(s) == []
    receipt = user_client.get(f"/billing/receipts/{purchase_id}")
    assert receipt.status_code == 200 and "Test checkout (no money moved)" in receipt.text
    # Stripe's doors are shut in test mode
    assert user_client.get(f"/billing/success?session_id={purchase_id}").status_code == 404
    assert (
        user_client.http.post("/billing/webhook", content=b"{}", headers={"Stripe-Signature": "t=1,v1=x"}).status_code
        == 400
    )


def test_pay_test_posted_concurrently_still_credits_once(user_client, settings):
    purchase_id = user_client.form("/billing/checkout", {"pack": "pro"}).headers["location"].rsplit("/", 1)[1]
    tabs = [
        TestClient(user_client.http.app, follow_redirects=False, cookies=dict(user_client.http.cookies))
        for _ in range(8)
    ]
    csrf = user_client.csrf
    results = run_threads(
        8, lambda i: tabs[i].post(f"/billing/test-checkout/{purchase_id}", data={"csrf_token": csrf}).status_code
    )
    assert results == [303] * 8
    with transaction(settings) as s:
        user_id = s.scalar(select(User.id).where(User.email == "ada@example.com"))
        assert ledger.balance(s, user_id) == GRANT + 12000
        assert ledger.audit(s) == []


def test_another_user_cannot_see_or_pay_a_purchase_or_its_receipt(user_client, settings, make_client):
    checkout_url = user_client.form("/billing/checkout", {"pack": "starter"}).headers["location"]
    purchase_id = checkout_url.rsplit("/", 1)[1]
    bob = make_client()
    bob.sign_up("bob@example.com")

    assert bob.get(checkout_url).status_code == 404
    assert bob.form(checkout_url, {}).status_code == 404
    with transaction(settings) as s:
        assert s.get(Purchase, purchase_id).status == PENDING  # Bob could not pay it

    user_client.form(checkout_url, {})
    assert user_client.get(f"/billing/receipts/{purchase_id}").status_code == 200
    assert bob.get(f"/billing/receipts/{purchase_id}").status_code == 404
    assert "credits were added" not in bob.get(f"/billing?paid={purchase_id}").text
    with transaction(settings) as s:
        balances = dict(s.execute(select(User.email, User.balance)).all())
        assert balances == {"ada@example.com": GRANT + 1000, "bob@example.com": GRANT}
        assert ledger.audit(s) == []


def test_another_user_landing_on_a_stripe_success_url_sees_nothing(shop, fake):
    purchase = shop.buy()
    fake.pay(purchase.checkout_session_id)
    bob = shop.browser("bob@example.com")
    assert shop.success(purchase, buyer=bob).status_code == 404
    assert bob.get(f"/billing/receipts/{purchase.id}").status_code == 404
    assert shop.balance("bob@example.com") == GRANT
    assert shop.balance() == GRANT + STARTER["credits"]  # paid is paid, whoever's browser confirmed it
    shop.assert_books_balance()
