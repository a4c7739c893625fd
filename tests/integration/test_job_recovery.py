"""Jobs that survive crashes and a queue shared fairly, on the real parts: worker processes
on the SQLite broker, the janitor's loop, the HTTP API and the form.

- a worker killed (-9) in the middle of a job: the janitor requeues it and another worker
  finishes it, once: one set of images, one capture, no preview left behind;
- the web process dying between committing a job and sending it: the janitor sends it, it
  runs, and a retry with the same Idempotency-Key returns that job;
- the per-user cap: one job more gets 429 (JSON, and a form error on the page) and holds
  nothing, even for simultaneous submits; another user's first job starts after at most the
  cap's worth of the busy user's jobs.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.config import REPO_ROOT, Settings
from app.credits import ledger
from app.credits.models import LedgerEntry
from app.db import transaction, utcnow
from app.gallery.models import Image
from app.generation import janitor, schemas, service
from app.generation.models import Job
from app.storage import get_storage, preview_key
from tests.redis_broker import redis_url  # noqa: F401  (the fixture)
from tests.support import Browserless, make_settings, migrated, run_threads, settings_env, wait_for_job

LEASE_S = 3  # a killed worker's job is requeued within a few seconds


class WorkerProcess:
    """A real ``gouache worker`` with this module's lease setting."""

    def __init__(self, settings: Settings, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "w")
        env = {**settings_env(settings), "GOUACHE_JOB_LEASE_S": str(settings.job_lease_s)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "worker", "--loglevel=INFO"],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 180) -> WorkerProcess:
        until(lambda: " ready." in self.log() or self.proc.poll() is not None, timeout, f"worker:\n{self.log()}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited:\n{self.log()}")
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def until(predicate, timeout: float, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting: {what}"[:4000])
        time.sleep(0.1)


@pytest.fixture
def workers(tmp_path) -> Iterator:
    started: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def leased(tmp_path, tiny_model) -> Settings:
    return migrated(make_settings(tmp_path / "data", tiny_model, job_lease_s=LEASE_S))


@pytest.fixture(params=["embedded", "scale-out"])
def backend(request, tmp_path, tiny_model) -> Settings:
    """The embedded default, and scale-out: PostgreSQL, Redis and S3 (moto's server), each a
    real server, with a queue name of the test's own on the shared Redis."""
    if request.param == "embedded":
        return request.getfixturevalue("leased")
    return migrated(
        make_settings(
            tmp_path / "data",
            tiny_model,
            job_lease_s=LEASE_S,
            database_url=request.getfixturevalue("pg_url"),
            broker_url=request.getfixturevalue("redis_url"),
            queue=f"generate-{uuid.uuid4().hex[:8]}",
            storage="s3",
            s3_endpoint_url=request.getfixturevalue("s3_endpoint"),
            s3_bucket=request.getfixturevalue("bucket"),
        )
    )


def stored_keys(settings: Settings, prefix: str) -> list[str]:
    """The keys under ``prefix`` in the settings' object store, listed the store's own way."""
    if settings.storage == "s3":
        client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region)
        listed = client.list_objects_v2(Bucket=settings.s3_bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listed.get("Contents", []))
    root = settings.storage_dir
    return sorted(str(p.relative_to(root)) for p in (root / prefix).rglob("*") if p.is_file()) if root else []


@pytest.fixture
def janitor_running(backend) -> Iterator[None]:
    """The janitor's loop, as ``gouache janitor`` (or ``gouache dev``) runs it."""
    stop = threading.Event()
    thread = threading.Thread(target=janitor.run, args=(backend, stop, 0.2), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=30)


def job_row(settings: Settings, job_id: str) -> Job:
    with transaction(settings) as session:
        return session.get_one(Job, job_id)


def ledger_kinds(settings: Settings, job_id: str) -> list[str]:
    with transaction(settings) as session:
        return sorted(session.scalars(select(LedgerEntry.kind).where(LedgerEntry.job_id == job_id)))


