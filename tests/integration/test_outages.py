"""The parts a job depends on going away and coming back, on real processes:

- Redis stopped with jobs queued (and a job submitted while it is down), then started
  again: every job runs, once;
- the object store failing while a worker stores a job's images: the job fails with a
  message for its owner, its hold is released, nothing half-stored is listed or left;
- no worker at all for five minutes: queued jobs keep their place and their holds (the
  janitor neither fails nor refunds them), then run when a worker comes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image as PILImage
from sqlalchemy import select

from app.config import Settings
from app.credits import ledger
from app.credits.models import LedgerEntry
from app.db import transaction
from app.enums import JobStatus
from app.gallery.models import Image
from app.generation import janitor, schemas, service
from app.generation.models import Job
from app.storage import get_storage
from app.storage.filesystem import FilesystemStorage
from tests.redis_broker import redis_url  # noqa: F401  (the fixture: this module needs Redis installed)
from tests.support import make_settings, migrated, wait_for_job

# How long the "no worker" story waits. The figure is five minutes; a developer may
# shorten it locally (GOUACHE_TEST_NO_WORKER_S=30); CI runs the full wait.
NO_WORKER_S = float(os.environ.get("GOUACHE_TEST_NO_WORKER_S", "300"))


def until(predicate, timeout: float, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting: {what}"[:4000])
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def janitor_running(request) -> Iterator[callable]:
    """``start(settings, interval_s)``: the janitor's loop, as ``gouache dev`` runs it."""
    stops: list[tuple[threading.Event, threading.Thread]] = []

    def start(settings: Settings, interval_s: float | None = None) -> None:
        stop = threading.Event()
        thread = threading.Thread(
            target=janitor.run, args=(settings, stop, interval_s or settings.janitor_interval_s), daemon=True
        )
        thread.start()
        stops.append((stop, thread))

    yield start
    for stop, thread in stops:
        stop.set()
        thread.join(timeout=30)


def ledger_kinds(settings: Settings, job_id: str) -> list[str]:
    with transaction(settings) as session:
        return sorted(session.scalars(select(LedgerEntry.kind).where(LedgerEntry.job_id == job_id)))


def job_row(settings: Settings, job_id: str) -> Job:
    with transaction(settings) as session:
        return session.get_one(Job, job_id)


def balance_of(settings: Settings, user_id: int) -> int:
    from app.accounts.models import User

    with transaction(settings) as session:
        balance = session.get_one(User, user_id).balance
        assert balance == ledger.ledger_sum(session, user_id)
        return balance


# ---- Redis goes away --------------------------------------------------------------------


