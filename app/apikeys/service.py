"""Make, list, revoke and check API keys.

A key is ``gch_`` + 8 random characters (its prefix, shown in lists) + a 32-byte URL-safe
secret. The database keeps the prefix and the SHA-256 of the whole key: checking a key is
one indexed lookup of its hash, and a leaked database opens nothing. A key's
``last_used_at`` is written at most once a minute, so a busy script costs reads, not a write
per call.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from app.accounts.models import User
from app.apikeys.models import ApiKey
from app.config import Settings
from app.db import reading, transaction, utcnow
from app.errors import AccountSuspended, NotAuthenticated, NotFound, UserError

KEY_PREFIX = "gch_"
PREFIX_CHARS = 8
_ALPHABET = string.ascii_lowercase + string.digits
MAX_NAME = 100
LAST_USED_EVERY = timedelta(minutes=1)


class InvalidApiKey(NotAuthenticated):
    """A bearer token that is no live key: unknown, malformed or revoked (HTTP 401)."""

    def __init__(self) -> None:
        super().__init__(
            "Invalid API key. Make one on the API keys page, and send it as 'Authorization: Bearer gch_…'."
        )


@dataclass(frozen=True)
class KeyUser:
    """The account a valid key authenticates, and which key did."""

    key_id: int
    prefix: str
    user_id: int
    email: str
    balance: int
    verified: bool
    is_admin: bool


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX) and len(token) > len(KEY_PREFIX) + PREFIX_CHARS


def _clean_name(name: str) -> str:
    name = " ".join((name or "").split())
    if not name:
        raise UserError("Give the key a name, such as the script or machine that will use it.", field="name")
    if len(name) > MAX_NAME:
        raise UserError(f"Keep the name within {MAX_NAME} characters.", field="name")
    return name


def create(session: Session, user_id: int, name: str) -> tuple[ApiKey, str]:
    """A new key for the user; returns its row and the key itself, which is shown once and
    never stored."""
    name = _clean_name(name)
    while True:
        prefix = KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(PREFIX_CHARS))
        if session.scalar(select(ApiKey.id).where(ApiKey.prefix == prefix)) is None:
            break  # 36^8 prefixes: a clash is rare, but the prefix must name one key
    key = prefix + secrets.token_urlsafe(32)
    row = ApiKey(user_id=user_id, name=name, prefix=prefix, key_hash=_hash(key))
    session.add(row)
    session.flush()
    return row, key


def list_keys(session: Session, user_id: int, *, revoked: bool = False) -> list[ApiKey]:
    """The user's keys, newest first (live ones only unless ``revoked``)."""
    query = select(ApiKey).where(ApiKey.user_id == user_id)
    if not revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query.order_by(ApiKey.created_at.desc(), ApiKey.id.desc())))


def revoke(session: Session, user_id: int, key_id: int) -> ApiKey:
    """Revoke the user's own key (another user's is NotFound); the next call with it gets 401."""
    row = session.get(ApiKey, key_id)
    if row is None or row.user_id != user_id:
        raise NotFound("No such API key.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def revoke_prefix(session: Session, prefix: str) -> ApiKey:
    """Revoke a key by its prefix (``gch_abcd1234`` or ``abcd1234``), for operators."""
    prefix = prefix.strip()
    if not prefix.startswith(KEY_PREFIX):
        prefix = KEY_PREFIX + prefix
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix[: len(KEY_PREFIX) + PREFIX_CHARS]))
    if row is None:
        raise NotFound(f"No API key with the prefix {prefix!r}.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def authenticate(settings: Settings, token: str) -> KeyUser:
    """The account behind a bearer token, or :class:`InvalidApiKey` (unknown, revoked, or
    its account deleted); :class:`AccountSuspended` for a suspended account's key. A read,
    plus a write of ``last_used_at`` when the last one is over a minute old."""
    if not looks_like_key(token):
        raise InvalidApiKey()
    with reading(settings) as session:
        found = session.execute(
            select(ApiKey, User)
            .join(User, User.id == ApiKey.user_id)
            .where(ApiKey.key_hash == _hash(token), ApiKey.revoked_at.is_(None))
        ).first()
        if found is None:
            raise InvalidApiKey()
        key, user = found
        if user.deleted_at is not None:
            raise InvalidApiKey()
        if user.suspended_at is not None:
            raise AccountSuspended()
        who = KeyUser(key.id, key.prefix, user.id, user.email, user.balance, user.verified, user.is_admin)
        last_used = key.last_used_at
    now = utcnow()
    if last_used is None or now - last_used >= LAST_USED_EVERY:
        _mark_used(settings, who.key_id, now)
    return who


def _mark_used(settings: Settings, key_id: int, now: datetime) -> None:
    # Conditional, so of several calls in the same minute only one writes.
    with transaction(settings) as session:
        session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id)
            .where(or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= now - LAST_USED_EVERY))
            .values(last_used_at=now)
        )


def forget_user(session: Session, user_id: int) -> None:
    """Delete every key of an account being deleted (app.erasure)."""
    session.execute(delete(ApiKey).where(ApiKey.user_id == user_id))
