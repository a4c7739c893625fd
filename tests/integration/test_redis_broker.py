"""Scale-out on the existing engines: settings alone switch the broker to Redis (and the
database to PostgreSQL when GOUACHE_TEST_POSTGRES_URL is set), and a real worker
process takes a job from Redis and completes it end to end."""

from __future__ import annotations

import os

import pytest
import redis
from sqlalchemy import select

from app.credits import ledger
from app.db import transaction
from app.gallery.models import Image
from app.generation.catalog import get_catalog
from app.queue import VISIBILITY_TIMEOUT_S, configure
from tests.pg import POSTGRES_URL_ENV
from tests.redis_broker import redis_url  # noqa: F401  (the fixture)
from tests.support import make_settings, migrated, wait_for_job


@pytest.fixture
def scale_out_settings(request, tmp_path, tiny_model, redis_url):  # noqa: F811
    overrides = {"broker_url": redis_url}
    if os.environ.get(POSTGRES_URL_ENV, "").strip():
        overrides["database_url"] = request.getfixturevalue("pg_url")
    return migrated(make_settings(tmp_path / "data", tiny_model, **overrides))


def test_readyz_reports_the_redis_broker_ready(scale_out_settings, make_client):
    response = make_client(scale_out_settings).get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["broker"]["ok"]


def test_redis_holds_a_running_job_longer_than_the_job_can_take(scale_out_settings):
    from celery import Celery

    conf = configure(Celery(set_as_current=False), scale_out_settings).conf
    assert conf.broker_transport_options["visibility_timeout"] == VISIBILITY_TIMEOUT_S
    assert VISIBILITY_TIMEOUT_S > scale_out_settings.job_queue_timeout_s + scale_out_settings.job_stale_after_s
    assert (conf.task_acks_late, conf.task_reject_on_worker_lost, conf.worker_prefetch_multiplier) == (True, True, 1)


@pytest.mark.worker
def test_a_worker_on_redis_completes_a_job_end_to_end(scale_out_settings, make_client, start_worker):
    settings = scale_out_settings
    start_worker(settings)
    c = make_client(settings)
    c.sign_up("ada@example.com")

    submitted = c.api_post("/api/v1/generations", {"prompt": "a blue square", "width": 64, "height": 64, "steps": 2})
    assert submitted.status_code == 202, submitted.text
    job = wait_for_job(c, submitted.json()["id"])

    assert job["status"] == "succeeded", job["error"]
    with transaction(settings) as session:
        images = session.scalars(select(Image).where(Image.job_id == job["id"])).all()
        user_id = images[0].user_id
        entries = session.scalars(select(ledger.LedgerEntry).where(ledger.LedgerEntry.user_id == user_id))
        kinds = [e.kind for e in entries]
    assert len(images) == 1
    assert sorted(kinds) == ["capture", "grant", "hold"]
    # The message went through Redis and was acknowledged: nothing waits, nothing is unacked.
    server = redis.Redis.from_url(settings.broker_url)
    queue = get_catalog(settings).default.queue(settings.queue)
    assert server.llen(queue) == 0
    assert not any(queue.encode() in raw for raw in server.hvals("unacked"))
