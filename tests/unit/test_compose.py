"""compose.yaml, checked without Docker: it parses, every GOUACHE_ variable it sets is a
real setting and the settings it makes are valid and point at the scale-out engines,
every service it depends on and every volume it mounts exists, each long-running part
has a health check (the web's is /readyz), and every `gouache` command it runs exists."""

from __future__ import annotations

import os
import re

import pytest
import typer

from app.config import REPO_ROOT, Settings

yaml = pytest.importorskip("yaml")

LONG_RUNNING = {"postgres", "redis", "minio", "web", "worker", "janitor"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())


def interpolated(value: object) -> str:
    """A value as Compose would set it with no .env file: ${NAME:-default} -> default."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


def gouache_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    return {k: interpolated(v) for k, v in env.items() if k.startswith("GOUACHE_")}


def test_every_gouache_variable_is_a_setting(compose):
    known = {f"GOUACHE_{name.upper()}" for name in Settings.model_fields}
    for name, service in compose["services"].items():
        unknown = sorted(set(gouache_env(service)) - known)
        assert unknown == [], f"{name} sets variables Settings does not read: {unknown}"


def test_the_services_get_valid_scale_out_settings(compose, monkeypatch):
    for name in ("web", "worker", "janitor", "migrate"):
        env = gouache_env(compose["services"][name])
        for variable in [v for v in os.environ if v.startswith("GOUACHE_")]:
            monkeypatch.delenv(variable)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings(_env_file=None)
        assert settings.database_url.startswith("postgresql+psycopg://") and "@postgres:" in settings.database_url
        assert settings.broker_url.startswith("redis://redis:")
        assert (settings.storage, settings.s3_endpoint_url) == ("s3", "http://minio:9000")


def test_dependencies_and_volumes_exist(compose):
    services, volumes = compose["services"], set(compose.get("volumes") or {})
    for name, service in services.items():
        assert set(service.get("depends_on") or {}) <= set(services), name
        for mount in service.get("volumes") or []:
            source = mount.split(":")[0]
            assert source.startswith((".", "/")) or source in volumes, f"{name} mounts an undeclared volume {source}"


def test_long_running_parts_have_health_checks_and_the_web_probes_readyz(compose):
    services = compose["services"]
    assert LONG_RUNNING <= set(services)
    assert all("healthcheck" in services[name] for name in LONG_RUNNING - {"janitor"})
    assert "/readyz" in " ".join(services["web"]["healthcheck"]["test"])
    for engine in ("postgres", "redis", "minio"):
        assert services[engine]["volumes"], f"{engine} keeps its data in a volume"


def test_every_gouache_command_it_runs_exists(compose):
    from workers.cli import cli

    group = typer.main.get_command(cli)
    registered = set(group.commands)  # type: ignore[attr-defined]
    used = {
        service["command"][1]
        for service in compose["services"].values()
        if isinstance(service.get("command"), list) and service["command"][:1] == ["gouache"]
    }
    assert {"web", "worker", "db", "janitor"} <= used
    assert used <= registered
