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


def test_two_processes_making_the_same_broker_queue_at_once_both_get_it(make_settings, tmp_path):
    """kombu's SQL transport guards a queue's creation with a lock of its own process only;
    the loser of a race between processes used to crash (a worker starting next to another
    exited). The row another process inserted between our query and our insert is taken."""
    from celery import Celery
    from kombu import Connection

    from app.queue import configure

    settings = make_settings(tmp_path)
    configure(Celery(set_as_current=False), settings)
    with Connection(settings.broker_url) as first, Connection(settings.broker_url) as second:
        mine, theirs = first.default_channel, second.default_channel
        made_elsewhere = theirs._get_or_create("generate.default")
        real_query = mine.session.query
        misses = iter([True, True])  # our two looks happen before the other process commits

        class NotYetVisible:
            def __init__(self, query):
                self.query = query

            def filter(self, *args):
                return NotYetVisible(self.query.filter(*args))

            def first(self):
                return None if next(misses, False) else self.query.first()

            def one(self):
                return self.query.one()

        mine.session.query = lambda *args: NotYetVisible(real_query(*args))
        got = mine._get_or_create("generate.default")
        assert got.name == "generate.default" and got.id == made_elsewhere.id
