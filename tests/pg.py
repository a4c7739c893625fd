"""PostgreSQL for the tests: a fresh database per test on a real server.

The server comes from ``GOUACHE_TEST_POSTGRES_URL``, the URL of a role that may
create databases, e.g. ``postgresql+psycopg://user:pass@127.0.0.1:5432/postgres``
(``.ci/run`` starts Debian's PostgreSQL and exports it). Without it the
PostgreSQL tests are skipped, except under CI (``CI`` set), where they fail:
CI must never pass by not testing the production database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from app.config import Settings
from tests.support import make_settings, migrated

POSTGRES_URL_ENV = "GOUACHE_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Engine]:
    """An autocommit connection to the test server's maintenance database."""
    url = os.environ.get(POSTGRES_URL_ENV, "").strip()
    if not url:
        reason = (
            f"PostgreSQL tests need {POSTGRES_URL_ENV}=postgresql+psycopg://USER:PASS@HOST:5432/postgres "
            "(a role that may create databases); .ci/run starts a server and sets it"
        )
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI is set but {POSTGRES_URL_ENV} is not: {reason}", pytrace=False)
        pytest.skip(reason)
    engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        unreachable = None
    except OperationalError as e:
        unreachable = str(e.orig or e)
    if unreachable:
        safe = make_url(url).render_as_string(hide_password=True)
        pytest.fail(
            f"{POSTGRES_URL_ENV} is set, but PostgreSQL at {safe} cannot be reached: {unreachable}", pytrace=False
        )
    yield engine
    engine.dispose()


@contextmanager
def new_database(server: Engine) -> Iterator[str]:
    """The URL of a new, empty database (``gouache_test_<random>``), dropped afterwards."""
    from app.db import _engine_for

    name = f"gouache_test_{uuid.uuid4().hex[:16]}"
    with server.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        # A throwaway database need not wait for the disk at each commit (tests commit a lot).
        conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    url = server.url.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        _engine_for(url).dispose()  # the app's pooled connections to it
        with server.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server: Engine) -> Iterator[str]:
    """A new, empty database for this test."""
    with new_database(pg_server) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def any_db_settings(request: pytest.FixtureRequest, tmp_path, tiny_model_path) -> Settings:
    """Migrated settings on SQLite (the embedded default) and on PostgreSQL."""
    if request.param == "sqlite":
        return migrated(make_settings(tmp_path / "data", tiny_model_path))
    url = request.getfixturevalue("pg_url")
    return migrated(make_settings(tmp_path / "data", tiny_model_path, database_url=url))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def module_db_settings(request: pytest.FixtureRequest, tmp_path_factory, tiny_model_path) -> Iterator[Settings]:
    """Like ``any_db_settings``, but one database per test module: for data that tests only read."""
    data_dir = tmp_path_factory.mktemp("data")
    if request.param == "sqlite":
        yield migrated(make_settings(data_dir, tiny_model_path))
        return
    with new_database(request.getfixturevalue("pg_server")) as url:
        yield migrated(make_settings(data_dir, tiny_model_path, database_url=url))
