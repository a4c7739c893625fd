"""Pages that only read never wait for a writer, on SQLite and on PostgreSQL.

The worker writes a job's progress while its owner (and everyone else) browses the
gallery. Reads run in ``db.reading``: they take no write lock, so a writer holding one
does not delay them, and a write that slips into one is refused, not committed.
"""

from __future__ import annotations

import sqlite3
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError

from app.accounts.models import User
from app.accounts.service import sign_up
from app.config import Settings
from app.db import reading, transaction
from tests.support import PASSWORD

WAIT_S = 10  # far longer than a read takes; a read blocked by the writer would wait 30 s


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path) -> Settings:
    from tests.support import migrated

    overrides = {"database_url": request.getfixturevalue("pg_url")} if request.param == "postgres" else {}
    return migrated(Settings(_env_file=None, data_dir=tmp_path / "data", **overrides))


def new_user(settings: Settings) -> int:
    with transaction(settings) as session:
        return sign_up(session, f"reader-{uuid.uuid4().hex[:8]}@example.com", PASSWORD).id


def email_of(settings: Settings, user_id: int) -> str:
    with reading(settings) as session:
        return session.get_one(User, user_id).email


def test_a_read_goes_on_while_a_writer_holds_the_write_lock(db):
    user_id = new_user(db)
    before = email_of(db, user_id)
    with transaction(db) as writer, ThreadPoolExecutor(1) as pool:
        # the worker's progress write: it holds the lock until it commits
        writer.execute(update(User).where(User.id == user_id).values(email=f"renamed-{before}"))
        if db.is_sqlite:  # the write lock really is taken: another writer cannot get it now
            other = sqlite3.connect(db.database_url.removeprefix("sqlite:///"), timeout=0)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            other.close()
        # the gallery page's read, from another connection, answers at once with the
        # last committed state
        assert pool.submit(email_of, db, user_id).result(timeout=WAIT_S) == before
    assert email_of(db, user_id) == f"renamed-{before}"


def test_a_write_inside_a_read_transaction_is_refused_and_the_connection_writes_again_after(db):
    user_id = new_user(db)
    before = email_of(db, user_id)
    with pytest.raises(DBAPIError, match="(?i)read.?only"), reading(db) as session:
        session.execute(update(User).where(User.id == user_id).values(email="sneaky@example.com"))
    assert email_of(db, user_id) == before
    # the pooled connections that served reads take writes again in a transaction
    for _ in range(3):
        with reading(db) as session:
            session.scalar(select(User.id).where(User.id == user_id))
        with transaction(db) as session:
            session.execute(update(User).where(User.id == user_id).values(email=f"again-{before}"))
    assert email_of(db, user_id) == f"again-{before}"


def test_objects_read_stay_usable_after_the_read_transaction(db):
    user_id = new_user(db)
    with reading(db) as session:
        user = session.get_one(User, user_id)
    assert user.id == user_id and user.email.startswith("reader-")
