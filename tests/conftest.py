"""Fixtures shared by every test layer: settings on a temp data dir, a migrated
database, a logged-in client in one line, tiny models, real worker processes.
What they do lives in tests/support.py; these only give it a lifetime."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.config import Settings
from tests.support import Browserless, SmtpSink, Worker, make_settings, migrated

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# Fixtures that build a model here, with torch; tests asking for one are marked `model`.
MODEL_FIXTURES = {"tiny_model", "tiny_sdxl_model", "broken_model"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "model: builds or runs a model in the test process (needs torch)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session", autouse=True)
def cheap_password_hashes() -> Iterator[None]:
    """argon2id at its smallest cost: a production-cost hash takes about 0.35 s, and tests make
    hundreds. Processes the tests start (uvicorn, workers) keep the production cost."""
    from app.accounts import service
    from app.accounts.throttle import GatedHasher

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(service, "_hasher", GatedHasher(time_cost=1, memory_cost=1024, parallelism=1))
        yield


# Where the tiny pipelines live once ``tiny_model`` / ``tiny_sdxl_model`` have built them.
# Settings and catalogs may name these paths without building them (or importing torch):
# only workers and pipelines load a model.
@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "models" / "tiny-sd"


@pytest.fixture(scope="session")
def tiny_sdxl_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "models" / "tiny-sdxl"


@pytest.fixture(scope="session")
def tiny_model(tiny_model_path: Path) -> Path:
    """A tiny random SD pipeline in the diffusers folder layout (built once per run)."""
    from workers.tiny_model import build_tiny_pipeline

    return build_tiny_pipeline(tiny_model_path)


@pytest.fixture(scope="session")
def tiny_sdxl_model(tiny_sdxl_model_path: Path) -> Path:
    """A tiny random SDXL-shaped pipeline (two text encoders), built once per run."""
    from workers.tiny_model import build_tiny_sdxl_pipeline

    return build_tiny_sdxl_pipeline(tiny_sdxl_model_path)


@pytest.fixture(scope="session")
def broken_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Loads like a real model but raises while sampling (text width ≠ UNet cross-attention width)."""
    from workers.tiny_model import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "broken-sd", cross_attention_dim=48)


@pytest.fixture
def start_worker(tmp_path: Path, tiny_model: Path) -> Iterator[Callable[..., Worker]]:
    """``start_worker(settings, models=None)``: a ready worker process, stopped after the test
    (``tiny_model`` is built first, for settings that name it)."""
    workers: list[Worker] = []

    def start(settings: Settings, models: str | None = None) -> Worker:
        worker = Worker(settings, tmp_path / f"worker-{len(workers)}.log", models)
        workers.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def settings(tmp_path: Path, tiny_model_path: Path) -> Settings:
    return migrated(make_settings(tmp_path / "data", tiny_model_path))


@pytest.fixture
def make_client(settings: Settings) -> Callable[..., Browserless]:
    from app.main import create_app

    def make(for_settings: Settings | None = None) -> Browserless:
        return Browserless(create_app(for_settings or settings))

    return make


@pytest.fixture
def client(make_client) -> Browserless:
    return make_client()


@pytest.fixture
def smtp_server() -> Iterator[SmtpSink]:
    """A real SMTP server on loopback that keeps what it receives (``.settings()`` points Settings at it)."""
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def user_client(make_client) -> Browserless:
    """A logged-in user, in one line."""
    c = make_client()
    c.sign_up("ada@example.com")
    return c


from tests.pg import any_db_settings, module_db_settings, pg_server, pg_url  # noqa: E402, F401  (PostgreSQL fixtures)
from tests.s3 import bucket, s3_endpoint  # noqa: E402, F401  (S3 fixtures: moto on loopback)
