"""The Celery application, configured from the same Settings as the web process.

Importing this module is cheap (no torch): the web process uses it only to send
tasks by name. Workers start it with ``gouache worker``.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from app.config import Settings, get_settings


@lru_cache(maxsize=4)
def _celery(broker_url: str, queue: str) -> Celery:
    app = Celery("gouache", broker=broker_url, include=["workers.tasks"])
    app.conf.update(
        task_default_queue=queue,
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
    return app


def ensure_data_dir(settings: Settings) -> None:
    """The embedded broker is a SQLite file in the data folder, and SQLite creates the
    file but not its folder. The database engine makes that folder only when the
    database is SQLite too, so with PostgreSQL and the embedded broker nothing else would.
    (A broker configured elsewhere is the operator's folder to make.)"""
    if settings.broker_url.startswith("sqla+sqlite:"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)


def celery_for(settings: Settings) -> Celery:
    """The Celery app for these settings, ready to send tasks."""
    ensure_data_dir(settings)
    return _celery(settings.broker_url, settings.queue)


_startup = get_settings()
app = _celery(_startup.broker_url, _startup.queue)  # importing creates no folders
