"""The credit ledger: every movement of credits is an entry, the cached balance
always equals the sum of the entries, a hold never overdraws, and a job is
settled (captured or released) at most once."""

from __future__ import annotations

import threading
import uuid

import pytest
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from sqlalchemy import select

from app.accounts.models import User
from app.accounts.service import sign_up
from app.credits import ledger
from app.credits.models import LedgerEntry
from app.credits.service import grant_signup_credits
from app.db import transaction
from app.errors import InsufficientCredits

PASSWORD = "correct horse battery"


def new_user(settings, email: str) -> int:
    with transaction(settings) as session:
        user = sign_up(session, email, PASSWORD)
        grant_signup_credits(session, settings, user.id)  # as the sign-up route does
        return user.id


def entries(settings, user_id: int, job_id: str | None = None) -> list[LedgerEntry]:
    with transaction(settings) as session:
        query = select(LedgerEntry).where(LedgerEntry.user_id == user_id).order_by(LedgerEntry.id)
        if job_id is not None:
            query = query.where(LedgerEntry.job_id == job_id)
        return list(session.scalars(query))


def balance(settings, user_id: int) -> int:
    """The cached balance, after checking that it equals the ledger's sum."""
    with transaction(settings) as session:
        cached = ledger.balance(session, user_id)
        assert cached == ledger.ledger_sum(session, user_id), "cached balance drifted from the ledger"
        return cached


def hold(settings, user_id: int, amount: int, job_id: str) -> None:
    with transaction(settings) as session:
        ledger.hold(session, user_id, amount, job_id=job_id, memo="test job")


def release(settings, user_id: int, amount: int, job_id: str) -> bool:
    with transaction(settings) as session:
        return ledger.release(session, user_id, amount, job_id=job_id, memo="job failed")


def capture(settings, user_id: int, job_id: str) -> bool:
    with transaction(settings) as session:
        return ledger.capture(session, user_id, job_id=job_id)


def job() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def user(db_settings, new_email) -> int:
    return new_user(db_settings, new_email())


def test_signing_up_grants_the_welcome_credits_as_a_ledger_entry(db_settings, user):
    grant = db_settings.signup_grant_credits
    assert grant > 0
    [entry] = entries(db_settings, user)
    assert (entry.kind, entry.amount, entry.idempotency_key) == ("grant", grant, f"signup:{user}")
    assert entry.job_id is None
    assert balance(db_settings, user) == grant


def test_a_grant_is_applied_once_per_key(db_settings, user):
    start = balance(db_settings, user)
    with transaction(db_settings) as session:
        assert ledger.grant(session, user, 50, key=f"promo:{user}", memo="Launch promo") is True
        assert ledger.grant(session, user, 50, key=f"promo:{user}", memo="Launch promo") is False
    with transaction(db_settings) as session:  # a retry in a later request
        assert ledger.grant(session, user, 50, key=f"promo:{user}", memo="Launch promo") is False
    assert balance(db_settings, user) == start + 50
    assert [e.kind for e in entries(db_settings, user)] == ["grant", "grant"]


def test_a_grant_cannot_take_credits_away(db_settings, user):
    with transaction(db_settings) as session, pytest.raises(ValueError):
        ledger.grant(session, user, -1, key=f"neg:{user}", memo="nope")


def test_a_hold_reserves_the_price_at_once(db_settings, user):
    start = balance(db_settings, user)
    job_id = job()
    hold(db_settings, user, 30, job_id)
    assert balance(db_settings, user) == start - 30
    [entry] = entries(db_settings, user, job_id)
    assert (entry.kind, entry.amount) == ("hold", -30)


def test_a_hold_may_spend_the_whole_balance(db_settings, user):
    start = balance(db_settings, user)
    hold(db_settings, user, start, job())
    assert balance(db_settings, user) == 0


@pytest.mark.parametrize("amount", [0, -5])
def test_a_hold_must_reserve_a_positive_amount(db_settings, user, amount):
    with transaction(db_settings) as session, pytest.raises(ValueError):
        ledger.hold(session, user, amount, job_id=job(), memo="nope")


def test_a_hold_larger_than_the_balance_is_refused_and_writes_nothing(db_settings, user):
    start = balance(db_settings, user)
    job_id = job()
    # Catch the refusal inside the transaction and let it commit: the hold
    # itself must not have written anything, not just be rolled back.
    with transaction(db_settings) as session:
        with pytest.raises(InsufficientCredits) as excinfo:
            ledger.hold(session, user, start + 1, job_id=job_id, memo="too big")
    error = excinfo.value
    assert error.field == "credits"
    assert str(start + 1) in error.message and str(start) in error.message
    assert error.message == f"Not enough credits: this costs {start + 1} and your balance is {start}."
    assert balance(db_settings, user) == start
    assert entries(db_settings, user, job_id) == []