@pytest.mark.worker
def test_a_worker_killed_mid_job_is_replaced_and_the_job_finishes_once(backend, make_client, workers, janitor_running):
    settings = backend
    first, second = workers(settings), workers(settings)
    first.wait_ready()
    second.wait_ready()
    c = make_client(settings)
    c.sign_up("ada@example.com")
    job = c.api_post("/api/v1/generations", {"prompt": "a red circle", "width": 128, "height": 128, "steps": 100})
    assert job.status_code == 202, job.text
    job = job.json()

    until(lambda: job_row(settings, job["id"]).progress_step >= 2, 120, "the job to start")
    running_on = next(w for w in (first, second) if f"job {job['id']}:" in w.log())
    other = second if running_on is first else first
    running_on.kill()
    killed_at, killed_wall = time.monotonic(), utcnow()

    done = wait_for_job(c, job["id"], timeout=300)
    row = job_row(settings, job["id"])
    restarted = (row.started_at - killed_wall).total_seconds()
    print(
        f"\nkill -9 → done: {time.monotonic() - killed_at:.1f} s; kill → attempt 2 running: {restarted:.1f} s "
        f"(lease {LEASE_S} s; the rest is the 100 steps run again) on {settings.storage}, {settings.broker_url[:5]}"
    )
    assert done["status"] == "succeeded", done["error"]
    assert f"job {job['id']}: attempt 2" in other.log()
    assert row.attempts == 2
    with transaction(settings) as session:
        images = session.scalars(select(Image).where(Image.job_id == job["id"])).all()
    assert len(images) == 1 == len(done["images"])  # one set of images
    assert ledger_kinds(settings, job["id"]) == [ledger.CAPTURE, ledger.HOLD]  # one capture, no release
    assert not get_storage(settings).exists(preview_key(row.user_id, job["id"]))  # no orphan preview
    prefix = f"images/{row.user_id}/{job['id']}/"
    assert stored_keys(settings, prefix) == [prefix + "0.png", prefix + "0.thumb.webp"]


@pytest.mark.worker
def test_a_job_whose_web_process_died_before_sending_runs(backend, make_client, workers, janitor_running, monkeypatch):
    settings = backend
    worker = workers(settings)
    c = make_client(settings)
    c.sign_up("ada@example.com")
    user_id = _user_id(settings, "ada@example.com")

    def web_process_dies(*_args, **_kwargs):
        raise SystemExit("killed between the commit and the send")

    with monkeypatch.context() as m:
        m.setattr(service, "send_generate", web_process_dies)
        req = schemas.parse_request({"prompt": "a blue square", "steps": 4}, settings)
        with pytest.raises(SystemExit):
            service.submit(settings, user_id, req, "key-1")
    ghost = service._job_by_request(settings, user_id, "key-1")
    assert ghost.status == "queued" and ghost.sent_at is None

    worker.wait_ready()
    retried = c.api_post("/api/v1/generations", {"prompt": "a blue square", "steps": 4}, **{"Idempotency-Key": "key-1"})
    assert retried.status_code == 202 and retried.json()["id"] == ghost.id
    done = wait_for_job(c, ghost.id)
    assert done["status"] == "succeeded", done["error"]
    assert ledger_kinds(settings, ghost.id) == [ledger.CAPTURE, ledger.HOLD]
    assert job_row(settings, ghost.id).attempts == 1


def _user_id(settings: Settings, email: str) -> int:
    from app.accounts.models import User

    with transaction(settings) as session:
        return session.scalar(select(User.id).where(User.email == email))


@pytest.mark.worker
def test_one_users_backlog_delays_anothers_first_job_by_at_most_the_cap(tmp_path, tiny_model, make_client, workers):
    cap = 2
    settings = migrated(make_settings(tmp_path / "data", tiny_model, max_active_jobs_per_user=cap))
    busy, newcomer = make_client(settings), make_client(settings)
    busy.sign_up("busy@example.com")
    newcomer.sign_up("new@example.com")
    small = {"prompt": "a green star", "width": 64, "height": 64, "steps": 2}

    tries = [busy.api_post("/api/v1/generations", small) for _ in range(8)]  # a client queueing all it can
    assert [r.status_code for r in tries] == [202] * cap + [429] * (8 - cap)
    refused = tries[-1].json()
    assert "2 jobs queued or running" in refused["error"] and "nothing was charged" in refused["error"]
    held = _balance(settings, "busy@example.com")
    page = busy.form("/generate", {**small, "size": "64x64", "n": 1, "request_id": "one-more"})
    assert page.status_code == 429 and "2 jobs queued or running" in page.text and 'id="form-error"' in page.text
    assert _balance(settings, "busy@example.com") == held  # a refusal holds nothing

    first = newcomer.api_post("/api/v1/generations", small).json()
    workers(settings).wait_ready()
    done = wait_for_job(newcomer, first["id"])
    assert done["status"] == "succeeded"
    busy_id = _user_id(settings, "busy@example.com")
    with transaction(settings) as session:
        started_first = session.scalar(select(Job.started_at).where(Job.id == first["id"]))
        busy_started_before = session.scalars(
            select(Job.id).where(Job.user_id == busy_id, Job.started_at < started_first)
        ).all()
    assert len(busy_started_before) <= cap
    for job in (r.json() for r in tries[:cap]):
        assert wait_for_job(busy, job["id"])["status"] == "succeeded"
    assert busy.api_post("/api/v1/generations", small).status_code == 202  # room again


