"""Fixtures shared by every test layer: settings on a temp data dir, a migrated
database, a logged-in client in one line, tiny models, real worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import REPO_ROOT, Settings

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PASSWORD = "a long enough passphrase"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random SD pipeline in the diffusers folder layout (built once per run)."""
    from workers.tiny_model import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sdxl_model(tmp_path_factory) -> Path:
    """A tiny random SDXL-shaped pipeline (two text encoders), built once per run."""
    from workers.tiny_model import build_tiny_sdxl_pipeline

    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def broken_model(tmp_path_factory) -> Path:
    """Loads like a real model but raises while sampling (text width ≠ UNet cross-attention width)."""
    from workers.tiny_model import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "broken-sd", cross_attention_dim=48)


def make_settings(data_dir: Path, model: Path | str, **overrides) -> Settings:
    values = dict(
        data_dir=data_dir,
        model=str(model),
        model_name="Tiny test model",
        model_default_size=64,
        model_max_size=128,
        model_default_steps=4,
        signup_grant_credits=200,
    )
    values.update(overrides)
    return Settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives another process (a worker, uvicorn) these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOUACHE_")}
    env.update(
        GOUACHE_DATA_DIR=str(settings.data_dir),
        GOUACHE_DATABASE_URL=settings.database_url,
        GOUACHE_BROKER_URL=settings.broker_url,
        GOUACHE_STORAGE=settings.storage,
        GOUACHE_STORAGE_DIR=str(settings.storage_dir),
        GOUACHE_MODEL=settings.model,
        GOUACHE_MODEL_NAME=settings.model_name,
        GOUACHE_MODEL_DEFAULT_SIZE=str(settings.model_default_size),
        GOUACHE_MODEL_MAX_SIZE=str(settings.model_max_size),
        GOUACHE_MODEL_DEFAULT_STEPS=str(settings.model_default_steps),
        GOUACHE_SIGNUP_GRANT_CREDITS=str(settings.signup_grant_credits),
        GOUACHE_DEVICE="cpu",
        PYTHONUNBUFFERED="1",
    )
    if settings.model_catalog is not None:
        env["GOUACHE_MODEL_CATALOG"] = str(settings.model_catalog)
    return env


class Worker:
    """A real `gouache worker` process consuming the queues of the catalog's models
    (or only of ``models``, comma-separated ids)."""

    def __init__(self, settings: Settings, log_path: Path, models: str | None = None):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "worker", "--loglevel=INFO", *(["--models", models] * bool(models))],
            cwd=REPO_ROOT,
            env=settings_env(settings),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.log_path.read_text()}")
            if " ready." in self.log_path.read_text():
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


@pytest.fixture
def start_worker(tmp_path) -> Iterator:
    workers: list[Worker] = []

    def start(settings: Settings, models: str | None = None) -> Worker:
        worker = Worker(settings, tmp_path / f"worker-{len(workers)}.log", models)
        workers.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.stop()


def migrated(settings: Settings) -> Settings:
    from app.migrate import upgrade

    upgrade(settings)
    return settings


@pytest.fixture
def settings(tmp_path, tiny_model) -> Settings:
    return migrated(make_settings(tmp_path / "data", tiny_model))


class Browserless:
    """A TestClient that behaves like a browser: keeps cookies and sends the CSRF token."""

    def __init__(self, app):
        from fastapi.testclient import TestClient

        self.http = TestClient(app, follow_redirects=False)
        self.http.get("/login")  # receive the CSRF cookie like a first visit

    @property
    def csrf(self) -> str:
        return self.http.cookies["gouache_csrf"]

    def form(self, url: str, data: dict) -> object:
        return self.http.post(url, data={**data, "csrf_token": self.csrf})

    def api_post(self, url: str, json: dict, **headers) -> object:
        return self.http.post(url, json=json, headers={"X-CSRF-Token": self.csrf, **headers})

    def get(self, url: str, **kw):
        return self.http.get(url, **kw)

    def sign_up(self, email: str, password: str = PASSWORD):
        response = self.form("/signup", {"email": email, "password": password})
        assert response.status_code == 303, response.text
        return response


@pytest.fixture
def make_client(settings):
    from app.main import create_app

    def make(for_settings: Settings | None = None) -> Browserless:
        return Browserless(create_app(for_settings or settings))

    return make


@pytest.fixture
def client(make_client) -> Browserless:
    return make_client()


@pytest.fixture
def user_client(make_client) -> Browserless:
    """A logged-in user, in one line."""
    c = make_client()
    c.sign_up("ada@example.com")
    return c


def wait_for_job(c: Browserless, job_id: str, timeout: float = 180) -> dict:
    """Poll the job's API until it is settled (the same polling the page does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/api/v1/generations/{job_id}").json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.25)
    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")


def run_threads(n: int, target) -> list:
    """Run target(i) on n threads released together; return results or exceptions."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def body(i):
        barrier.wait()
        try:
            results[i] = target(i)
        except Exception as e:  # collected for the assertions
            results[i] = e

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


from tests.pg import any_db_settings, pg_server, pg_url  # noqa: E402, F401  (PostgreSQL fixtures)
from tests.s3 import bucket, s3_endpoint  # noqa: E402, F401  (S3 fixtures: moto on loopback)
