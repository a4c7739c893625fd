"""Abuse limits on accounts: failed logins per account and per client address, sign-ups per
address, and a bound on the password-hashing work one web process does at once.

The counting is the ``limits`` library's moving window (exactly "N in any window_s seconds").
Its storage is one setting, ``GOUACHE_RATE_LIMIT_STORAGE_URL``:

- empty (the default): :class:`DatabaseStorage`, rows in the app's own database, so every web
  process (``gouache web --workers N``) and every replica counts together;
- ``redis://host:port/db``: limits' Redis storage (shared, and no write on the database);
- ``memory://``: limits' in-process storage; each web process then counts on its own, so
  N processes allow N times the limits. Fine for one process, or tests.

A login first checks both throttles (no password is hashed for a throttled request), then takes
a turn at password hashing (:data:`PASSWORD_WORK`), checks again (requests that queued for a turn
see the failures recorded meanwhile), verifies, and records a failure before giving the turn
back. So one process lets at most ``password_hash_concurrency`` guesses past a limit.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from argon2 import PasswordHasher
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import MovingWindowSupport, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request

from app.accounts.models import RateLimitHit
from app.config import Settings
from app.db import reading, transaction
from app.errors import ServiceUnavailable, UserError

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def _wait_words(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


class TooManyAttempts(UserError):
    """A throttle is full: HTTP 429, with ``Retry-After`` (seconds) for the answer's header."""

    status_code = 429

    def __init__(self, retry_after: int, *, what: str = "attempts", field: str | None = None):
        self.retry_after = max(1, retry_after)
        super().__init__(f"Too many {what}; try again in {_wait_words(self.retry_after)}.", field=field)


class PasswordWorkBusy(ServiceUnavailable):
    """Every password-hashing turn of this process is taken and the queue is full."""

    retry_after = 2

    def __init__(self) -> None:
        super().__init__("The server is busy; try again in a few seconds.")


# ---- password hashing: a bounded number at once -----------------------------------------------


class WorkGate:
    """At most ``permits`` holders at once, at most ``queue`` more waiting for a turn; one more
    is refused at once (:class:`PasswordWorkBusy`) rather than tying up a thread of the web's
    pool, which the pages need. A thread that already holds a turn may enter again (a login
    holds its turn around the check and the verification)."""

    def __init__(self, permits: int, queue: int):
        self.permits, self.queue = permits, queue
        self._cond = threading.Condition()
        self._active = self._waiting = 0
        self._held = threading.local()

    def resize(self, permits: int, queue: int) -> None:
        with self._cond:
            self.permits, self.queue = permits, queue
            self._cond.notify_all()

    @property
    def active(self) -> int:
        return self._active

    @contextmanager
    def turn(self) -> Iterator[None]:
        if getattr(self._held, "depth", 0):
            self._held.depth += 1
            try:
                yield
            finally:
                self._held.depth -= 1
            return
        with self._cond:
            if self._active >= self.permits:
                if self._waiting >= self.queue:
                    raise PasswordWorkBusy()
                self._waiting += 1
                try:
                    while self._active >= self.permits:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
            self._active += 1
        self._held.depth = 1
        try:
            yield
        finally:
            self._held.depth = 0
            with self._cond:
                self._active -= 1
                self._cond.notify()


# One per process: sized from the settings when the app is made (Throttle).
PASSWORD_WORK = WorkGate(permits=2, queue=16)


class GatedHasher(PasswordHasher):
    """argon2's PasswordHasher whose hash and verify take a turn at :data:`PASSWORD_WORK`."""

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        with PASSWORD_WORK.turn():
            return super().hash(password, salt=salt)

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        with PASSWORD_WORK.turn():
            return super().verify(hash, password)


# ---- the database storage --------------------------------------------------------------------


