"""Fixtures for the unit tests: settings as a fresh install sees them, and a
migrated SQLite database.

Settings read ``GOUACHE_*`` variables and a ``.env`` file in the working
directory. Unit tests must not depend on whatever the shell (or another test
suite) exported, so ``make_settings`` builds them from defaults and explicit
arguments only.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from app.config import Settings
from app.generation.catalog import BUILTIN_TINY_MODEL


def _isolated_settings(data_dir: Path, **overrides) -> Settings:
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.upper().startswith("GOUACHE_"):
                mp.delenv(name)
        return Settings(_env_file=None, data_dir=data_dir, **overrides)


@pytest.fixture(scope="session")
def make_settings() -> Callable[..., Settings]:
    """``make_settings(data_dir, **overrides)``: no GOUACHE_ variables, no .env file."""
    return _isolated_settings


@pytest.fixture(scope="session")
def new_email() -> Callable[[], str]:
    """A fresh address each call, so tests sharing a database never collide."""
    return lambda prefix="user": f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Defaults, but with the built-in tiny test model (sizes 64..256, native 128), whose
    limits the request-validation tests are written against."""
    return _isolated_settings(tmp_path, model=BUILTIN_TINY_MODEL)


@pytest.fixture(scope="module")
def db_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """One migrated SQLite database per test module; tests make their own users in it."""
    from app.migrate import upgrade

    settings = _isolated_settings(tmp_path_factory.mktemp("db"))
    upgrade(settings)
    return settings
