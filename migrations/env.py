"""Alembic environment: the database URL comes from Gouache's Settings."""

from __future__ import annotations

from alembic import context

import app.accounts.models  # noqa: F401  (register every table on Base.metadata)
import app.admin.models  # noqa: F401
import app.apikeys.models  # noqa: F401
import app.credits.models  # noqa: F401
import app.gallery.models  # noqa: F401
import app.generation.models  # noqa: F401
from app.config import get_settings
from app.db import Base, get_engine

config = context.config
settings = config.attributes.get("settings") or get_settings()

# Prompt search is written in SQL by the migrations, not described by the models
# (0004, 0005, 0007): autogenerate must leave it alone rather than propose dropping it.
# SQLite: the FTS5 table and the shadow tables FTS5 keeps beside it.
SEARCH_TABLES = {"image_search"} | {f"image_search_{part}" for part in ("data", "idx", "content", "docsize", "config")}
# PostgreSQL: images.search, a tsvector filled by a trigger, and its GIN index.
SEARCH_COLUMNS = {("images", "search")}
SEARCH_INDEXES = {("images", "ix_images_search")}


def include_name(name, type_, parent_names) -> bool:
    """Skip the search objects before they are even reflected (FTS5 tables reflect as NullType)."""
    table = parent_names.get("table_name")
    if type_ == "table":
        return name not in SEARCH_TABLES
    if type_ == "column":
        return (table, name) not in SEARCH_COLUMNS
    if type_ == "index":
        return (table, name) not in SEARCH_INDEXES
    return True


def run_migrations_online() -> None:
    engine = get_engine(settings)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=settings.is_sqlite,  # SQLite alters tables by copying them
            compare_type=True,
            include_name=include_name,
        )
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