def test_releasing_a_failed_job_gives_the_credits_back_once(db_settings, user):
    start = balance(db_settings, user)
    job_id = job()
    hold(db_settings, user, 40, job_id)
    assert release(db_settings, user, 40, job_id) is True
    assert balance(db_settings, user) == start
    assert release(db_settings, user, 40, job_id) is False  # a retried failure handler
    assert balance(db_settings, user) == start
    assert [(e.kind, e.amount) for e in entries(db_settings, user, job_id)] == [("hold", -40), ("release", 40)]


def test_capturing_a_delivered_job_keeps_the_charge(db_settings, user):
    start = balance(db_settings, user)
    job_id = job()
    hold(db_settings, user, 25, job_id)
    assert capture(db_settings, user, job_id) is True
    assert capture(db_settings, user, job_id) is False
    assert balance(db_settings, user) == start - 25
    assert [(e.kind, e.amount) for e in entries(db_settings, user, job_id)] == [("hold", -25), ("capture", 0)]


def test_a_released_job_cannot_then_be_captured(db_settings, user):
    start = balance(db_settings, user)
    job_id = job()
    hold(db_settings, user, 15, job_id)
    assert release(db_settings, user, 15, job_id) is True
    assert capture(db_settings, user, job_id) is False
    assert balance(db_settings, user) == start
    assert [e.kind for e in entries(db_settings, user, job_id)] == ["hold", "release"]


def test_a_captured_job_cannot_then_be_released(db_settings, user):
    start = balance(db_settings, user)
    job_id = job()
    hold(db_settings, user, 15, job_id)
    assert capture(db_settings, user, job_id) is True
    assert release(db_settings, user, 15, job_id) is False
    assert balance(db_settings, user) == start - 15
    assert [e.kind for e in entries(db_settings, user, job_id)] == ["hold", "capture"]


def test_one_users_holds_do_not_touch_another_users_balance(db_settings, new_email):
    alice, bob = new_user(db_settings, new_email("alice")), new_user(db_settings, new_email("bob"))
    bob_start = balance(db_settings, bob)
    hold(db_settings, alice, balance(db_settings, alice), job())
    assert balance(db_settings, alice) == 0
    assert balance(db_settings, bob) == bob_start


