"""Engine, sessions and the declarative base shared by every domain."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache

from sqlalchemy import DateTime, Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from app.config import Settings
from app.errors import UserError


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every database (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime}


# Set on a read-only engine's connections (see :func:`reading`).
_READ_ONLY = "gouache_read_only"

# bench/gallery_load.py sets this in the server it measures "before" with: every read
# takes the write lock again, as all transactions did before reads had their own.
READS_TAKE_WRITE_LOCK = False


def _configure_sqlite(engine: Engine) -> None:
    # The web process and the worker write the same file. WAL lets readers go on
    # while one writes; BEGIN IMMEDIATE takes the write lock when a transaction
    # starts, so "read balance, then write" can never interleave, and a busy
    # timeout makes a second writer wait instead of failing. A read-only transaction
    # begins DEFERRED: it never takes the write lock, so it never queues behind the
    # worker's writes; query_only makes SQLite refuse a write inside it.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        read_only = bool(conn.get_execution_options().get(_READ_ONLY)) and not READS_TAKE_WRITE_LOCK
        conn.exec_driver_sql(f"PRAGMA query_only={int(read_only)}")  # per connection: set on every begin
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(v) for v in value.values())
    if isinstance(value, (list, tuple)):  # one row, several (executemany), or a batch's flat values
        return any(_has_nul(v) for v in value)
    return False


def _refuse_nul_text(_conn, _cursor, _statement, parameters, _context, _executemany) -> None:
    """Text with a NUL character is refused before it reaches the database, on every
    dialect alike: PostgreSQL rejects it (an error, not a bad request), SQLite would keep it.
    Whatever a request carries (a path id, a filter, a prompt, an email), it is a 4xx."""
    if _has_nul(parameters):
        raise UserError("Text can't contain NUL characters (\\x00).")


@lru_cache(maxsize=8)
def _engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        _configure_sqlite(engine)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    event.listen(engine, "before_cursor_execute", _refuse_nul_text)
    return engine


@lru_cache(maxsize=8)
def _read_engine_for(url: str) -> Engine:
    """The same engine (and pool), its transactions read-only: DEFERRED and query_only
    on SQLite, READ ONLY on PostgreSQL."""
    options = {"postgresql_readonly": True} if url.startswith("postgresql") else {}
    return _engine_for(url).execution_options(**{_READ_ONLY: True}, **options)


def get_engine(settings: Settings) -> Engine:
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return _engine_for(settings.database_url)


def session_factory(settings: Settings) -> sessionmaker[Session]:
    return sessionmaker(get_engine(settings), expire_on_commit=False)


@contextmanager
def transaction(settings: Settings) -> Iterator[Session]:
    """A short unit of work: commit on success, roll back on error. On SQLite it holds
    the write lock from its start (see ``_configure_sqlite``): use :func:`reading` when
    the work only reads."""
    with session_factory(settings)() as session, session.begin():
        yield session


@contextmanager
def reading(settings: Settings) -> Iterator[Session]:
    """A read-only transaction: one consistent snapshot that takes no write lock, so it
    never waits for a writer (nor a writer for it). A write inside it raises; it ends
    by rolling back (the loaded objects stay usable, as after :func:`transaction`)."""
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    with Session(_read_engine_for(settings.database_url), expire_on_commit=False) as session:
        yield session