class RedisServer:
    """A redis-server of this test's own (the shared one must stay up), persisting to an
    append-only file as compose.yaml's does, so it can be stopped and started again."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--appendonly", "yes", "--save", "", "--protected-mode", "no",
            ],
            stdout=open(self.dir / "redis.log", "a"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        import redis

        def answers() -> bool:
            try:
                return bool(redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping())
            except redis.RedisError:
                return False

        until(answers, 30, "redis-server to answer")

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits (a graceful restart)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def own_redis(tmp_path, redis_url) -> Iterator[RedisServer]:  # noqa: F811  (redis_url: skip without Redis)
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.mark.worker
def test_jobs_queued_while_redis_restarts_all_run_once(
    tmp_path, tiny_model, own_redis, make_client, start_worker, janitor_running
):
    settings = migrated(make_settings(tmp_path / "data", tiny_model, broker_url=own_redis.url))
    start_worker(settings)
    janitor_running(settings, 0.5)
    c = make_client(settings)
    c.sign_up("ada@example.com")

    def post(steps: int):
        return c.api_post("/api/v1/generations", {"prompt": "a lantern", "width": 64, "height": 64, "steps": steps})

    def submit(steps: int) -> str:
        response = post(steps)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    running = submit(60)
    until(lambda: job_row(settings, running).status == JobStatus.RUNNING, 120, "the first job to start")
    queued = [submit(4), submit(4)]  # waiting behind it, in Redis
    before_outage = balance_of(settings, job_row(settings, running).user_id)

    own_redis.stop()
    started = time.monotonic()
    refused = post(4)  # the web process cannot send it: the user is told at once, nothing held
    outage_submit_s = time.monotonic() - started
    assert refused.status_code == 503, refused.text
    assert "queue is unavailable" in refused.json()["error"] and "nothing was charged" in refused.json()["error"]
    assert balance_of(settings, job_row(settings, running).user_id) == before_outage
    own_redis.start()
    restarted = time.monotonic()
    during = submit(4)  # and once it is back, submitting works again

    jobs = [running, *queued, during]
    done = {job_id: wait_for_job(c, job_id, timeout=240) for job_id in jobs}
    print(
        f"\nsubmit while Redis was down answered in {outage_submit_s:.2f} s; "
        f"all 4 jobs done {time.monotonic() - restarted:.1f} s after Redis came back"
    )
    assert {job_id: job["status"] for job_id, job in done.items()} == dict.fromkeys(jobs, "succeeded")
    for job_id in jobs:
        assert ledger_kinds(settings, job_id) == [ledger.CAPTURE, ledger.HOLD]  # each charged once
        assert job_row(settings, job_id).attempts == 1
    with transaction(settings) as session:
        assert len(session.scalars(select(Image).where(Image.job_id.in_(jobs))).all()) == 4


# ---- the object store fails --------------------------------------------------------------


@pytest.fixture
def own_s3(s3_endpoint) -> Iterator[tuple[ThreadedMotoServer, str]]:
    """A moto S3 server of this test's own, to stop mid-job (``s3_endpoint`` sets the fake
    AWS credentials in the environment the worker inherits)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="gouache-outage")
    yield server, endpoint
    try:
        server.stop()
    except Exception:
        pass  # stopped by the test


@pytest.mark.worker
def test_storage_failing_while_a_job_is_stored_fails_it_cleanly(
    tmp_path, tiny_model, own_s3, make_client, start_worker
):
    server, endpoint = own_s3
    settings = migrated(
        make_settings(tmp_path / "data", tiny_model, storage="s3", s3_endpoint_url=endpoint, s3_bucket="gouache-outage")
    )
    start_worker(settings)
    c = make_client(settings)
    c.sign_up("ada@example.com")
    submitted = c.api_post(
        "/api/v1/generations", {"prompt": "a kite", "width": 64, "height": 64, "steps": 80, "n": 2}
    ).json()
    job_id = submitted["id"]
    user_id = job_row(settings, job_id).user_id
    until(lambda: job_row(settings, job_id).progress_step >= 2, 120, "the job to start")

    server.stop()  # the store goes away while the pipeline runs; the images cannot be saved
    stopped = time.monotonic()
    job = wait_for_job(c, job_id, timeout=240)
    print(f"\nstore down → job failed in {time.monotonic() - stopped:.1f} s: {job['error']}")

    assert job["status"] == "failed"
    assert "could not be saved" in job["error"] and "Nothing was charged" in job["error"]
    assert endpoint not in job["error"]  # the owner reads a sentence, not the store's address
    assert ledger_kinds(settings, job_id) == [ledger.HOLD, ledger.RELEASE]
    assert balance_of(settings, user_id) == settings.signup_grant_credits
    with transaction(settings) as session:
        assert session.scalars(select(Image).where(Image.job_id == job_id)).all() == []  # nothing listed
    assert 'class="tile' not in c.get("/gallery").text  # the gallery shows nothing of it


