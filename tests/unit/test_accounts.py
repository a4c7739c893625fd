"""Accounts: signing up, logging in and out, changing a password, and the
server-side sessions behind the cookie."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.accounts.models import LoginSession, User
from app.accounts.service import (
    authenticate,
    change_password,
    end_session,
    sign_up,
    start_session,
    user_for_token,
)
from app.credits.service import grant_signup_credits
from app.db import transaction, utcnow
from app.errors import UserError

PASSWORD = "correct horse battery"
NEW_PASSWORD = "tr0ubadour & staple"


@pytest.fixture
def email(new_email) -> str:
    return new_email("ada")


@pytest.fixture
def user_id(db_settings, email) -> int:
    """An account made as the sign-up route makes it: with its welcome credits, in one transaction."""
    with transaction(db_settings) as session:
        user = sign_up(session, email, PASSWORD)
        grant_signup_credits(session, db_settings, user.id)
        return user.id


def log_in(settings, email: str, password: str) -> str:
    with transaction(settings) as session:
        return start_session(session, settings, authenticate(session, email, password))


def who(settings, token: str | None) -> int | None:
    with transaction(settings) as session:
        user = user_for_token(session, token)
        return user.id if user else None


def refused(settings, email: str, password: str) -> UserError:
    with transaction(settings) as session, pytest.raises(UserError) as excinfo:
        sign_up(session, email, password)
    return excinfo.value


def users_with_email(settings, email: str) -> int:
    with transaction(settings) as session:
        return session.scalar(select(func.count()).select_from(User).where(User.email == email))


# Signing up


def test_sign_up_stores_the_email_lowercased_and_trimmed(db_settings, new_email):
    address = new_email("grace")
    with transaction(db_settings) as session:
        user = sign_up(session, f"  {address.upper()} ", PASSWORD)
    assert user.email == address
    # And logging in works however the address is typed.
    assert who(db_settings, log_in(db_settings, address.upper(), PASSWORD)) == user.id


def test_sign_up_gives_the_welcome_credits(db_settings, email, user_id):
    with transaction(db_settings) as session:
        assert session.get(User, user_id).balance == db_settings.signup_grant_credits
        assert not grant_signup_credits(session, db_settings, user_id)  # once per account
        assert session.get(User, user_id).balance == db_settings.signup_grant_credits


def test_an_email_can_have_only_one_account_whatever_its_case(db_settings, email, user_id):
    error = refused(db_settings, email.upper(), "another good passphrase")
    assert error.field == "email"
    assert "already exists" in error.message
    assert users_with_email(db_settings, email) == 1


@pytest.mark.parametrize(
    "bad", ["", "   ", "not-an-email", "ada@localhost", "@example.com", "ada lovelace@example.com", "x@.", "a@b@c.com"]
)
def test_an_invalid_email_is_refused(db_settings, bad):
    error = refused(db_settings, bad, PASSWORD)
    assert error.field == "email"
    assert error.message == "Enter a valid email address."


def test_a_short_password_is_refused(db_settings, new_email):
    address = new_email()
    error = refused(db_settings, address, "k7#Qz!p")  # 7 characters
    assert error.field == "password"
    assert "at least 8 characters" in error.message
    assert users_with_email(db_settings, address) == 0


@pytest.mark.parametrize("common", ["password123", "Password1", "12345678", "QWERTY123", "aaaaaaaaaaaa", "abababab"])
def test_a_common_or_trivial_password_is_refused(db_settings, new_email, common):
    address = new_email()
    error = refused(db_settings, address, common)
    assert error.field == "password"
    assert "too easy to guess" in error.message
    assert users_with_email(db_settings, address) == 0


def test_the_email_name_is_not_a_password(db_settings):
    error = refused(db_settings, "lovelace1815@example.com", "Lovelace1815")
    assert error.field == "password"


def test_the_password_is_stored_only_as_an_argon2id_hash(db_settings, email, user_id):
    with transaction(db_settings) as session:
        stored = session.get(User, user_id).password_hash
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


def test_the_same_password_hashes_differently_for_two_users(db_settings, new_email):
    with transaction(db_settings) as session:
        a = sign_up(session, new_email(), PASSWORD)
        b = sign_up(session, new_email(), PASSWORD)
    assert a.password_hash != b.password_hash  # salted


# Logging in


def test_the_right_password_logs_in(db_settings, email, user_id):
    with transaction(db_settings) as session:
        assert authenticate(session, email, PASSWORD).id == user_id


def test_a_wrong_password_and_an_unknown_email_get_the_same_answer(db_settings, email, user_id, new_email):
    with transaction(db_settings) as session:
        with pytest.raises(UserError) as wrong_password:
            authenticate(session, email, "not the password")
        with pytest.raises(UserError) as unknown_email:
            authenticate(session, new_email("nobody"), PASSWORD)
    assert wrong_password.value.message == unknown_email.value.message == "Wrong email or password."
    assert wrong_password.value.field == unknown_email.value.field


# Sessions


def test_a_session_token_leads_back_to_its_user(db_settings, email, user_id):
    token = log_in(db_settings, email, PASSWORD)
    assert len(token) >= 32
    assert who(db_settings, token) == user_id


def test_the_database_keeps_only_a_hash_of_the_token(db_settings, email, user_id):
    token = log_in(db_settings, email, PASSWORD)
    with transaction(db_settings) as session:
        ids = session.scalars(select(LoginSession.id).where(LoginSession.user_id == user_id)).all()
    assert token not in ids
    assert hashlib.sha256(token.encode()).hexdigest() in ids


def test_the_session_lasts_the_configured_number_of_days(db_settings, email, user_id):
    before = utcnow()
    log_in(db_settings, email, PASSWORD)
    with transaction(db_settings) as session:
        expires = session.scalar(select(LoginSession.expires_at).where(LoginSession.user_id == user_id))
    lifetime = expires - before
    assert timedelta(days=db_settings.session_days) <= lifetime < timedelta(days=db_settings.session_days, minutes=1)


@pytest.mark.parametrize("token", [None, "", "made-up-token"])
def test_no_token_or_an_unknown_token_is_nobody(db_settings, token):
    assert who(db_settings, token) is None


def test_logging_out_ends_the_session(db_settings, email, user_id):
    token = log_in(db_settings, email, PASSWORD)
    other_device = log_in(db_settings, email, PASSWORD)
    with transaction(db_settings) as session:
        end_session(session, token)
    assert who(db_settings, token) is None
    assert who(db_settings, other_device) == user_id  # only that browser is logged out


def test_an_expired_session_is_not_accepted(db_settings, email, user_id):
    token = log_in(db_settings, email, PASSWORD)
    with transaction(db_settings) as session:
        session.execute(
            update(LoginSession)
            .where(LoginSession.user_id == user_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert who(db_settings, token) is None


# Changing the password


def test_changing_the_password_logs_out_every_other_session(db_settings, email, user_id, new_email):
    laptop, phone, tablet = (log_in(db_settings, email, PASSWORD) for _ in range(3))
    with transaction(db_settings) as session:
        someone_else = sign_up(session, new_email("other"), PASSWORD)
        their_token = start_session(session, db_settings, someone_else)

    with transaction(db_settings) as session:
        change_password(session, user_id, PASSWORD, NEW_PASSWORD, keep_token=phone)

    assert who(db_settings, phone) == user_id  # the browser that changed it stays logged in
    assert who(db_settings, laptop) is None
    assert who(db_settings, tablet) is None
    assert who(db_settings, their_token) == someone_else.id  # other users are untouched


def test_after_a_change_only_the_new_password_works(db_settings, email, user_id):
    with transaction(db_settings) as session:
        change_password(session, user_id, PASSWORD, NEW_PASSWORD)
    with transaction(db_settings) as session:
        assert authenticate(session, email, NEW_PASSWORD).id == user_id
        with pytest.raises(UserError):
            authenticate(session, email, PASSWORD)
        assert session.get(User, user_id).password_hash.startswith("$argon2id$")


def test_without_a_kept_token_every_session_ends(db_settings, email, user_id):
    tokens = [log_in(db_settings, email, PASSWORD) for _ in range(2)]
    with transaction(db_settings) as session:
        change_password(session, user_id, PASSWORD, NEW_PASSWORD)
    assert [who(db_settings, t) for t in tokens] == [None, None]


def test_a_wrong_current_password_changes_nothing(db_settings, email, user_id):
    token = log_in(db_settings, email, PASSWORD)
    with transaction(db_settings) as session:
        with pytest.raises(UserError) as excinfo:
            change_password(session, user_id, "not the password", NEW_PASSWORD)
    assert excinfo.value.field == "current_password"
    assert who(db_settings, token) == user_id
    assert who(db_settings, log_in(db_settings, email, PASSWORD)) == user_id


def test_the_new_password_must_be_strong_too(db_settings, email, user_id):
    with transaction(db_settings) as session:
        with pytest.raises(UserError) as excinfo:
            change_password(session, user_id, PASSWORD, "password1")
    assert excinfo.value.field == "password"
    assert who(db_settings, log_in(db_settings, email, PASSWORD)) == user_id
