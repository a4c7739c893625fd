"""`gouache users make-admin | revoke-admin`, configured through the environment as an
operator's shell would: the flag, the audit row (actor "cli"), and the messages."""

from __future__ import annotations

import os

from sqlalchemy import select
from typer.testing import CliRunner

from app.accounts.models import User
from app.accounts.service import sign_up
from app.admin.models import AdminAction
from app.cli import cli
from app.config import get_settings
from app.db import reading, transaction
from tests.support import PASSWORD, settings_env


def gouache(settings, *args: str):
    env = {name: None for name in os.environ if name.startswith("GOUACHE_")}
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, list(args), env={**env, **settings_env(settings)})
    finally:
        get_settings.cache_clear()


def is_admin(settings, email: str) -> bool:
    with reading(settings) as session:
        return bool(session.scalar(select(User.is_admin).where(User.email == email)))


def actions(settings) -> list[tuple[str, str, str]]:
    with reading(settings) as session:
        rows = session.scalars(select(AdminAction).order_by(AdminAction.id))
        return [(a.actor, a.action, a.target) for a in rows]


def test_make_admin_and_revoke_admin_are_recorded(any_db_settings):
    settings = any_db_settings
    with transaction(settings) as session:
        sign_up(session, "ops@example.com", PASSWORD)
    assert not is_admin(settings, "ops@example.com")

    made = gouache(settings, "users", "make-admin", "  Ops@Example.com ")
    assert made.exit_code == 0, made.output
    assert "ops@example.com is now an admin" in made.output
    assert is_admin(settings, "ops@example.com")
    again = gouache(settings, "users", "make-admin", "ops@example.com")
    assert again.exit_code == 0 and "already an admin" in again.output

    revoked = gouache(settings, "users", "revoke-admin", "ops@example.com")
    assert revoked.exit_code == 0 and "no longer an admin" in revoked.output
    assert not is_admin(settings, "ops@example.com")

    # one audit row per change, none for the no-op
    assert actions(settings) == [("cli", "make_admin", "ops@example.com"), ("cli", "revoke_admin", "ops@example.com")]


def test_make_admin_of_an_unknown_email_fails_clearly(any_db_settings):
    result = gouache(any_db_settings, "users", "make-admin", "nobody@example.com")
    assert result.exit_code == 1
    assert "No account with the email 'nobody@example.com'" in result.output
    assert actions(any_db_settings) == []
