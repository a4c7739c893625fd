"""Stemmed gallery search (issue 15, item 10): "stars" finds "star", "painting" finds
"paint", on SQLite (FTS5's porter tokenizer) and PostgreSQL (the 'english' configuration),
while prefixes, any case and every-word searches work as before; and migration 0014
rebuilds the index so images made before it are found by a stemmed search after it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import text

from app.db import transaction
from app.gallery import search
from app.migrate import alembic_config, upgrade
from tests.gallery_data import add_image, user_id
from tests.support import make_settings

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
PROMPTS = [
    "a star over the harbour",
    "painting of a lighthouse in the fog",
    "two cats running through snow",
    "Café façade at night",
    "a paint pot",
]


def found(settings, owner: int, q: str) -> set[str]:
    """The prompts a search for ``q`` shows (every page at once)."""
    with transaction(settings) as session:
        page = search.list_images(session, owner, search.parse_filters({"q": q}), limit=100)
        return {image.job.prompt for image in page.images}


def gallery(settings) -> int:
    owner = user_id(settings, "ada@example.com")
    for n, prompt in enumerate(PROMPTS):
        add_image(settings, owner, prompt, created_at=T0 + timedelta(minutes=n), files=False)
    return owner


CASES = [
    ("stars", {"a star over the harbour"}),  # a plural finds the singular
    ("star", {"a star over the harbour"}),
    ("paintings", {"painting of a lighthouse in the fog", "a paint pot"}),
    ("paint", {"painting of a lighthouse in the fog", "a paint pot"}),
    ("lighthouses", {"painting of a lighthouse in the fog"}),
    ("cat run", {"two cats running through snow"}),  # every word, each stemmed
    ("ran", set()),  # stemming, not a thesaurus
    ("ligh", {"painting of a lighthouse in the fog"}),  # prefixes still match
    ("LIGHT", {"painting of a lighthouse in the fog"}),
    ("café", {"Café façade at night"}),
    ("snowy", set()),  # no word of a prompt stems to "snowi"
    ("harbour zebra", set()),
]


@pytest.mark.parametrize(("q", "expected"), CASES, ids=[q for q, _ in CASES])
def test_a_search_matches_the_words_stems(any_db_settings, q, expected):
    owner = gallery(any_db_settings)
    assert found(any_db_settings, owner, q) == expected


def test_stop_words_still_match_as_prefixes(any_db_settings):
    """'english' drops "in" and "the" from its stems; they still match as written."""
    owner = gallery(any_db_settings)
    assert found(any_db_settings, owner, "in fog") == {"painting of a lighthouse in the fog"}
    assert found(any_db_settings, owner, "the") == {"a star over the harbour", "painting of a lighthouse in the fog"}


def test_the_gallery_page_finds_stemmed_words(make_client, settings):
    """Through the page a user types into: "stars" shows the image whose prompt says "star"."""
    client = make_client(settings)
    client.sign_up("ada@example.com")
    owner = user_id(settings, "ada@example.com")
    star = add_image(settings, owner, "a star over the harbour", files=False)
    cat = add_image(settings, owner, "two cats", files=False)
    page = client.get("/gallery", params={"q": "stars"})
    assert page.status_code == 200
    assert star in page.text and cat not in page.text


def index_definition(settings) -> str:
    with transaction(settings) as session:
        return session.scalar(text("SELECT sql FROM sqlite_master WHERE name = 'image_search'"))


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_migration_0014_makes_older_images_found_by_stems_and_back(tmp_path, tiny_model_path, request, db):
    """Images made at 0013 (words indexed as written) are found by their stems after 0014:
    "cities" (stem "citi") finds "city" only once the index holds "citi". Downgrading to
    0013 puts the words back as written, and images made at either revision join the index."""
    overrides = {} if db == "sqlite" else {"database_url": request.getfixturevalue("pg_url")}
    settings = make_settings(tmp_path / db, tiny_model_path, **overrides)
    upgrade(settings, "0013")
    owner = gallery(settings)
    add_image(settings, owner, "an old city at dusk", created_at=T0 + timedelta(hours=1), files=False)
    old = {"an old city at dusk"}
    assert found(settings, owner, "cities") == set()  # before: the index has "city", not its stem
    assert found(settings, owner, "city") == old

    upgrade(settings)
    assert found(settings, owner, "cities") == old
    assert found(settings, owner, "stars") == {"a star over the harbour"}
    assert found(settings, owner, "paintings") == {"painting of a lighthouse in the fog", "a paint pot"}
    assert found(settings, owner, "ligh") == {"painting of a lighthouse in the fog"}
    if db == "sqlite":
        definition = index_definition(settings)
        assert "porter unicode61" in definition and "prefix='2 3 4 5 6 7 8'" in definition
    add_image(settings, owner, "a city by the sea", created_at=T0 + timedelta(days=1), files=False)
    cities = old | {"a city by the sea"}
    assert found(settings, owner, "cities") == cities  # new images are indexed by stems too

    command.downgrade(alembic_config(settings), "0013")
    assert found(settings, owner, "cities") == set()
    assert found(settings, owner, "city") == cities
    assert found(settings, owner, "lighthou") == {"painting of a lighthouse in the fog"}
    if db == "sqlite":
        assert "porter" not in index_definition(settings)
    add_image(settings, owner, "a city of glass", created_at=T0 + timedelta(days=2), files=False)
    assert found(settings, owner, "city") == cities | {"a city of glass"}

    upgrade(settings)
    assert found(settings, owner, "cities") == cities | {"a city of glass"}
