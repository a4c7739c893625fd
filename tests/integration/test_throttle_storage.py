"""The throttles' storages: the database one (SQLite and PostgreSQL, with a clock the test
moves), limits' Redis storage against a real Redis, and limits' memory storage; the
password-hashing gate; which address a request counts under."""

from __future__ import annotations

import threading
import uuid
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from app.accounts import service
from app.accounts.models import RateLimitHit
from app.accounts.throttle import (
    DatabaseStorage,
    PasswordWorkBusy,
    Throttle,
    TooManyAttempts,
    WorkGate,
    client_address,
)
from app.db import reading
from app.errors import ServiceUnavailable
from tests.redis_broker import redis_url  # noqa: F401  (fixture)
from tests.support import make_settings, run_threads


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def rows(settings) -> int:
    with reading(settings) as s:
        return s.scalar(select(func.count()).select_from(RateLimitHit)) or 0


def test_the_database_storage_keeps_a_moving_window(any_db_settings):
    clock = Clock()
    storage = DatabaseStorage(any_db_settings, clock=clock)
    assert storage.check()
    for _ in range(3):
        assert storage.acquire_entry("k", 3, 60)
        clock.now += 10
    assert not storage.acquire_entry("k", 3, 60)  # three in the last 60 s
    assert storage.get_moving_window("k", 3, 60) == (1_800_000_000.0, 3)
    clock.now = 1_800_000_000.0 + 60  # the first leaves the window
    assert storage.get_moving_window("k", 3, 60) == (1_800_000_010.0, 2)
    assert storage.acquire_entry("k", 3, 60)
    assert not storage.acquire_entry("k", 3, 60)
    assert storage.acquire_entry("other", 3, 60)  # keys are counted apart
    storage.clear("k")
    assert storage.get_moving_window("k", 3, 60) == (clock.now, 0)
    clock.now += 3600
    storage.acquire_entry("k", 3, 60)  # a write removes what expired
    assert rows(any_db_settings) == 1


def test_the_database_storage_also_keeps_a_fixed_window(any_db_settings):
    clock = Clock()
    storage = DatabaseStorage(any_db_settings, clock=clock)
    assert [storage.incr("f", 60) for _ in range(3)] == [1, 2, 3]
    clock.now += 30
    assert storage.get("f") == 3 and storage.get_expiry("f") == 1_800_000_060.0
    clock.now += 30
    assert storage.get("f") == 0 and storage.incr("f", 60) == 1
    assert storage.reset() == 1 and rows(any_db_settings) == 0


def test_simultaneous_hits_take_exactly_the_limit(any_db_settings):
    storage = DatabaseStorage(any_db_settings)
    taken = run_threads(12, lambda i: storage.acquire_entry("race", 5, 60))
    assert taken.count(True) == 5 and taken.count(False) == 7


def test_login_and_sign_up_throttles_on_redis(redis_url, tmp_path):  # noqa: F811
    settings = make_settings(tmp_path, rate_limit_storage_url=redis_url, login_failures_per_account=2)
    throttle = Throttle(settings)
    email, address = f"{uuid.uuid4().hex}@example.com", f"redis-{uuid.uuid4().hex}"
    try:
        throttle.check_login(email, address)
        throttle.login_failed(email, address)
        throttle.login_failed(email, address)
        with pytest.raises(TooManyAttempts) as refused:
            throttle.check_login(email, address)
        assert 890 <= refused.value.retry_after <= 900
        throttle.login_succeeded(email)  # the account's count starts again ...
        throttle.check_login(email, address)
        for _ in range(settings.signups_per_ip):
            throttle.take_signup(address)
        with pytest.raises(TooManyAttempts):
            throttle.take_signup(address)
        # ... and a second web process sees the same counts
        other_process = Throttle(settings)
        with pytest.raises(TooManyAttempts):
            other_process.take_signup(address)
    finally:
        throttle.storage.reset()


def test_the_memory_storage_counts_in_this_process(tmp_path):
    throttle = Throttle(make_settings(tmp_path, rate_limit_storage_url="memory://", signups_per_ip=1))
    throttle.take_signup("192.0.2.1")
    with pytest.raises(TooManyAttempts):
        throttle.take_signup("192.0.2.1")


def test_an_unreachable_storage_refuses_with_503_not_500(tmp_path):
    throttle = Throttle(make_settings(tmp_path, rate_limit_storage_url="redis://127.0.0.1:1/0"))
    with pytest.raises(ServiceUnavailable, match="try again shortly"):
        throttle.check_login("ada@example.com", "192.0.2.1")


# ---- the password-hashing gate -----------------------------------------------------------------


def test_the_gate_lets_permits_through_queues_some_and_refuses_the_rest():
    gate = WorkGate(permits=1, queue=1)
    inside, release, queued_done = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:
        with gate.turn():
            inside.set()
            release.wait(10)

    def wait_for_a_turn() -> None:
        with gate.turn():
            queued_done.set()

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    waiter = threading.Thread(target=wait_for_a_turn)
    waiter.start()
    while gate._waiting == 0:  # the waiter is queued
        threading.Event().wait(0.01)
    with pytest.raises(PasswordWorkBusy):
        with gate.turn():
            pass
    release.set()
    holder.join()
    waiter.join()
    assert queued_done.is_set() and gate.active == 0


def test_a_thread_holding_a_turn_may_enter_again():
    gate = WorkGate(permits=1, queue=0)
    with gate.turn(), gate.turn():
        assert gate.active == 1
    assert gate.active == 0


def test_an_over_long_password_is_refused_without_hashing(monkeypatch, db_settings):
    from app.db import transaction
    from app.errors import UserError

    def never(*_args):
        raise AssertionError("hashed an over-long password")

    monkeypatch.setattr(service._hasher, "verify", never)
    monkeypatch.setattr(service._hasher, "hash", never)
    with transaction(db_settings) as session, pytest.raises(UserError, match="Wrong email or password"):
        service.authenticate(session, "nobody@example.com", "x" * (service.MAX_PASSWORD_LENGTH + 1))


@pytest.fixture(scope="module")
def db_settings(tmp_path_factory):
    from tests.support import migrated

    return migrated(make_settings(tmp_path_factory.mktemp("db")))


# ---- the address a request counts under ----------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "counted_as"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),  # one household's /64
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("testclient", "testclient"),
        (None, "unknown"),
    ],
)
def test_a_client_counts_under_its_address(peer, counted_as):
    request = SimpleNamespace(client=SimpleNamespace(host=peer) if peer else None)
    assert client_address(request) == counted_as  # type: ignore[arg-type]
