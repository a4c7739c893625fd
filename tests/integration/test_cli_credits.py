"""`gouache credits grant | balance | audit`, on SQLite and PostgreSQL, configured
through the environment exactly as an operator's shell would."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from app.accounts.service import sign_up
from app.cli import cli
from app.config import get_settings
from app.credits import ledger
from app.credits.models import LedgerEntry
from app.credits.service import grant_signup_credits
from app.db import transaction
from tests.support import PASSWORD, make_settings, settings_env


def invoke(settings, *args: str):
    """Run ``gouache ARGS...`` configured by the environment for ``settings``; returns click's Result."""
    # Only these settings: no GOUACHE_ variable of the shell running the tests leaks in.
    env = {name: None for name in os.environ if name.startswith("GOUACHE_")}
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, list(args), env={**env, **settings_env(settings)})
    finally:
        get_settings.cache_clear()


@pytest.fixture
def gouache(any_db_settings):
    """``gouache(*args)`` against the migrated database of ``any_db_settings``."""
    return lambda *args: invoke(any_db_settings, *args)


def new_user(settings, email: str) -> int:
    with transaction(settings) as session:
        user = sign_up(session, email, PASSWORD)
        grant_signup_credits(session, settings, user.id)  # as the sign-up route does
        return user.id


def admin_grants(settings, user_id: int) -> list[LedgerEntry]:
    with transaction(settings) as session:
        return list(
            session.scalars(
                select(LedgerEntry)
                .where(LedgerEntry.user_id == user_id, LedgerEntry.idempotency_key.startswith("admin:"))
                .order_by(LedgerEntry.id)
            )
        )


def balance(settings, user_id: int) -> int:
    with transaction(settings) as session:
        return ledger.balance(session, user_id)


def test_grant_adds_credits_through_the_ledger_with_the_reason(any_db_settings, gouache):
    ada = new_user(any_db_settings, "ada@example.com")
    start = balance(any_db_settings, ada)

    result = gouache("credits", "grant", "Ada@Example.com", "250", "--reason", "Sorry for the outage")

    assert result.exit_code == 0, result.output
    assert f"Granted 250 credits to ada@example.com; the balance is now {start + 250}." in result.output
    [entry] = admin_grants(any_db_settings, ada)
    assert (entry.kind, entry.amount, entry.reference) == (ledger.GRANT, 250, "admin:Sorry for the outage")
    assert "Sorry for the outage" in entry.memo
    assert balance(any_db_settings, ada) == start + 250

    # Each grant is its own event (its own key): granting again adds again.
    assert gouache("credits", "grant", "ada@example.com", "5", "--reason", "Bug report").exit_code == 0
    assert [e.amount for e in admin_grants(any_db_settings, ada)] == [250, 5]
    assert len({e.idempotency_key for e in admin_grants(any_db_settings, ada)}) == 2
    assert balance(any_db_settings, ada) == start + 255
    with transaction(any_db_settings) as session:
        assert ledger.audit(session) == []


def test_grant_refuses_an_unknown_email(any_db_settings, gouache):
    result = gouache("credits", "grant", "nobody@example.com", "10", "--reason", "typo")
    assert result.exit_code == 1
    assert "No account with the email 'nobody@example.com'." in result.output
    with transaction(any_db_settings) as session:
        assert session.scalar(select(LedgerEntry.id)) is None


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["0", "--reason", "nothing"], 1, "N must be a positive number of credits (got 0)."),
        (["--reason", "less", "--", "-5"], 1, "N must be a positive number of credits (got -5)."),
        (["-5", "--reason", "less"], 2, "No such option"),
        (["ten", "--reason", "words"], 2, "Invalid value for 'N'"),
        (["10"], 2, "Missing option"),
        (["10", "--reason", "   "], 1, "Give a reason with --reason."),
    ],
)
def test_grant_refuses_bad_amounts_and_missing_reasons(any_db_settings, gouache, args, exit_code, message):
    ada = new_user(any_db_settings, "ada@example.com")
    start = balance(any_db_settings, ada)
    result = gouache("credits", "grant", "ada@example.com", *args)
    assert result.exit_code == exit_code, result.output
    assert message in result.output
    assert admin_grants(any_db_settings, ada) == []
    assert balance(any_db_settings, ada) == start


def test_balance_prints_the_balance(any_db_settings, gouache):
    ada = new_user(any_db_settings, "ada@example.com")
    new_user(any_db_settings, "bob@example.com")
    with transaction(any_db_settings) as session:
        ledger.hold(session, ada, 42, job_id="00000000-0000-0000-0000-000000000042", memo="a job")

    result = gouache("credits", "balance", "ada@example.com")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(any_db_settings.signup_grant_credits - 42)
    unknown = gouache("credits", "balance", "nobody@example.com")
    assert unknown.exit_code == 1 and "No account with the email 'nobody@example.com'." in unknown.output


def test_audit_passes_when_every_balance_matches_its_ledger(any_db_settings, gouache):
    for name in ("ada", "bob", "cy"):
        new_user(any_db_settings, f"{name}@example.com")
    assert gouache("credits", "grant", "bob@example.com", "30", "--reason", "promo").exit_code == 0

    result = gouache("credits", "audit")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "OK: 3 accounts, all balances match the ledger"


def test_audit_reports_a_corrupted_balance_and_fails(any_db_settings, gouache):
    ada = new_user(any_db_settings, "ada@example.com")
    bob = new_user(any_db_settings, "bob@example.com")
    grant = any_db_settings.signup_grant_credits
    with transaction(any_db_settings) as session:  # what no code path may ever do
        session.execute(text("UPDATE users SET balance = balance + 7 WHERE id = :id"), {"id": bob})

    result = gouache("credits", "audit")

    assert result.exit_code == 1
    assert f"MISMATCH bob@example.com (user {bob}): cached balance {grant + 7}, ledger sum {grant}" in result.stdout
    assert "ada@example.com" not in result.output and f"user {ada})" not in result.output
    assert "1 of 2 accounts do not match the ledger." in result.output
    assert "OK:" not in result.output


def test_credit_commands_refuse_an_unmigrated_database(tmp_path, tiny_model_path):
    bare = make_settings(tmp_path / "bare", tiny_model_path)
    for args in (["audit"], ["balance", "ada@example.com"], ["grant", "ada@example.com", "1", "--reason", "x"]):
        result = invoke(bare, "credits", *args)
        assert result.exit_code == 1
        assert "Run `gouache db upgrade` first." in result.output
