"""Configuration: an operator sets GOUACHE_* variables (or a .env file), and a
fresh install with nothing set keeps everything under one data directory."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.generation.catalog import BUILTIN_TINY_MODEL, get_catalog


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No GOUACHE_ variables from the shell, and a working directory with no .env."""
    for name in list(os.environ):
        if name.upper().startswith("GOUACHE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_gouache_environment_variables_are_read(monkeypatch, tmp_path):
    monkeypatch.setenv("GOUACHE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GOUACHE_SIGNUP_GRANT_CREDITS", "50")
    monkeypatch.setenv("GOUACHE_PRICE_BASE_CREDITS", "2.5")
    monkeypatch.setenv("GOUACHE_SESSION_DAYS", "7")
    monkeypatch.setenv("GOUACHE_STORAGE", "s3")
    monkeypatch.setenv("GOUACHE_S3_BUCKET", "pictures")
    monkeypatch.setenv("GOUACHE_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("GOUACHE_MAX_IMAGES_PER_JOB", "6")

    settings = Settings()

    assert settings.data_dir == tmp_path / "data"
    assert settings.signup_grant_credits == 50
    assert settings.price_base_credits == 2.5
    assert settings.session_days == 7
    assert settings.storage == "s3"
    assert settings.s3_bucket == "pictures"
    assert settings.s3_endpoint_url == "http://127.0.0.1:9000"
    assert settings.max_images_per_job == 6


def test_variables_without_the_prefix_are_ignored(monkeypatch):
    monkeypatch.setenv("SIGNUP_GRANT_CREDITS", "5")
    monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere/db")
    settings = Settings()
    assert settings.signup_grant_credits == 200
    assert settings.is_sqlite


def test_defaults_put_database_broker_and_objects_under_the_data_dir(tmp_path):
    data_dir = tmp_path / "gouache-data"
    settings = Settings(data_dir=data_dir)

    assert settings.database_url == f"sqlite:///{data_dir}/gouache.db"
    assert settings.broker_url == f"sqla+sqlite:///{data_dir}/broker.sqlite"
    assert settings.storage_dir == data_dir / "objects"
    assert settings.storage == "filesystem"
    assert settings.is_sqlite


def test_the_data_dir_from_the_environment_moves_everything(monkeypatch, tmp_path):
    monkeypatch.setenv("GOUACHE_DATA_DIR", str(tmp_path / "srv"))
    settings = Settings()
    assert settings.database_url == f"sqlite:///{tmp_path}/srv/gouache.db"
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path}/srv/broker.sqlite"
    assert settings.storage_dir == tmp_path / "srv" / "objects"


def test_a_relative_data_dir_is_made_absolute_against_the_working_directory(monkeypatch, tmp_path):
    # The web process and the worker may be started from different places later;
    # the URLs they share must not depend on that.
    monkeypatch.setenv("GOUACHE_DATA_DIR", "state")
    settings = Settings()
    assert settings.data_dir == tmp_path / "state"
    assert settings.data_dir.is_absolute()
    assert settings.database_url == f"sqlite:///{tmp_path}/state/gouache.db"


def test_with_nothing_set_the_data_dir_is_var_in_the_working_directory(tmp_path):
    settings = Settings()
    assert settings.data_dir == tmp_path / "var"
    assert settings.database_url == f"sqlite:///{tmp_path}/var/gouache.db"


def test_an_explicit_database_url_wins(monkeypatch, tmp_path):
    url = "postgresql+psycopg://gouache:secret@db.internal:5432/gouache"
    monkeypatch.setenv("GOUACHE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GOUACHE_DATABASE_URL", url)
    settings = Settings()
    assert settings.database_url == url
    assert not settings.is_sqlite
    # The other defaults still follow the data dir.
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path}/broker.sqlite"
    assert settings.storage_dir == tmp_path / "objects"


