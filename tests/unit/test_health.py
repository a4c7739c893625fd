"""An operator's probes: /healthz says the process is up, /readyz says whether the
database, the broker and object storage answer, and names the one that does not,
within seconds even when a part is dead."""

from __future__ import annotations

import socket
import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def probe(tmp_path, make_settings):
    def client(**overrides) -> TestClient:
        settings = make_settings(tmp_path / "data", **overrides)
        return TestClient(create_app(settings, check_migrations=False))

    return client


def test_healthz_answers_without_touching_the_database(probe):
    # A database that cannot be reached does not matter to the liveness probe.
    client = probe(database_url=f"postgresql+psycopg://nobody:x@127.0.0.1:{closed_port()}/none")
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_on_the_embedded_default_reports_every_part_ready(probe):
    response = probe().get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "broker", "storage"}
    assert all(check["ok"] for check in body["checks"].values())


def test_readyz_names_a_dead_broker_and_does_not_hang(probe):
    client = probe(broker_url=f"redis://127.0.0.1:{closed_port()}/0")
    started = time.monotonic()
    response = client.get("/readyz")
    took = time.monotonic() - started

    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["broker"]
    assert "refused" in body["checks"]["broker"]["error"].lower()
    assert body["checks"]["database"]["ok"] and body["checks"]["storage"]["ok"]
    assert took < 10  # the checks' deadline is 2 s; nothing waits on a dead part


def test_readyz_names_an_unreachable_database(probe):
    response = probe(database_url=f"postgresql+psycopg://nobody:x@127.0.0.1:{closed_port()}/none").get("/readyz")
    assert response.status_code == 503
    assert response.json()["failing"] == ["database"]


def test_readyz_names_unreachable_object_storage(probe, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    client = probe(storage="s3", s3_endpoint_url=f"http://127.0.0.1:{closed_port()}")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["failing"] == ["storage"]


def test_a_check_that_never_answers_fails_at_the_deadline(tmp_path, make_settings, monkeypatch):
    import threading

    from app.ops import health

    never = threading.Event()
    monkeypatch.setitem(health.CHECKS, "broker", lambda settings, timeout_s: never.wait())
    try:
        checks = health.readiness(make_settings(tmp_path / "data"), timeout_s=0.3)
    finally:
        never.set()
    assert not checks["broker"].ok and checks["broker"].error == "no answer within 0.3 s"
    assert checks["database"].ok and checks["storage"].ok
