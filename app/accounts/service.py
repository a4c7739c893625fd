"""Sign up, log in, log out, change password; server-side sessions; the links sent by email
(confirm the address, reset the password, confirm a new address); closing an account."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any, cast

from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import CursorResult, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.accounts.models import CHANGE_EMAIL, RESET, VERIFY, AccountToken, LoginSession, User
from app.accounts.throttle import GatedHasher
from app.config import Settings
from app.db import utcnow
from app.errors import AccountSuspended, LinkError, UserError

# argon2id with the library's current recommended parameters; a bounded number at once per
# process (app/accounts/throttle.py), so hashing cannot be used to burn the server's CPU
_hasher = GatedHasher()
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # longer ones are refused before any hashing
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
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UserError("That password is too long.", field="password")
    lowered = password.lower()
    if lowered in _COMMON_PASSWORDS or len(set(password)) < 4 or lowered == email.split("@")[0]:
        raise UserError("That password is too easy to guess; choose another.", field="password")


class EmailTaken(UserError):
    """Sign-up with an address that has an account. The route answers as for a new one
    (and mails the owner), so the form never tells who has an account."""

    def __init__(self, existing: User):
        super().__init__("An account with this email already exists. Log in instead.", field="email")
        self.existing = existing


def sign_up(session: Session, email: str, password: str) -> User:
    """Create an account with a zero balance and an unconfirmed address. Accounts know
    nothing of credits: the welcome credits come when the address is confirmed
    (credits.service.grant_signup_credits, in the transaction of :func:`verify_email`).
    Raises :class:`EmailTaken` for an address that has an account, after the same work."""
    email = normalize_email(email)
    check_password_strength(password, email)
    password_hash = _hasher.hash(password)  # first, whether or not the address is taken: the same time
    existing = session.scalar(select(User).where(User.email == email))
    if existing is not None:
        raise EmailTaken(existing)
    user = User(email=email, password_hash=password_hash, balance=0)
    try:
        with session.begin_nested():
            session.add(user)
            session.flush()
    except IntegrityError:  # made meanwhile by a concurrent sign-up
        raise EmailTaken(session.scalars(select(User).where(User.email == email)).one()) from None
    return user


def authenticate(session: Session, email: str, password: str) -> User:
    wrong = UserError("Wrong email or password.", field="password")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise wrong  # no account has one this long: refused without hashing it
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


def end_all_sessions(session: Session, user_id: int) -> None:
    """Log this user out everywhere."""
    session.execute(delete(LoginSession).where(LoginSession.user_id == user_id))


def rotate_session(session: Session, settings: Settings, user: User, old_token: str | None) -> str:
    """A fresh token for a login: the browser's earlier session (if any) ends, so a token
    planted in the browser before the login (session fixation) is worth nothing after it."""
    end_session(session, old_token)
    return start_session(session, settings, user)


def check_password(session: Session, user_id: int, password: str, *, field: str = "password") -> User:
    """The user, if ``password`` is theirs (before a change of address or a deletion)."""
    user = session.get_one(User, user_id)
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        raise UserError("Your current password is not right.", field=field) from None
    return user


def change_password(session: Session, user_id: int, current: str, new: str, *, keep_token: str | None = None) -> None:
    """Change the password and end every session of this user but ``keep_token``'s (the
    route keeps none: it starts a new session for the browser that made the change)."""
    user = check_password(session, user_id, current, field="current_password")
    check_password_strength(new, user.email)
    user.password_hash = _hasher.hash(new)
    keep = _token_id(keep_token) if keep_token else ""
    session.execute(delete(LoginSession).where(LoginSession.user_id == user.id, LoginSession.id != keep))
    session.execute(delete(AccountToken).where(AccountToken.user_id == user.id, AccountToken.purpose == RESET))


# ---- links sent by email ------------------------------------------------------------------


def issue_link(session: Session, settings: Settings, user: User, purpose: str, *, email: str | None = None) -> str:
    """A new single-use token for a link to ``email`` (default: the account's); returns the
    token for the URL (the database keeps its hash). A new reset link voids the earlier ones."""
    if purpose == RESET:
        session.execute(delete(AccountToken).where(AccountToken.user_id == user.id, AccountToken.purpose == RESET))
    lifetime = (
        timedelta(minutes=settings.password_reset_minutes)
        if purpose == RESET
        else timedelta(hours=settings.email_verify_hours)
    )
    token = secrets.token_urlsafe(32)
    session.add(
        AccountToken(
            id=_token_id(token),
            user_id=user.id,
            purpose=purpose,
            email=email or user.email,
            expires_at=utcnow() + lifetime,
        )
    )
    return token


def may_send_link(session: Session, settings: Settings, user_id: int, purpose: str) -> bool:
    """Whether no link for ``purpose`` went to this account within the cooldown."""
    since = utcnow() - timedelta(seconds=settings.email_link_cooldown_s)
    recent = session.scalar(
        select(AccountToken.id).where(
            AccountToken.user_id == user_id, AccountToken.purpose == purpose, AccountToken.created_at > since
        )
    )
    return recent is None


def _link(session: Session, token: str, purpose: str) -> AccountToken:
    row = session.get(AccountToken, _token_id(token)) if token else None
    if row is None or row.purpose != purpose:
        raise LinkError("This link is not valid, or it was already used.")
    if row.expires_at <= utcnow():
        raise LinkError("This link has expired.", expired=True)
    return row


def check_link(session: Session, token: str, purpose: str) -> AccountToken:
    """The link's row if it would work now (nothing is used up): for the page a link opens."""
    row = _link(session, token, purpose)
    if purpose != CHANGE_EMAIL and row.email != session.get_one(User, row.user_id).email:
        raise LinkError("This link was sent to an address this account no longer has.")
    return row


def _use_link(session: Session, token: str, purpose: str) -> tuple[AccountToken, User]:
    row = check_link(session, token, purpose)
    # Used once: the DELETE decides between two clicks at the same moment.
    gone = cast(CursorResult[Any], session.execute(delete(AccountToken).where(AccountToken.id == row.id)))
    if gone.rowcount != 1:
        raise LinkError("This link is not valid, or it was already used.")
    return row, session.get_one(User, row.user_id)


def verify_email(session: Session, token: str) -> User:
    """Follow a confirmation link: the account's address is confirmed (the caller gives the
    welcome credits in this transaction)."""
    _row, user = _use_link(session, token, VERIFY)
    if user.email_verified_at is None:
        user.email_verified_at = utcnow()
    return user


def reset_password(session: Session, token: str, new: str) -> User:
    """Follow a reset link with a new password: every session of the account ends, and the
    address counts as confirmed (the link reached it)."""
    _row, user = _use_link(session, token, RESET)
    check_password_strength(new, user.email)
    user.password_hash = _hasher.hash(new)
    if user.email_verified_at is None:
        user.email_verified_at = utcnow()
    end_all_sessions(session, user.id)
    return user


def user_by_email(session: Session, email: str) -> User | None:
    """The live account with this address, if any (for the "forgot password" form)."""
    try:
        email = normalize_email(email)
    except UserError:
        return None
    return session.scalar(select(User).where(User.email == email, User.deleted_at.is_(None)))


def request_email_change(session: Session, settings: Settings, user_id: int, password: str, new_email: str) -> str:
    """Check the password and the new address; returns the token of the link to send to it.
    The address changes only when that link is followed (:func:`change_email`)."""
    user = check_password(session, user_id, password, field="email_password")
    new_email = normalize_email(new_email)
    if new_email == user.email:
        raise UserError("That is already your email address.", field="email")
    return issue_link(session, settings, user, CHANGE_EMAIL, email=new_email)


def change_email(session: Session, token: str) -> tuple[User, str]:
    """Follow the link sent to a new address: it becomes the account's, confirmed. Returns
    the user and the old address (to tell it)."""
    row, user = _use_link(session, token, CHANGE_EMAIL)
    taken = session.scalar(select(User.id).where(User.email == row.email, User.id != user.id))
    if taken is not None:
        raise LinkError("Another account has this address now, so it cannot become yours.")
    old = user.email
    user.email = row.email
    user.email_verified_at = utcnow()
    # links sent to the old address stop working with it (they name the address they went to)
    session.flush()
    return user, old


# ---- closing an account ----------------------------------------------------------------------


def close(session: Session, user_id: int) -> None:
    """Leave a tombstone of the account: the row stays for the ledger's entries and the
    purchases the operator must keep, with no personal data, no usable password, no sessions
    and no links. The other domains' data goes first (app.erasure)."""
    user = session.get_one(User, user_id)
    user.email = f"deleted-{user.id}@invalid"  # not an address anyone can sign up with
    user.password_hash = "!deleted"  # not an argon2 hash: no password matches it
    user.email_verified_at = None
    user.deleted_at = utcnow()
    end_all_sessions(session, user_id)
    session.execute(delete(AccountToken).where(AccountToken.user_id == user_id))