def test_explicit_broker_url_and_storage_dir_win(monkeypatch, tmp_path):
    monkeypatch.setenv("GOUACHE_BROKER_URL", "redis://queue:6379/0")
    monkeypatch.setenv("GOUACHE_STORAGE_DIR", str(tmp_path / "elsewhere"))
    settings = Settings(data_dir=tmp_path)
    assert settings.broker_url == "redis://queue:6379/0"
    assert settings.storage_dir == tmp_path / "elsewhere"
    assert settings.database_url == f"sqlite:///{tmp_path}/gouache.db"


def test_the_committed_demo_model_is_the_default():
    from app.generation.catalog import BUILTIN_DEMO_MODEL, DEMO_MODEL_DIR

    settings = Settings()
    model = get_catalog(settings).default
    assert settings.model == BUILTIN_DEMO_MODEL and model.source == BUILTIN_DEMO_MODEL
    assert (DEMO_MODEL_DIR / "model_index.json").is_file()
    assert model.default_size == 256 and model.default_steps == 20
    assert model.example_prompts


def test_the_builtin_test_model_is_small(monkeypatch):
    monkeypatch.setenv("GOUACHE_MODEL", BUILTIN_TINY_MODEL)
    settings = Settings()
    model = get_catalog(settings).default
    assert settings.model == BUILTIN_TINY_MODEL
    assert model.untrained
    assert model.default_size == 128
    assert model.max_size == 256
    assert model.default_steps == 20
    assert "untrained" in model.name.lower()


def test_a_real_model_gets_stable_diffusion_sized_defaults(monkeypatch):
    monkeypatch.setenv("GOUACHE_MODEL", "stabilityai/sd-turbo")
    model = get_catalog(Settings()).default
    assert not model.untrained
    assert model.name == "stabilityai/sd-turbo"
    assert model.default_size == 512
    assert model.max_size == 768
    assert model.default_steps == 30


def test_explicit_model_limits_win_over_the_model_defaults(monkeypatch):
    monkeypatch.setenv("GOUACHE_MODEL", "/models/sdxl")
    monkeypatch.setenv("GOUACHE_MODEL_NAME", "SDXL base")
    monkeypatch.setenv("GOUACHE_MODEL_DEFAULT_SIZE", "1024")
    monkeypatch.setenv("GOUACHE_MODEL_DEFAULT_STEPS", "40")
    model = get_catalog(Settings()).default
    assert model.name == "SDXL base"
    assert model.default_size == 1024
    assert model.max_size == 1024  # never below the default size
    assert model.default_steps == 40


def test_a_dotenv_file_in_the_working_directory_is_read(tmp_path):
    (tmp_path / ".env").write_text(
        "GOUACHE_SIGNUP_GRANT_CREDITS=77\n"
        "GOUACHE_MODEL_NAME=From the dotenv file\n"
        f"GOUACHE_DATA_DIR={tmp_path / 'dotenv-data'}\n"
    )
    settings = Settings()
    assert settings.signup_grant_credits == 77
    assert settings.model_name == "From the dotenv file"
    assert settings.database_url == f"sqlite:///{tmp_path}/dotenv-data/gouache.db"


def test_an_environment_variable_beats_the_dotenv_file(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("GOUACHE_SIGNUP_GRANT_CREDITS=77\n")
    monkeypatch.setenv("GOUACHE_SIGNUP_GRANT_CREDITS", "12")
    assert Settings().signup_grant_credits == 12


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GOUACHE_STORAGE", "ftp"),
        ("GOUACHE_SESSION_DAYS", "0"),
        ("GOUACHE_SIGNUP_GRANT_CREDITS", "-5"),
        ("GOUACHE_PRICE_BASE_CREDITS", "0"),
        ("GOUACHE_MAX_IMAGES_PER_JOB", "10"),
        ("GOUACHE_MODEL_MAX_STEPS", "many"),
    ],
)
def test_a_bad_value_stops_the_start_with_an_error_naming_the_setting(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    field = name.removeprefix("GOUACHE_").lower()
    assert field in str(excinfo.value)