def test_concurrent_holds_never_spend_the_same_credit(db_settings, user):
    """50 submits at the same instant against a balance that covers exactly k of them."""
    threads_n, price = 50, 9
    start = balance(db_settings, user)
    k = start // price
    assert 0 < k < threads_n

    barrier = threading.Barrier(threads_n)
    lock = threading.Lock()
    succeeded: list[str] = []
    refused: list[str] = []
    crashed: list[BaseException] = []

    def submit() -> None:
        job_id = job()
        try:
            barrier.wait(timeout=30)
            hold(db_settings, user, price, job_id)
        except InsufficientCredits:
            with lock:
                refused.append(job_id)
        except BaseException as e:  # noqa: BLE001 -- reported by the assertion below
            with lock:
                crashed.append(e)
        else:
            with lock:
                succeeded.append(job_id)

    threads = [threading.Thread(target=submit) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    assert not any(t.is_alive() for t in threads)
    assert crashed == []
    assert len(succeeded) == k
    assert len(refused) == threads_n - k
    final = balance(db_settings, user)
    assert final == start - k * price >= 0
    holds = [e for e in entries(db_settings, user) if e.kind == "hold"]
    assert sorted(e.job_id for e in holds) == sorted(succeeded)


def machine_user(settings, email: str) -> int:
    """An account with its welcome grant, as signing up makes it, minus the deliberately slow
    password hash (half the machine's time otherwise)."""
    with transaction(settings) as session:
        user = User(email=email, password_hash="!", balance=0)
        session.add(user)
        session.flush()
        ledger.grant(session, user.id, settings.signup_grant_credits, key=f"signup:{user.id}", memo="Welcome credits")
        return user.id


class LedgerMachine(RuleBasedStateMachine):
    """Random sequences of grants, holds, captures, releases, purchases, refunds and
    chargebacks for two users, checked against a model of what each balance should be."""

    def __init__(self, settings):
        super().__init__()
        self.settings = settings
        self.run = uuid.uuid4().hex[:8]  # the database is shared by every example
        self.users = [machine_user(settings, f"machine-{self.run}-{i}@example.com") for i in range(2)]
        self.expected = {u: settings.signup_grant_credits for u in self.users}
        self.grant_keys: set[str] = set()
        # job id -> (user id, amount held), in the order held: job ids are random, so
        # drawing by position must not depend on sorting them.
        self.jobs: dict[str, tuple[int, int]] = {}
        self.settled: dict[str, str] = {}  # job id -> "capture" | "release"
        self.purchases: dict[str, tuple[int, int]] = {}  # purchase id -> (user id, credits)
        self.clawback_keys: set[str] = set()

    @rule(who=st.integers(0, 1), amount=st.integers(0, 80), key=st.integers(0, 3))
    def grant(self, who, amount, key):
        user = self.users[who]
        key = f"machine:{self.run}:grant:{key}"  # a small key space, so repeats happen
        with transaction(self.settings) as session:
            applied = ledger.grant(session, user, amount, key=key, memo="machine grant")
        assert applied == (key not in self.grant_keys)
        if applied:
            self.grant_keys.add(key)
            self.expected[user] += amount

    @rule(who=st.integers(0, 1), amount=st.integers(1, 150))
    def hold(self, who, amount):
        user = self.users[who]
        job_id = job()
        affordable = self.expected[user] >= amount
        try:
            hold(self.settings, user, amount, job_id)
        except InsufficientCredits:
            assert not affordable
        else:
            assert affordable
            self.jobs[job_id] = (user, amount)
            self.expected[user] -= amount

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def capture(self, data):
        job_id = data.draw(st.sampled_from(list(self.jobs)), label="job")
        user, _ = self.jobs[job_id]
        assert capture(self.settings, user, job_id) == (job_id not in self.settled)
        self.settled.setdefault(job_id, "capture")

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def release(self, data):
        job_id = data.draw(st.sampled_from(list(self.jobs)), label="job")
        user, amount = self.jobs[job_id]
        first = job_id not in self.settled
        assert release(self.settings, user, amount, job_id) == first
        if first:
            self.settled[job_id] = "release"
            self.expected[user] += amount

    @rule(who=st.integers(0, 1), credits=st.integers(1, 200), purchase=st.integers(0, 3))
    def buy(self, who, credits, purchase):
        purchase_id = f"{self.run}-{purchase}"  # a small id space: fulfilling a purchase again happens
        user, credits = self.purchases.get(purchase_id, (self.users[who], credits))
        with transaction(self.settings) as session:
            credited = ledger.credit_purchase(session, user, credits, purchase_id=purchase_id, memo="machine purchase")
        assert credited == (purchase_id not in self.purchases), "a purchase must be credited exactly once"
        if credited:
            self.purchases[purchase_id] = (user, credits)
            self.expected[user] += credits

    @rule(
        who=st.integers(0, 1),
        wanted=st.integers(0, 250),
        kind=st.sampled_from((ledger.REFUND, ledger.CHARGEBACK)),
        key=st.integers(0, 3),
    )
    def claw_back(self, who, wanted, kind, key):
        user = self.users[who]
        key = f"machine:{self.run}:{kind}:{key}"  # a repeated webhook reuses its key
        have = self.expected[user]
        with transaction(self.settings) as session:
            taken = ledger.take_back(
                session, user, wanted, kind=kind, key=key, memo="machine clawback", reference=f"machine:{self.run}"
            )
        if key in self.clawback_keys:
            assert taken == 0, "a clawback was applied twice"
            return
        self.clawback_keys.add(key)
        assert taken == min(wanted, have)
        shortfall = wanted - taken  # what the caller records when the user already spent it
        assert (shortfall > 0) == (wanted > have)
        self.expected[user] -= taken

    @invariant()
    def the_audit_finds_nothing(self):
        with transaction(self.settings) as session:
            assert ledger.audit(session) == []

    @invariant()
    def balances_match_the_ledger_and_the_model(self):
        for user in self.users:
            with transaction(self.settings) as session:
                cached = ledger.balance(session, user)
                assert cached >= 0
                assert cached == ledger.ledger_sum(session, user)
                assert cached == self.expected[user]

    @invariant()
    def every_job_is_settled_at_most_once(self):
        with transaction(self.settings) as session:
            settles = session.execute(
                select(LedgerEntry.job_id, LedgerEntry.kind).where(
                    LedgerEntry.user_id.in_(self.users), LedgerEntry.kind.in_(("capture", "release"))
                )
            ).all()
        settled_jobs = [job_id for job_id, _ in settles]
        assert len(settled_jobs) == len(set(settled_jobs)), "a job was settled twice"
        assert dict(settles) == self.settled


def test_the_ledger_stays_consistent_under_any_sequence_of_operations(db_settings):
    run_state_machine_as_test(
        lambda: LedgerMachine(db_settings),
        settings=hyp_settings(max_examples=25, stateful_step_count=25, deadline=None, database=None),
    )
