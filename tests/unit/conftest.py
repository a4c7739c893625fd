"""Fixtures for the unit tests: settings as a fresh install sees them, and a
migrated SQLite database (``tests.support.make_settings`` reads no ``GOUACHE_*``
variable and no ``.env`` file, so nothing the shell exported leaks in)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from app.config import Settings
from app.generation.catalog import BUILTIN_TINY_MODEL
from tests.support import make_settings as _make_settings
from tests.support import migrated


@pytest.fixture(scope="session")
def make_settings() -> Callable[..., Settings]:
    """``make_settings(data_dir, **overrides)``: a fresh install's settings."""
    return _make_settings


@pytest.fixture(scope="session")
def new_email() -> Callable[..., str]:
    """A fresh address each call, so tests sharing a database never collide."""

    def new(prefix: str = "user") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"

    return new


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Defaults, but with the built-in tiny test model (sizes 64..256, native 128), whose
    limits the request-validation tests are written against."""
    return _make_settings(tmp_path, model=BUILTIN_TINY_MODEL)


@pytest.fixture(scope="module")
def db_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """One migrated SQLite database per test module; tests make their own users in it."""
    return migrated(_make_settings(tmp_path_factory.mktemp("db")))