class FailsOnSecondImage(FilesystemStorage):
    """The filesystem store, except that the second PNG put fails (the store went away
    after the first image was saved)."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.pngs = 0

    def put(self, key: str, data: bytes, content_type: str) -> None:
        if content_type == "image/png":
            self.pngs += 1
            if self.pngs == 2:
                raise ConnectionError("the store hung up")
        super().put(key, data, content_type)


@pytest.mark.worker
def test_a_store_failing_part_way_leaves_no_half_stored_job(tmp_path, tiny_model, monkeypatch):
    """The first image is saved, the second is not: the first is removed again, nothing is
    listed, the hold goes back (the worker's task, called in this process)."""
    from workers import tasks

    settings = migrated(make_settings(tmp_path / "data", tiny_model))
    from app.accounts import service as accounts
    from app.credits import service as credits

    with transaction(settings) as session:
        user = accounts.sign_up(session, "ada@example.com", "a long enough passphrase")
        credits.grant_signup_credits(session, settings, user.id)
        user_id = user.id
    req = schemas.parse_request({"prompt": "two kites", "width": 64, "height": 64, "steps": 2, "n": 2}, settings)
    job = service.submit(settings, user_id, req, "part-way")

    store = FailsOnSecondImage(settings.storage_dir)
    made = [(PILImage.new("RGB", (64, 64), colour), seed) for colour, seed in (("red", 1), ("blue", 2))]
    monkeypatch.setattr(tasks, "get_settings", lambda: settings)
    monkeypatch.setattr(tasks, "get_storage", lambda _settings: store)
    monkeypatch.setattr(tasks, "run", lambda *_args, **_kw: made)
    tasks.generate(job.id)

    row = job_row(settings, job.id)
    assert row.status == JobStatus.FAILED and "could not be saved" in row.error
    assert store.pngs == 2
    assert ledger_kinds(settings, job.id) == [ledger.HOLD, ledger.RELEASE]
    assert balance_of(settings, user_id) == settings.signup_grant_credits
    left = [p for p in settings.storage_dir.rglob("*") if p.is_file() and job.id in str(p)]
    assert left == []  # the first image and its thumbnail were removed again


# ---- no worker for a while ----------------------------------------------------------------


@pytest.mark.worker
def test_queued_jobs_wait_for_a_worker_that_comes_late(
    tmp_path, tiny_model, make_client, start_worker, janitor_running
):
    settings = migrated(make_settings(tmp_path / "data", tiny_model))  # every timer at its default
    janitor_running(settings)
    c = make_client(settings)
    c.sign_up("ada@example.com")
    jobs = []
    for prompt in ("a pear", "a plum"):
        response = c.api_post("/api/v1/generations", {"prompt": prompt, "width": 64, "height": 64, "steps": 4})
        assert response.status_code == 202, response.text
        jobs.append(response.json())
    user_id = job_row(settings, jobs[0]["id"]).user_id
    held = balance_of(settings, user_id)
    assert held == settings.signup_grant_credits - sum(job["price"] for job in jobs)

    waited_until = time.monotonic() + NO_WORKER_S
    while time.monotonic() < waited_until:  # nobody serves the queue
        for job in jobs:
            row = job_row(settings, job["id"])
            assert row.status == JobStatus.QUEUED and row.sent_at is not None and row.attempts == 0
        assert balance_of(settings, user_id) == held  # the holds stay: not failed, not refunded
        time.sleep(min(5.0, max(0.0, waited_until - time.monotonic())))

    start_worker(settings)
    came = time.monotonic()
    done = [wait_for_job(c, job["id"]) for job in jobs]
    print(f"\nno worker for {NO_WORKER_S:.0f} s; both jobs done {time.monotonic() - came:.1f} s after one started")
    assert [job["status"] for job in done] == ["succeeded", "succeeded"]
    for job in jobs:
        assert ledger_kinds(settings, job["id"]) == [ledger.CAPTURE, ledger.HOLD]
    with transaction(settings) as session:
        keys = session.scalars(select(Image.storage_key).where(Image.job_id.in_([job["id"] for job in jobs]))).all()
    assert len(keys) == 2 and all(get_storage(settings).exists(key) for key in keys)
