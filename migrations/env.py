"""Alembic environment: the database URL comes from Gouache's Settings."""

from __future__ import annotations

from alembic import context

import app.accounts.models  # noqa: F401  (register every table on Base.metadata)
import app.credits.models  # noqa: F401
import app.gallery.models  # noqa: F401
import app.generation.models  # noqa: F401
from app.config import get_settings
from app.db import Base, get_engine

config = context.config
settings = config.attributes.get("settings") or get_settings()


def run_migrations_online() -> None:
    engine = get_engine(settings)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=settings.is_sqlite,  # SQLite alters tables by copying them
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
