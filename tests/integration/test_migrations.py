"""The migrations and the models describe the same schema: on a database migrated to
the newest revision, autogenerate (with migrations/env.py's own settings) proposes nothing,
so a developer's next `alembic revision --autogenerate` holds only their change."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from app.config import Settings
from app.db import transaction
from app.migrate import alembic_config


def autogenerate_diff(settings: Settings) -> list:
    """What autogenerate would write, run through env.py so its configure() options apply."""
    config = alembic_config(settings)
    script = ScriptDirectory.from_config(config)
    diffs: list = []

    def compare(_heads, context: MigrationContext) -> list:
        diffs.extend(compare_metadata(context, context.opts["target_metadata"]))
        return []  # no migration steps to run

    with EnvironmentContext(config, script, fn=compare):
        script.run_env()
    return diffs


def test_a_migrated_database_matches_the_models(any_db_settings):
    assert autogenerate_diff(any_db_settings) == []


def test_only_the_search_objects_are_left_out(any_db_settings):
    """env.py leaves the hand-written search alone, not everything the models lack."""
    with transaction(any_db_settings) as session:
        session.execute(text("ALTER TABLE images ADD COLUMN stray INTEGER"))
        session.execute(text("CREATE TABLE image_search_stray (id INTEGER PRIMARY KEY)"))
    proposed = {(diff[0], getattr(diff[-1], "name", None)) for diff in autogenerate_diff(any_db_settings)}
    assert proposed == {("remove_column", "stray"), ("remove_table", "image_search_stray")}