def _balance(settings: Settings, email: str) -> int:
    from app.accounts.models import User

    with transaction(settings) as session:
        user = session.scalar(select(User).where(User.email == email))
        assert ledger.balance(session, user.id) == ledger.ledger_sum(session, user.id)
        return user.balance


def test_simultaneous_submits_past_the_cap_hold_nothing(any_db_settings):
    """Ten submits at once from one account with a cap of 3: three jobs, three holds."""
    from app.main import create_app

    settings = any_db_settings.model_copy(update={"max_active_jobs_per_user": 3})
    app = create_app(settings)
    owner = Browserless(app)
    owner.sign_up("racer@example.com")
    cookies = {name: owner.http.cookies[name] for name in ("gouache_session", "gouache_csrf")}
    clients = [TestClient(app, cookies=cookies) for _ in range(10)]

    def submit(i: int):
        return clients[i].post(
            "/api/v1/generations",
            json={"prompt": "a lighthouse", "steps": 4},
            headers={"X-CSRF-Token": cookies["gouache_csrf"], "Idempotency-Key": f"race-{i}"},
        )

    try:
        responses = run_threads(10, submit)
    finally:
        for client in clients:
            client.close()
    assert sorted(r.status_code for r in responses) == [202] * 3 + [429] * 7, [r.text for r in responses]
    accepted = {r.json()["id"] for r in responses if r.status_code == 202}
    with transaction(settings) as session:
        user_id = session.scalar(select(Job.user_id).where(Job.id.in_(accepted)))
        jobs = set(session.scalars(select(Job.id).where(Job.user_id == user_id)))
        holds = set(session.scalars(select(LedgerEntry.job_id).where(LedgerEntry.kind == ledger.HOLD)))
    assert jobs == accepted == holds
    assert _balance(settings, "racer@example.com") == 200 - sum(
        r.json()["price"] for r in responses if r.status_code == 202
    )


def test_gouache_janitor_sweeps_until_sigterm(leased, tmp_path):
    env = {**settings_env(leased), "GOUACHE_JOB_LEASE_S": str(LEASE_S)}
    once = subprocess.run(
        [sys.executable, "-m", "app.cli", "janitor", "--once"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert once.returncode == 0 and "Janitor: nothing to do." in once.stdout, once.stderr
    log = tmp_path / "janitor.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "janitor", "--interval", "0.2"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            until(lambda: "janitor: sweeping every 0.2s" in log.read_text(), 60, log.read_text())
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert "SIGTERM received; stopping" in log.read_text()


def test_jobs_from_before_leases_are_migrated_as_sent_and_a_running_one_goes_to_the_janitor(any_db_settings):
    from alembic import command
    from sqlalchemy import text

    from app.main import create_app
    from app.migrate import alembic_config, upgrade

    settings = any_db_settings
    c = Browserless(create_app(settings))
    c.sign_up("ada@example.com")
    queued = c.api_post("/api/v1/generations", {"prompt": "a cat", "steps": 4}).json()
    running = c.api_post("/api/v1/generations", {"prompt": "a dog", "steps": 4}).json()
    command.downgrade(alembic_config(settings), "0007")
    with transaction(settings) as session:  # a worker had it when the old version stopped
        session.execute(
            text("UPDATE jobs SET status = 'running', heartbeat_at = created_at WHERE id = :id"), {"id": running["id"]}
        )
    upgrade(settings)
    old_queued, old_running = job_row(settings, queued["id"]), job_row(settings, running["id"])
    assert old_queued.sent_at == old_queued.created_at and old_queued.attempts == 0
    assert old_running.attempts == 1 and old_running.lease_expires_at == old_running.heartbeat_at
    assert janitor.sweep(settings, housekeeping=False).requeued == 1
    assert job_row(settings, running["id"]).status == "queued"
