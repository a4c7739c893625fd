"""Alembic, driven from code: `gouache db upgrade` and the start-up check."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from app.config import REPO_ROOT, Settings
from app.db import get_engine


class NotMigrated(RuntimeError):
    pass


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    cfg.attributes["settings"] = settings
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings), revision)


def check_current(settings: Settings) -> None:
    """Raise NotMigrated unless the database is at the newest migration."""
    head = ScriptDirectory.from_config(alembic_config(settings)).get_current_head()
    with get_engine(settings).connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current != head:
        raise NotMigrated(
            f"The database at {settings.database_url.split('@')[-1]} is at migration {current or 'none'}, "
            f"but this version of Gouache needs {head}. Run `gouache db upgrade` first."
        )
