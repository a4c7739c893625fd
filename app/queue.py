"""The Celery client the web process sends jobs with, and the Celery settings the
workers share (``workers/celery_app.py`` builds its app from :func:`configure`).

Tasks are named by string, so the web process imports no worker code (no torch).
"""

from __future__ import annotations

from celery import Celery

from app.config import Settings

GENERATE_TASK = "gouache.generate"

# Redis (and SQS) hand an unacknowledged message to another worker after this long. With
# late acks a job's message stays unacknowledged while it runs, so this must be longer
# than the longest job, or a second worker would start it while the first still runs (its
# claim would find nothing to do, but it would wait in line for it). A worker that dies
# is noticed much sooner, from the job's row (its lease), not from the broker.
VISIBILITY_TIMEOUT_S = 6 * 3600


def transport_options(settings: Settings) -> dict[str, object]:
    """The broker connection's options for the broker the settings name."""
    if settings.broker_url.startswith(("redis://", "rediss://", "redis+socket://", "sqs://")):
        return {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    return {}


def configure(celery: Celery, settings: Settings) -> Celery:
    """The settings every Gouache Celery app has, sender or worker."""
    celery.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=transport_options(settings),
        task_default_queue=settings.queue,
        # The job row is the record, not the result backend.
        task_ignore_result=True,
        # A GPU runs one job at a time: take one message, acknowledge it after
        # the job is settled, so a crashed worker's job is redelivered.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
    )
    if settings.broker_url.startswith("sqla+"):
        _poll_sql_broker_every(settings.broker_poll_s)
        _sql_broker_queues_made_once()
    return celery


def _poll_sql_broker_every(seconds: float) -> None:
    """kombu's SQLAlchemy transport polls for messages, by default every 1 s: most of a
    small job's wait from submit to running. Its ``polling_interval`` transport option
    cannot be used: the transport passes every option on to ``create_engine``, which
    refuses it (celery/kombu#2157); so the transport's own default is set, for the
    process (one process serves one Settings)."""
    from kombu.transport import sqlalchemy as kombu_sqlalchemy

    kombu_sqlalchemy.Transport.polling_interval = seconds


def _sql_broker_queues_made_once() -> None:
    """kombu's SQLAlchemy transport makes a queue's row on first use with a query, then an
    insert guarded by a lock of its own process only. Two processes doing it at once (two
    workers starting together, or a worker and the web's first send) collide on the unique
    name: one of them crashes (a worker exits; a submit fails). Here the loser of that race
    takes the row the winner made instead."""
    from kombu.transport.sqlalchemy import Channel
    from sqlalchemy.exc import IntegrityError

    if getattr(Channel._get_or_create, "_gouache", False):
        return
    original = Channel._get_or_create

    def get_or_create(self, queue):
        try:
            return original(self, queue)
        except IntegrityError:  # another process made it between our query and our insert
            self.session.rollback()
            return self.session.query(self.queue_cls).filter(self.queue_cls.name == queue).one()

    get_or_create._gouache = True  # type: ignore[attr-defined]
    Channel._get_or_create = get_or_create  # type: ignore[method-assign]


def ensure_data_dir(settings: Settings) -> None:
    """The embedded broker is a SQLite file in the data folder, and SQLite creates the
    file but not its folder. The database engine makes that folder only when the
    database is SQLite too, so with PostgreSQL and the embedded broker nothing else would.
    (A broker configured elsewhere is the operator's folder to make.)"""
    if settings.broker_url.startswith("sqla+sqlite:"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)


_senders: dict[tuple[str, str], Celery] = {}


def _sender(settings: Settings) -> Celery:
    """One client per broker for the process (its connection pool is reused)."""
    key = (settings.broker_url, settings.queue)
    if key not in _senders:
        _senders[key] = configure(Celery("gouache", set_as_current=False), settings)
    return _senders[key]


def send_generate(settings: Settings, job_id: str, queue: str) -> None:
    """Put a generation job on a model's queue (raises if the broker is unreachable)."""
    ensure_data_dir(settings)
    _sender(settings).send_task(GENERATE_TASK, args=[job_id], queue=queue)


# kombu's SQLAlchemy transport marks a delivered message invisible and never deletes it
# (nor redelivers it: recovery comes from the job rows), so its table grows with every job.
BROKER_MESSAGE_TABLE = "kombu_message"
_PRUNE_BATCH = 1000


def prune_broker(settings: Settings) -> int:
    """Delete the embedded broker's delivered messages (a SQL broker's only); how many.
    In batches, so kombu's own writers never wait long for the lock."""
    if not settings.broker_url.startswith(("sqla+", "sqlalchemy+")):
        return 0  # Redis, RabbitMQ: the broker deletes a message when it is acknowledged
    from sqlalchemy import create_engine, inspect, text

    url = settings.broker_url.split("+", 1)[1]
    if url.startswith("sqlite:") and not _sqlite_file_exists(url):
        return 0  # nothing sent yet: no broker file to create here
    engine = create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite:") else {})
    try:
        if not inspect(engine).has_table(BROKER_MESSAGE_TABLE):
            return 0
        delete = text(
            f"DELETE FROM {BROKER_MESSAGE_TABLE} WHERE id IN "
            f"(SELECT id FROM {BROKER_MESSAGE_TABLE} WHERE visible = :no LIMIT {_PRUNE_BATCH})"
        )
        total = 0
        while True:
            with engine.begin() as connection:
                deleted = connection.execute(delete, {"no": False}).rowcount
            total += deleted
            if deleted < _PRUNE_BATCH:
                return total
    finally:
        engine.dispose()


def _sqlite_file_exists(url: str) -> bool:
    from pathlib import Path

    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return database is not None and Path(database).exists()