class DatabaseStorage(Storage, MovingWindowSupport):
    """A ``limits`` storage in the app's database (table ``rate_limit_hits``, one row per hit),
    for the moving window (and, by the base interface, the fixed window). On SQLite a write
    transaction holds the database's write lock; on PostgreSQL a transaction-scoped advisory
    lock on the key makes count-then-insert atomic. Expired rows go on the next write."""

    def __init__(self, settings: Settings, *, clock: Clock = time.time):
        super().__init__(wrap_exceptions=True)
        self.settings, self.clock = settings, clock

    @property
    def base_exceptions(self) -> type[Exception]:
        return SQLAlchemyError

    @contextmanager
    def _locked(self, key: str) -> Iterator[Any]:
        with transaction(self.settings) as session:
            if not self.settings.is_sqlite:
                session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})
            now = self.clock()
            session.execute(delete(RateLimitHit).where(RateLimitHit.expires_at <= now))
            yield session, now

    @staticmethod
    def _live(key: str, now: float, expiry: float):
        return (RateLimitHit.key == key, RateLimitHit.at > now - expiry, RateLimitHit.expires_at > now)

    # moving window

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        with self._locked(key) as (session, now):
            held = session.scalar(select(func.count()).where(*self._live(key, now, expiry)))
            if (held or 0) + amount > limit:
                return False
            session.add_all(RateLimitHit(key=key, at=now, expires_at=now + expiry) for _ in range(amount))
            return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = self.clock()
        with reading(self.settings) as session:
            oldest, count = session.execute(
                select(func.min(RateLimitHit.at), func.count()).where(*self._live(key, now, expiry))
            ).one()
        return (oldest if count else now), count

    # fixed window: the window starts with its first hit, whose expiry every later hit shares

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        with self._locked(key) as (session, now):
            ends = session.scalar(select(func.min(RateLimitHit.expires_at)).where(RateLimitHit.key == key))
            session.add_all(RateLimitHit(key=key, at=now, expires_at=ends or now + expiry) for _ in range(amount))
            session.flush()
            return session.scalar(select(func.count()).where(RateLimitHit.key == key)) or 0

    def get(self, key: str) -> int:
        with reading(self.settings) as session:
            return (
                session.scalar(
                    select(func.count()).where(RateLimitHit.key == key, RateLimitHit.expires_at > self.clock())
                )
                or 0
            )

    def get_expiry(self, key: str) -> float:
        now = self.clock()
        with reading(self.settings) as session:
            ends = session.scalar(
                select(func.min(RateLimitHit.expires_at)).where(RateLimitHit.key == key, RateLimitHit.expires_at > now)
            )
        return ends or now

    def check(self) -> bool:
        try:
            with reading(self.settings) as session:
                session.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True

    def reset(self) -> int | None:
        with transaction(self.settings) as session:
            removed = session.scalar(select(func.count()).select_from(RateLimitHit))
            session.execute(delete(RateLimitHit))
            return removed

    def clear(self, key: str) -> None:
        with transaction(self.settings) as session:
            session.execute(delete(RateLimitHit).where(RateLimitHit.key == key))


def storage_for(settings: Settings, *, clock: Clock = time.time) -> Storage:
    """The storage ``GOUACHE_RATE_LIMIT_STORAGE_URL`` names (empty: the database)."""
    if not settings.rate_limit_storage_url:
        return DatabaseStorage(settings, clock=clock)
    storage = storage_from_string(settings.rate_limit_storage_url, wrap_exceptions=True)
    assert isinstance(storage, Storage), "an async storage cannot serve the web's threads"
    return storage


# ---- who is asking ---------------------------------------------------------------------------


def client_address(request: Request) -> str:
    """The client's address, as uvicorn reports it: the socket's peer, or, from the proxies
    listed in FORWARDED_ALLOW_IPS (uvicorn's --proxy-headers; `gouache web` trusts 127.0.0.1
    by default), the address in X-Forwarded-For. An IPv6 client counts by its /64, which one
    household or machine usually holds whole."""
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _opaque(kind: str, value: str) -> str:
    """A key part that names its account or address without holding it (no personal data)."""
    return f"{kind}:{hashlib.sha256(f'{kind}:{value}'.encode()).hexdigest()[:32]}"


def _account(email: str) -> str:
    return _opaque("account", email.strip().lower())


def _address(address: str) -> str:
    return _opaque("address", address)


# ---- the throttles ---------------------------------------------------------------------------


