"""An idle worker on the embedded broker looks for new jobs often (GOUACHE_BROKER_POLL_S),
not once a second as kombu's SQLAlchemy transport does by default, and the web process
still sends its jobs through that broker."""

from __future__ import annotations

from celery import Celery
from kombu.transport import sqlalchemy as kombu_sqlalchemy
from sqlalchemy import create_engine, text

from app.queue import configure, send_generate


def test_a_worker_on_the_sqlite_broker_polls_at_the_configured_interval(make_settings, tmp_path, monkeypatch):
    monkeypatch.setattr(kombu_sqlalchemy.Transport, "polling_interval", kombu_sqlalchemy.Transport.polling_interval)
    assert make_settings(tmp_path).broker_poll_s <= 0.1  # the default: a pick-up within ~100 ms
    settings = make_settings(tmp_path, broker_poll_s=0.2)
    worker_app = configure(Celery("gouache", set_as_current=False), settings)
    with worker_app.connection_for_read() as connection:
        assert connection.transport.polling_interval == 0.2


def test_a_job_sent_to_the_sqlite_broker_is_stored_there(make_settings, tmp_path, monkeypatch):
    monkeypatch.setattr(kombu_sqlalchemy.Transport, "polling_interval", kombu_sqlalchemy.Transport.polling_interval)
    settings = make_settings(tmp_path / "data", broker_poll_s=0.2)
    send_generate(settings, "job-1", "generate.demo")
    broker = create_engine(settings.broker_url.removeprefix("sqla+"))
    with broker.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM kombu_message")).scalar() == 1
    broker.dispose()
