"""``/metrics``: who may scrape it, and that what it says is what the database holds
(jobs by state, queue depth, the generation-seconds histogram, credits) plus this
process's HTTP latency, labelled by route template."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from app.accounts import service as accounts
from app.admin import metrics
from app.config import REPO_ROOT
from app.credits import ledger
from app.credits.models import LedgerEntry
from app.db import reading, transaction
from app.enums import JobStatus
from app.generation.models import Job
from app.main import create_app
from tests.admin_data import make_job, paid_purchase
from tests.processes import Output, free_port
from tests.support import PASSWORD, make_settings, migrated, settings_env

LOOPBACK = ("127.0.0.1", 50000)


def scrape(settings, **headers) -> dict[str, dict[tuple, float]]:
    """name -> {labels (sorted pairs) -> value}, every sample of one scrape."""
    response = TestClient(create_app(settings), client=LOOPBACK).get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


@pytest.fixture
def settled_at_once(monkeypatch):
    """Count rows as settled the moment they exist (the scrape trails by SETTLE_S in production)."""
    monkeypatch.setattr(metrics, "SETTLE_S", 0.0)


def seed(settings) -> int:
    with transaction(settings) as session:
        gil = accounts.sign_up(session, "gil@example.com", PASSWORD).id
        ledger.grant(session, gil, 500, key="signup:gil", memo="welcome")
    paid_purchase(settings, gil, credits=1000, amount=1000)
    make_job(settings, gil, JobStatus.SUCCEEDED, model="tiny", price=20, n_images=2, seconds=1.5)
    make_job(settings, gil, JobStatus.SUCCEEDED, model="tiny", price=10, n_images=1, seconds=7)
    make_job(settings, gil, JobStatus.SUCCEEDED, model="sdxl", price=40, n_images=1, seconds=45)
    make_job(settings, gil, JobStatus.FAILED, model="tiny", price=15, error="boom")
    make_job(settings, gil, JobStatus.CANCELLED, model="sdxl", price=5)
    make_job(settings, gil, JobStatus.RUNNING, model="tiny", price=8)
    for _ in range(2):
        make_job(settings, gil, JobStatus.QUEUED, model="sdxl", price=3, created_ago=timedelta(seconds=30))
    return gil


def value(m: dict, name: str, **labels) -> float:
    return m[name][tuple(sorted(labels.items()))]


def test_metrics_match_the_database(any_db_settings, settled_at_once):
    settings = any_db_settings
    seed(settings)
    m = scrape(settings)

    def one(name: str, **labels) -> float:
        return value(m, name, **labels)

    with reading(settings) as session:
        by_state = dict(
            session.execute(select(Job.status, func.count()).where(Job.model == "tiny").group_by(Job.status)).all()
        )
        kinds = dict(
            session.execute(select(LedgerEntry.kind, func.sum(LedgerEntry.amount)).group_by(LedgerEntry.kind)).all()
        )
    # jobs queued or running now, and jobs finished, by state and model
    for state in (JobStatus.QUEUED, JobStatus.RUNNING):
        assert one("gouache_jobs", state=state.value, model="tiny") == by_state.get(state, 0)
    for state in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        assert one("gouache_jobs_finished_total", state=state.value, model="tiny") == by_state[state]
    assert one("gouache_jobs_finished_total", state="cancelled", model="sdxl") == 1
    assert one("gouache_jobs", state="queued", model="sdxl") == 2
    assert one("gouache_queue_depth", model="sdxl") == 2
    assert one("gouache_queue_depth", model="tiny") == 0

    # the histogram: succeeded jobs' seconds, per model, cumulative buckets
    assert one("gouache_generation_seconds_count", model="tiny") == 2
    assert one("gouache_generation_seconds_sum", model="tiny") == pytest.approx(8.5, abs=0.01)
    assert one("gouache_generation_seconds_bucket", model="tiny", le="1.0") == 0
    assert one("gouache_generation_seconds_bucket", model="tiny", le="2.0") == 1
    assert one("gouache_generation_seconds_bucket", model="tiny", le="5.0") == 1
    assert one("gouache_generation_seconds_bucket", model="tiny", le="10.0") == 2
    assert one("gouache_generation_seconds_bucket", model="tiny", le="+Inf") == 2
    assert one("gouache_generation_seconds_bucket", model="sdxl", le="30.0") == 0
    assert one("gouache_generation_seconds_bucket", model="sdxl", le="60.0") == 1

    # credits, from the ledger
    assert one("gouache_credits_held") == 8 + 3 + 3  # the running and the two queued jobs
    assert one("gouache_credits_held_total") == -kinds[ledger.HOLD] == 20 + 10 + 40 + 15 + 5 + 8 + 3 + 3
    assert one("gouache_credits_captured_total") == 20 + 10 + 40
    assert one("gouache_credits_released_total") == kinds[ledger.RELEASE] == 15 + 5
    assert one("gouache_credits_bought_total") == 1000
    assert one("gouache_credits_granted_total") == kinds[ledger.GRANT] == 500
    # held = captured + released + still held
    assert one("gouache_credits_held_total") == (
        one("gouache_credits_captured_total") + one("gouache_credits_released_total") + one("gouache_credits_held")
    )


def test_later_scrapes_add_only_what_settled_since(settings, settled_at_once):
    gil = seed(settings)
    first = scrape(settings)
    # finished now (created 4 s ago, started 1 s later, 3 s of work), as a worker finishes
    make_job(settings, gil, JobStatus.SUCCEEDED, model="tiny", price=6, seconds=3, created_ago=timedelta(seconds=4))
    second = scrape(settings)
    assert value(second, "gouache_generation_seconds_count", model="tiny") == 3
    assert value(second, "gouache_generation_seconds_bucket", model="tiny", le="5.0") == 2
    assert value(second, "gouache_credits_captured_total") == value(first, "gouache_credits_captured_total") + 6
    assert value(second, "gouache_jobs_finished_total", state="succeeded", model="tiny") == 3
    third = scrape(settings)

    def database(m: dict) -> dict:
        return {name: samples for name, samples in m.items() if not name.startswith("gouache_http_")}

    assert database(third) == database(second)  # nothing new: the same numbers


def test_counters_trail_by_the_settle_time_but_what_is_active_is_live(settings):
    seed(settings)  # every ledger entry was written just now
    m = scrape(settings)
    assert value(m, "gouache_credits_bought_total") == 0  # not settled yet
    assert value(m, "gouache_credits_held") == 14  # live
    assert value(m, "gouache_queue_depth", model="sdxl") == 2
    # the jobs finished minutes ago are counted
    assert value(m, "gouache_generation_seconds_count", model="tiny") == 2


def test_http_latency_is_labelled_by_route_template(settings):
    app = create_app(settings)
    http = TestClient(app, client=LOOPBACK, follow_redirects=False)

    def count(route: str, status: str = "2xx", method: str = "GET") -> float:
        labels = (("method", method), ("route", route), ("status", status))
        samples = {}
        for family in text_string_to_metric_families(http.get("/metrics").text):
            for s in family.samples:
                if s.name == "gouache_http_request_duration_seconds_count":
                    samples[tuple(sorted(s.labels.items()))] = s.value
        return samples.get(labels, 0)

    before = count("/jobs/{job_id}", "3xx"), count("/healthz"), count("unmatched", "4xx")
    for job_id in ("a", "b", "c"):
        assert http.get(f"/jobs/{job_id}").status_code == 303  # to the login page
    http.get("/healthz")
    http.get("/no/such/page")
    after = count("/jobs/{job_id}", "3xx"), count("/healthz"), count("unmatched", "4xx")
    # three job ids are one series, not three
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 1, 1]
    text = http.get("/metrics").text
    assert 'route="/jobs/a"' not in text


def test_without_a_token_only_loopback_may_scrape(settings):
    app = create_app(settings)
    assert TestClient(app, client=LOOPBACK).get("/metrics").status_code == 200
    assert TestClient(app, client=("::1", 5)).get("/metrics").status_code == 200
    remote = TestClient(app, client=("203.0.113.9", 5)).get("/metrics")
    assert remote.status_code == 403 and "GOUACHE_METRICS_TOKEN" in remote.text
    assert "gouache_jobs" not in remote.text


def test_with_a_token_a_bearer_header_is_required_from_anywhere(tmp_path, tiny_model_path):
    settings = migrated(make_settings(tmp_path / "data", tiny_model_path, metrics_token="s3cret-token"))
    app = create_app(settings)
    for client in (LOOPBACK, ("203.0.113.9", 5)):
        http = TestClient(app, client=client)
        missing = http.get("/metrics")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert http.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/metrics", headers={"Authorization": "Basic s3cret-token"}).status_code == 401
        assert http.get("/metrics", headers={"Authorization": "Bearer ünïcode".encode()}).status_code == 401
        ok = http.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200 and "gouache_queue_depth" in ok.text


def test_several_web_processes_report_every_request(settings, tmp_path):
    """`gouache web --workers 2`: each process counts its own requests in prometheus-client's
    multiprocess files, and whichever process answers a scrape sums them all."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "web", "--port", str(port), "--workers", "2"],
        cwd=REPO_ROOT,
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out = Output(proc, tmp_path / "web.log")
    try:
        started = r"Started server process \[(\d+)\]"
        out.wait_for(started, timeout=120)
        out.wait_for(started, timeout=120, after=len(out.lines))
        out.wait_for(r"Application startup complete", timeout=60)
        base = f"http://127.0.0.1:{port}"
        folder = settings.data_dir / "metrics"
        sent = 0
        # A new connection each: the two processes share the accepts. Until both answered some.
        while sent < 40 or (len(list(folder.glob("histogram_*.db"))) < 2 and sent < 2000):
            with urllib.request.urlopen(f"{base}/healthz", timeout=10) as response:
                assert response.status == 200
            sent += 1
        assert len(list(folder.glob("histogram_*.db"))) == 2  # both processes counted requests
        for _ in range(4):
            with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
                text = response.read().decode()
            counts = [
                s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name == "gouache_http_request_duration_seconds_count" and s.labels.get("route") == "/healthz"
            ]
            assert counts == [sent]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
