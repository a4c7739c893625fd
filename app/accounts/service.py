"""Sign up, log in, log out, change password; server-side sessions."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.accounts.models import LoginSession, User
from app.config import Settings
from app.db import utcnow
from app.errors import AccountSuspended, UserError

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
MIN_PASSWORD_LENGTH = 8
_COMMON_PASSWORDS = frozenset(
    "password password1 password123 12345678 123456789 1234567890 qwertyui qwerty123 "
    "iloveyou abc12345 letmein1 welcome1 11111111 00000000 sunshine princess football "
    "baseball dragon123 passw0rd trustno1 admin123".split()
)


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    local, _, domain = email.partition("@")
    labels = domain.split(".")
    if not local or "@" in domain or len(labels) < 2 or not all(labels) or " " in email or len(email) > 320:
        raise UserError("Enter a valid email address.", field="email")
    return email


def check_password_strength(password: str, email: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"Choose a password of at least {MIN_PASSWORD_LENGTH} characters.", field="password")
    if len(password) > 1024:
        raise UserError("That password is too long.", field="password")
    lowered = password.lower()
    if lowered in _COMMON_PASSWORDS or len(set(password)) < 4 or lowered == email.split("@")[0]:
        raise UserError("That password is too easy to guess; choose another.", field="password")


def sign_up(session: Session, email: str, password: str) -> User:
    """Create an account with a zero balance. Accounts know nothing of credits: the caller
    grants the welcome credits (credits.service.grant_signup_credits) in the same transaction."""
    email = normalize_email(email)
    check_password_strength(password, email)
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise UserError("An account with this email already exists. Log in instead.", field="email")
    user = User(email=email, password_hash=_hasher.hash(password), balance=0)
    try:
        with session.begin_nested():
            session.add(user)
            session.flush()
    except IntegrityError:
        raise UserError("An account with this email already exists. Log in instead.", field="email") from None
    return user


def authenticate(session: Session, email: str, password: str) -> User:
    wrong = UserError("Wrong email or password.", field="password")
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        _hasher.hash(password)  # spend the same time as a real check, so timing doesn't reveal accounts
        raise wrong
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        raise wrong from None
    if user.suspended_at is not None:  # told only to whoever knows the password
        raise AccountSuspended()
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return user


def ensure_not_suspended(session: Session, user_id: int) -> None:
    """Raise AccountSuspended if an operator suspended the account. Reads the row locked
    (PostgreSQL: FOR UPDATE), so in the caller's transaction a concurrent suspension lands
    either before (refused here) or after (and then finds, and cancels, what this made)."""
    suspended = session.execute(select(User.suspended_at).where(User.id == user_id).with_for_update()).scalar()
    if suspended is not None:
        raise AccountSuspended()


def _token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(session: Session, settings: Settings, user: User) -> str:
    """Create a server-side session; returns the token for the cookie."""
    token = secrets.token_urlsafe(32)
    session.add(
        LoginSession(id=_token_id(token), user_id=user.id, expires_at=utcnow() + timedelta(days=settings.session_days))
    )
    return token


def user_for_token(session: Session, token: str | None) -> User | None:
    if not token:
        return None
    row = session.get(LoginSession, _token_id(token))
    if row is None or row.expires_at <= utcnow():
        return None
    return session.get(User, row.user_id)


def end_session(session: Session, token: str | None) -> None:
    if token:
        session.execute(delete(LoginSession).where(LoginSession.id == _token_id(token)))


def change_password(session: Session, user_id: int, current: str, new: str, *, keep_token: str | None = None) -> None:
    """Change the password and end every other session of this user."""
    user = session.get_one(User, user_id)
    try:
        _hasher.verify(user.password_hash, current)
    except (VerificationError, InvalidHashError):
        raise UserError("Your current password is not right.", field="current_password") from None
    check_password_strength(new, user.email)
    user.password_hash = _hasher.hash(new)
    keep = _token_id(keep_token) if keep_token else ""
    session.execute(delete(LoginSession).where(LoginSession.user_id == user.id, LoginSession.id != keep))