class Throttle:
    """The account throttles of one app (``app.state.throttle``), from its settings."""

    def __init__(self, settings: Settings, *, clock: Clock = time.time, storage: Storage | None = None):
        self.clock = clock
        self.storage = storage or storage_for(settings, clock=clock)
        self.limiter = MovingWindowRateLimiter(self.storage)
        login_window, signup_window = settings.login_throttle_window_s, settings.signup_throttle_window_s
        self.login_per_account = _limit(settings.login_failures_per_account, login_window, "login-account")
        self.login_per_ip = _limit(settings.login_failures_per_ip, login_window, "login-ip")
        self.signup_per_ip = _limit(settings.signups_per_ip, signup_window, "signup-ip")
        self.api_key = _limit(settings.api_key_requests_per_minute, 60, "api-key")  # per API key
        PASSWORD_WORK.resize(settings.password_hash_concurrency, settings.password_hash_queue)

    def _retry_after(self, item: RateLimitItem, key: str) -> int:
        reset = self.limiter.get_window_stats(item, key).reset_time
        return math.ceil(reset - self.clock())

    @contextmanager
    def _storage_errors(self, what: str = "Logging in") -> Iterator[None]:
        try:
            yield
        except StorageError as exc:  # fail closed, but with a message rather than a 500
            log.error("rate limit storage failed: %s", exc)
            raise ServiceUnavailable(f"{what} is unavailable for a moment; try again shortly.") from None

    def check_login(self, email: str, address: str) -> None:
        """Refuse (:class:`TooManyAttempts`) while either login throttle is full."""
        with self._storage_errors():
            waits = [
                self._retry_after(item, key)
                for item, key in ((self.login_per_account, _account(email)), (self.login_per_ip, _address(address)))
                if item is not None and not self.limiter.test(item, key)
            ]
        if waits:
            raise TooManyAttempts(max(waits), what="failed login attempts")

    def login_failed(self, email: str, address: str) -> None:
        with self._storage_errors():
            for item, key in ((self.login_per_account, _account(email)), (self.login_per_ip, _address(address))):
                if item is not None:
                    self.limiter.hit(item, key)

    def login_succeeded(self, email: str) -> None:
        """The account's own count starts again (its owner is back). The address's count does
        not: an attacker with an account of their own could otherwise clear it between guesses."""
        if self.login_per_account is not None:
            with self._storage_errors():
                self.limiter.clear(self.login_per_account, _account(email))

    def take_signup(self, address: str) -> None:
        """Count a sign-up from ``address``, or refuse it (:class:`TooManyAttempts`) when the
        window is full. Counted atomically before the account is made, so simultaneous
        sign-ups cannot all slip past the check."""
        item = self.signup_per_ip
        if item is None:
            return
        with self._storage_errors():
            if not self.limiter.hit(item, _address(address)):
                raise TooManyAttempts(self._retry_after(item, _address(address)), what="sign-ups from your network")

    def take_api_request(self, key_id: int) -> None:
        """Count one API request made with a key, or refuse it (:class:`TooManyAttempts`)
        while the key's window (``GOUACHE_API_KEY_REQUESTS_PER_MINUTE``) is full."""
        item = self.api_key
        if item is None:
            return
        key = f"key:{key_id}"
        with self._storage_errors("The API"):
            if not self.limiter.hit(item, key):
                raise TooManyAttempts(self._retry_after(item, key), what="requests with this API key")

    @contextmanager
    def login_attempt(self, email: str, address: str) -> Iterator[None]:
        """Around one login: refuse it while throttled (before any hashing), hold a hashing
        turn, check again once it is ours, and count a :class:`UserError` raised inside
        (a wrong password) as a failure before the turn is given back."""
        self.check_login(email, address)
        with PASSWORD_WORK.turn():
            self.check_login(email, address)
            try:
                yield
            except UserError:
                self.login_failed(email, address)
                raise
        self.login_succeeded(email)


def _limit(amount: int, window_s: int, name: str) -> RateLimitItem | None:
    return RateLimitItemPerSecond(amount, window_s, namespace=f"gouache-{name}") if amount else None
