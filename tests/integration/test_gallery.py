"""The personal gallery: filters that combine (on SQLite and PostgreSQL), keyset pages,
collections, deletion down to the storage objects, zip downloads, thumbnails, and
another user's ids answering 404 everywhere."""

from __future__ import annotations

import io
import json
import random
import re
import zipfile
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from alembic import command
from PIL import Image as PILImage
from sqlalchemy import select, text

from app.db import transaction
from app.errors import NotFound, UserError
from app.gallery import search, service
from app.gallery.collections import (
    add_to_collection,
    collections_of,
    create_collection,
    delete_collection,
    get_collection,
    list_collections,
    remove_from_collection,
    rename_collection,
)
from app.gallery.models import CollectionImage, Image
from app.migrate import alembic_config, upgrade
from app.storage import get_storage
from tests.gallery_data import add_image, png, user_id
from tests.support import make_settings

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
PROMPTS = {  # number: (prompt, mode, model, size, favourite)
    1: ("a red lighthouse at dusk", "txt2img", "models/alpha", (64, 64), True),
    2: ("lighthouse in the fog", "img2img", "models/alpha", (96, 64), False),
    3: ("blue cat on a sofa", "txt2img", "models/beta", (64, 96), True),
    4: ("red cat in snow", "inpaint", "models/beta", (64, 64), False),
    5: ("city at night, neon", "upscale", "models/alpha", (128, 64), False),
    6: ("Café façade, watercolour", "variation", "models/beta", (64, 64), False),
    7: ("outpainted red lighthouse", "outpaint", "models/alpha", (64, 96), True),
}


@pytest.fixture
def seeded(any_db_settings):
    """Seven images a day apart for Ada, two collections, and Bob's look-alike image."""
    settings = any_db_settings
    ada, bob = user_id(settings, "ada@example.com"), user_id(settings, "bob@example.com")
    ids = {}
    for n, (prompt, mode, model, size, favourite) in PROMPTS.items():
        ids[n] = add_image(
            settings, ada, prompt, mode=mode, model=model, size=size, favourite=favourite,
            created_at=T0 + timedelta(days=n - 1), files=False,
        )  # fmt: skip
    add_image(settings, bob, "a red lighthouse at dusk", created_at=T0, favourite=True, files=False)
    with transaction(settings) as session:
        lighthouses = create_collection(session, ada, "Lighthouses").id
        cats = create_collection(session, ada, "Cats").id
        add_to_collection(session, ada, lighthouses, [ids[1], ids[2], ids[7]])
        add_to_collection(session, ada, cats, [ids[3], ids[4], ids[1]])  # 1 is in both
    return settings, ada, ids, {"Lighthouses": lighthouses, "Cats": cats}


def shown(settings, owner, ids, after=None, limit=100, **filters) -> list[int]:
    number = {image_id: n for n, image_id in ids.items()}
    with transaction(settings) as session:
        page = search.list_images(session, owner, search.parse_filters(filters), after, limit)
        return [number[image.id] for image in page.images]


DAY = lambda n: (T0 + timedelta(days=n - 1)).date().isoformat()  # noqa: E731  (the day image n was made)

CASES = [
    ({}, [7, 6, 5, 4, 3, 2, 1]),
    ({"q": "lighthouse"}, [7, 2, 1]),
    ({"q": "LIGHT"}, [7, 2, 1]),  # any case, words as prefixes
    ({"q": "red lighthouse"}, [7, 1]),  # every word
    ({"q": "café"}, [6]),
    ({"q": "zebra"}, []),
    ({"q": '"*) OR NEAR( -x'}, []),  # search syntax is just words
    ({"q": "***"}, [7, 6, 5, 4, 3, 2, 1]),  # no words: no search
    ({"q": "red", "mode": "inpaint"}, [4]),
    ({"model": "models/beta"}, [6, 4, 3]),
    ({"mode": "img2img"}, [2]),
    ({"aspect": "landscape"}, [5, 2]),
    ({"aspect": "portrait"}, [7, 3]),
    ({"aspect": "square"}, [6, 4, 1]),
    ({"favourites": "1"}, [7, 3, 1]),
    ({"favourites": "1", "aspect": "square"}, [1]),
    ({"date_from": DAY(3), "date_to": DAY(5)}, [5, 4, 3]),
    ({"date_to": DAY(1)}, [1]),
    ({"sort": "oldest", "q": "lighthouse"}, [1, 2, 7]),
    ({"model": "models/alpha", "aspect": "landscape", "date_from": DAY(4)}, [5]),
    ({"model": "models/nonexistent"}, []),
]


@pytest.mark.parametrize(("filters", "expected"), CASES, ids=[json.dumps(c[0], ensure_ascii=False) for c in CASES])
def test_filters_combine_into_one_query(seeded, filters, expected):
    settings, ada, ids, _ = seeded
    assert shown(settings, ada, ids, **filters) == expected


def test_collection_filters_combine_with_the_others(seeded):
    settings, ada, ids, collections = seeded
    assert shown(settings, ada, ids, collection=collections["Lighthouses"]) == [7, 2, 1]
    assert shown(settings, ada, ids, collection=collections["Cats"], q="cat") == [4, 3]
    assert shown(settings, ada, ids, collection=collections["Cats"], favourites="1", sort="oldest") == [1, 3]


@pytest.mark.parametrize("sort", ["newest", "oldest"])
def test_keyset_pages_walk_every_image_once_in_order(seeded, sort):
    settings, ada, ids, _ = seeded
    walked, after = [], None
    with transaction(settings) as session:
        while True:
            page = search.list_images(session, ada, search.Filters(sort=sort), after, limit=2)
            walked += [image.id for image in page.images]
            if not page.has_next:
                break
            after = page.next_cursor
    order = [7, 6, 5, 4, 3, 2, 1] if sort == "newest" else [1, 2, 3, 4, 5, 6, 7]
    assert walked == [ids[n] for n in order]


def test_an_image_made_meanwhile_does_not_shift_the_next_page(seeded):
    settings, ada, ids, _ = seeded
    with transaction(settings) as session:
        first = search.list_images(session, ada, search.Filters(), limit=3)
    add_image(settings, ada, "brand new", files=False)
    assert shown(settings, ada, ids, after=first.next_cursor, limit=3) == [4, 3, 2]


def test_neighbours_follow_the_filters(seeded):
    settings, ada, ids, _ = seeded
    with transaction(settings) as session:
        image = session.get(Image, ids[2])
        assert search.neighbours(session, ada, image, search.Filters(q="lighthouse")) == (ids[7], ids[1])
        assert search.neighbours(session, ada, image, search.Filters(sort="oldest")) == (ids[1], ids[3])
        newest = session.get(Image, ids[7])
        assert search.neighbours(session, ada, newest, search.Filters()) == (None, ids[6])


def test_the_model_list_has_each_model_once(seeded):
    settings, ada, _, _ = seeded
    with transaction(settings) as session:
        assert search.model_options(session, ada) == ["models/alpha", "models/beta"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"date_from": "31/05/2024"}, "date_from"),
        ({"date_to": "2024-13-01"}, "date_to"),
        ({"date_from": "2024-05-02", "date_to": "2024-05-01"}, "date_to"),
        ({"mode": "dreaming"}, "mode"),
        ({"aspect": "round"}, "aspect"),
        ({"sort": "random"}, "sort"),
        ({"favourites": "maybe"}, "favourites"),
    ],
)
def test_bad_filter_values_are_refused_with_a_message(params, field):
    with pytest.raises(UserError) as error:
        search.parse_filters(params)
    assert error.value.field == field and error.value.status_code == 422


def test_collections_are_created_renamed_filled_and_deleted(seeded):
    settings, ada, ids, collections = seeded
    with transaction(settings) as session:
        with pytest.raises(UserError, match="already have"):
            create_collection(session, ada, "  cats ")
        with pytest.raises(UserError, match="name"):
            create_collection(session, ada, "   ")
        rename_collection(session, ada, collections["Cats"], "Cats & kittens")
        assert add_to_collection(session, ada, collections["Cats"], [ids[3], ids[6]]) == 1  # 3 was in it
        assert collections_of(session, ada, ids[1]) == {collections["Cats"], collections["Lighthouses"]}
        remove_from_collection(session, ada, collections["Cats"], [ids[1]])
        summary = {c.name: (c.count, c.cover_id) for c in list_collections(session, ada)}
        assert summary == {"Cats & kittens": (3, ids[6]), "Lighthouses": (3, ids[7])}
        delete_collection(session, ada, collections["Lighthouses"])
    assert shown(settings, ada, ids) == [7, 6, 5, 4, 3, 2, 1]  # the images stay
    with transaction(settings) as session:
        left = session.scalars(select(CollectionImage.collection_id)).all()
        assert set(left) == {collections["Cats"]}
        with pytest.raises(NotFound):
            get_collection(session, ada, collections["Lighthouses"])


def test_another_users_ids_are_not_found_in_the_service(seeded):
    settings, ada, ids, collections = seeded
    bob = user_id(settings, "bob@example.com")
    with transaction(settings) as session:
        mine = create_collection(session, bob, "Bob's").id
        for attempt in (
            lambda: service.get_image(session, bob, ids[1]),
            lambda: service.set_favourite(session, bob, ids[1], False),
            lambda: add_to_collection(session, bob, mine, [ids[1]]),
            lambda: add_to_collection(session, ada, mine, [ids[1]]),
            lambda: search.list_images(session, bob, search.Filters(collection=collections["Cats"])),
            lambda: rename_collection(session, bob, collections["Cats"], "Mine now"),
            lambda: delete_collection(session, bob, collections["Cats"]),
        ):
            with pytest.raises(NotFound):
                attempt()


WORDS = ["lighthouse", "light", "cat", "castle", "dusk", "dawn", "kintsugi"]


def make_searchable(settings):
    """150 images for Ada whose prompts mix common and rare words, made out of order and
    with runs sharing one created_at (as a job's images may), and Bob's copies of some."""
    ada, bob = user_id(settings, "ada@example.com"), user_id(settings, "bob@example.com")
    rng = random.Random(6)
    made = []  # (created_at, id, prompt, mode, favourite)
    for n in rng.sample(range(150), 150):
        words = [w for w in WORDS[:-1] if rng.random() < 0.4] + (["kintsugi"] if n % 37 == 0 else [])
        prompt = " ".join(["a", *rng.sample(words, len(words)), "painting"])
        created = T0 + timedelta(seconds=n // 4)  # 4 images in each second
        mode, favourite = rng.choice(["txt2img", "img2img"]), rng.random() < 0.3
        image_id = add_image(settings, ada, prompt, mode=mode, favourite=favourite, created_at=created, files=False)
        made.append((created, image_id, prompt, mode, favourite))
        if n % 3 == 0:
            add_image(settings, bob, prompt, mode=mode, created_at=created, files=False)
    return settings, ada, made


@pytest.fixture(scope="module")
def searchable(module_db_settings):
    """make_searchable's gallery, made once per database for the tests that only read it."""
    return make_searchable(module_db_settings)


def brute_force(made, q="", mode="", favourites=False, sort="newest") -> list[str]:
    """What the gallery must show: every image filter by filter, in (created_at, id) order."""
    words = search.search_words(q)

    def matches(prompt: str) -> bool:
        tokens = re.findall(r"[^\W_]+", prompt.lower())
        return all(any(t.startswith(w) for t in tokens) for w in words)

    hits = [
        (created, image_id)
        for created, image_id, prompt, image_mode, favourite in made
        if matches(prompt) and (not mode or image_mode == mode) and (not favourites or favourite)
    ]
    return [image_id for _, image_id in sorted(hits, reverse=sort == "newest")]


SEARCHES = [
    {"q": "light"},  # common, and a prefix of two words
    {"q": "kintsugi"},  # rare
    {"q": "cat dusk"},
    {"q": "lighthouse castle dawn"},
    {"q": "ca", "mode": "img2img"},
    {"q": "dawn", "favourites": "1"},
    {"q": "light", "sort": "oldest"},
    {"q": "kintsugi cat", "sort": "oldest", "favourites": "1"},
    {"q": "zebra"},
]


@pytest.mark.parametrize("params", SEARCHES, ids=[json.dumps(p) for p in SEARCHES])
@pytest.mark.parametrize("limit", [1, 7, 200])
def test_search_pages_match_a_brute_force_filter(searchable, params, limit):
    """Every page of a search, walked with its cursor, is exactly the matching images in
    order: a common word, a rare one, several words, with other filters, both sorts."""
    settings, ada, made = searchable
    filters = search.parse_filters(params)
    walked, after = [], None
    with transaction(settings) as session:
        while True:
            page = search.list_images(session, ada, filters, after, limit=limit)
            assert len(page.images) == limit or not page.has_next
            walked += [image.id for image in page.images]
            if not page.has_next:
                break
            after = page.next_cursor
    expected = brute_force(made, filters.q, filters.mode, filters.favourites, filters.sort)
    assert walked == expected
    assert len(expected) > 0 or params["q"] == "zebra"


@pytest.mark.parametrize("first, walk_limit", [(1, 10_000), (1, 6), (3, 40)], ids=["windows", "plain", "both"])
@pytest.mark.parametrize("params", SEARCHES, ids=[json.dumps(p) for p in SEARCHES])
def test_search_windows_of_any_size_give_the_same_pages(searchable, monkeypatch, params, first, walk_limit):
    """SQLite's windowed search with tiny windows (edges inside runs of one created_at),
    and with the plain query taking over after a few windows: the same pages."""
    settings, ada, made = searchable
    monkeypatch.setattr(search, "WINDOW_FIRST", first)
    monkeypatch.setattr(search, "WINDOW_WALK_LIMIT", walk_limit)
    filters = search.parse_filters(params)
    expected = brute_force(made, filters.q, filters.mode, filters.favourites, filters.sort)
    walked, after = [], None
    with transaction(settings) as session:
        while True:
            page = search.list_images(session, ada, filters, after, limit=5)
            walked += [image.id for image in page.images]
            if not page.has_next:
                break
            after = page.next_cursor
        for i in range(0, len(expected), 7):
            image = session.get(Image, expected[i])
            before = expected[i - 1] if i > 0 else None
            later = expected[i + 1] if i + 1 < len(expected) else None
            assert search.neighbours(session, ada, image, filters) == (before, later)
    assert walked == expected


def test_search_neighbours_match_a_brute_force_filter(searchable):
    settings, ada, made = searchable
    filters = search.Filters(q="cat")
    expected = brute_force(made, "cat")
    with transaction(settings) as session:
        for i in (0, 1, len(expected) // 2, len(expected) - 1):
            image = session.get(Image, expected[i])
            before = expected[i - 1] if i > 0 else None
            after = expected[i + 1] if i + 1 < len(expected) else None
            assert search.neighbours(session, ada, image, filters) == (before, after)


def test_deleted_images_leave_the_search(any_db_settings):
    settings, ada, made = make_searchable(any_db_settings)
    expected = brute_force(made, "light")
    service.delete_images(settings, ada, expected[:3])
    assert shown(settings, ada, {i: i for i in expected}, q="light", limit=500) == expected[3:]


@contextmanager
def _without_later_job_columns():
    """Today's gallery queries on a database at 0006: they leave out the job columns that
    later revisions added (0008's lease), which the eager-loaded job would select."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session, defaultload, defer

    from app.generation.models import Job

    later = [defer(Job.sent_at), defer(Job.lease_expires_at), defer(Job.attempts)]

    def leave_out(state):
        descriptions = getattr(state.statement, "column_descriptions", [])
        if state.is_select and any(d.get("entity") is Image for d in descriptions):
            state.statement = state.statement.options(defaultload(Image.job).options(*later))

    event.listen(Session, "do_orm_execute", leave_out)
    try:
        yield
    finally:
        event.remove(Session, "do_orm_execute", leave_out)


def test_migrating_a_gallery_down_and_up_keeps_the_search(tmp_path, tiny_model_path, request):
    """0007 down to 0004 and back on both databases: the search finds the same images."""
    for db in ("sqlite", "postgres"):
        overrides = {} if db == "sqlite" else {"database_url": request.getfixturevalue("pg_url")}
        settings = make_settings(tmp_path / db, tiny_model_path, **overrides)
        upgrade(settings)
        ada = user_id(settings, "ada@example.com")
        ids = [add_image(settings, ada, f"a lighthouse number {n}", created_at=T0, files=False) for n in range(3)]
        ids.append(add_image(settings, ada, "a cat", created_at=T0 + timedelta(days=1), files=False))
        expected = sorted(ids[:3], reverse=True)
        command.downgrade(alembic_config(settings), "0006")  # 0007 rebuilds SQLite's FTS table
        with _without_later_job_columns():
            assert shown(settings, ada, {i: i for i in ids}, q="lighthou") == expected, db
        command.downgrade(alembic_config(settings), "0004")
        with transaction(settings) as session:
            hits = session.scalars(
                select(Image.id).where(Image.user_id == ada).order_by(Image.created_at.desc(), Image.id.desc())
            )
            assert len(list(hits)) == 4
        upgrade(settings)
        if db == "sqlite":
            with transaction(settings) as session:
                fts = session.scalar(text("SELECT sql FROM sqlite_master WHERE name = 'image_search'"))
            assert "prefix='2 3 4 5 6 7 8'" in fts
        assert shown(settings, ada, {i: i for i in ids}, q="lighthouse") == expected, db
        later = add_image(settings, ada, "a lighthouse, later", created_at=T0 + timedelta(days=2), files=False)
        assert shown(settings, ada, {i: i for i in [*ids, later]}, q="lighthouse") == [later, *expected], db


def test_migrating_an_existing_gallery_fills_the_new_columns_and_the_search(tmp_path, tiny_model_path, request):
    """A database made before 0004, with images, upgrades on both databases."""
    for db in ("sqlite", "postgres"):
        overrides = {} if db == "sqlite" else {"database_url": request.getfixturevalue("pg_url")}
        settings = make_settings(tmp_path / db, tiny_model_path, **overrides)
        upgrade(settings, "0003")
        with transaction(settings) as session:
            session.execute(text("INSERT INTO users (email, password_hash, balance, created_at) "
                                 "VALUES ('old@example.com', 'x', 0, :now)"), {"now": T0})  # fmt: skip
            owner = session.scalar(text("SELECT id FROM users"))
            session.execute(
                text("INSERT INTO jobs (id, user_id, client_request_id, status, mode, model, prompt, negative_prompt, "
                     "width, height, steps, guidance, seed, n_images, price, progress_step, error, created_at) VALUES "
                     "('j1', :u, 'r1', 'succeeded', 'img2img', 'old-model', 'an old harbour', '', 96, 64, 4, 5, 1, 1, "
                     "1, 4, '', :now)"),
                {"u": owner, "now": T0},
            )  # fmt: skip
            session.execute(
                text("INSERT INTO images (id, user_id, job_id, index, storage_key, width, height, seed, created_at) "
                     "VALUES ('i1', :u, 'j1', 0, 'images/1/j1/0.png', 96, 64, 1, :now)".replace("index", '"index"')),
                {"u": owner, "now": T0},
            )  # fmt: skip
        upgrade(settings)
        with transaction(settings) as session:
            image = session.get(Image, "i1")
            assert (image.mode, image.model, image.aspect, image.favourite, image.thumbnail_key) == (
                "img2img", "old-model", "landscape", False, None,
            )  # fmt: skip
            page = search.list_images(session, owner, search.Filters(q="harbour", mode="img2img"))
            assert [i.id for i in page.images] == ["i1"], db


# ---- through HTTP ---------------------------------------------------------------------


def ada_and_bob(make_client, settings):
    ada, bob = make_client(settings), make_client(settings)
    ada.sign_up("ada@example.com")
    bob.sign_up("bob@example.com")
    return ada, bob


def test_the_grid_pages_with_htmx_and_keeps_filters_in_links(settings, make_client):
    ada, _ = ada_and_bob(make_client, settings)
    owner = user_id(settings, "ada@example.com")
    for i in range(search.PAGE_SIZE + 5):
        add_image(settings, owner, f"harbour number {i}", created_at=T0 + timedelta(minutes=i), files=False)
    page = ada.get("/gallery", params={"q": "harbour"})
    assert page.status_code == 200
    assert page.text.count('class="cell"') == search.PAGE_SIZE
    assert "harbour number 34" in page.text and "harbour number 4<" not in page.text
    more = re.search(r'hx-get="(/gallery\?q=harbour&(?:amp;)?after=[\w-]+)"', page.text)
    assert more, "the last tile asks for the next page when revealed"
    assert 'href="/gallery/' in page.text and "?q=harbour" in page.text  # the lightbox keeps the filters
    rest = ada.get(more.group(1).replace("&amp;", "&"), headers={"HX-Request": "true"})
    assert rest.status_code == 200 and "<html" not in rest.text
    assert rest.text.count('class="cell"') == 5 and 'class="more"' not in rest.text
    assert 'src="/images/' in rest.text and '.webp"' in rest.text


def test_bad_gallery_urls_answer_4xx_with_a_message(settings, make_client):
    ada, bob = ada_and_bob(make_client, settings)
    for params, message in (
        ({"date_from": "yesterday"}, "must look like 2024-05-31"),
        ({"mode": "dreaming"}, "Unknown mode"),
        ({"aspect": "round"}, "Unknown aspect"),
        ({"after": "not a cursor!"}, "page link is broken"),
        ({"after": "bm90IGEgY3Vyc29y"}, "page link is broken"),
    ):
        response = ada.get("/gallery", params=params)
        assert response.status_code == 422, params
        assert message in response.text
    with transaction(settings) as session:
        theirs = create_collection(session, user_id(settings, "bob@example.com"), "Bob's").id
    assert ada.get("/gallery", params={"collection": theirs}).status_code == 404
    assert ada.get("/gallery", params={"collection": "nonsense"}).status_code == 404
    assert ada.form("/gallery/bulk", {"action": "explode", "ids": "x"}).status_code == 422
    assert ada.form("/gallery/bulk", {"action": "delete"}).status_code == 422  # nothing selected
    assert ada.form("/collections", {"name": ""}).status_code == 422
    mine = add_image(settings, user_id(settings, "ada@example.com"), "mine", files=False)
    assert ada.form(f"/gallery/{mine}/collections", {"name": "  "}).status_code == 422
    for sneaky in ("//evil.example/x", "/\\evil.example/x", "https://evil.example/"):
        response = ada.form(f"/gallery/{mine}/favourite", {"favourite": "1", "next": sneaky})
        assert response.status_code == 303 and response.headers["location"] == f"/gallery/{mine}"


def test_another_user_gets_404_for_every_url_and_id(settings, make_client):
    ada, bob = ada_and_bob(make_client, settings)
    a, b = user_id(settings, "ada@example.com"), user_id(settings, "bob@example.com")
    image = add_image(settings, a, "ada's secret garden")
    bobs_image = add_image(settings, b, "bob's own")
    with transaction(settings) as session:
        adas_collection = create_collection(session, a, "Ada's").id
        bobs_collection = create_collection(session, b, "Bob's").id
        add_to_collection(session, a, adas_collection, [image])
        job = session.get(Image, image).job_id
    for url in (
        f"/gallery/{image}", f"/images/{image}.png", f"/images/{image}.png?download=true", f"/images/{image}.webp",
        f"/gallery?collection={adas_collection}", f"/jobs/{job}", f"/jobs/{job}/card", f"/jobs/{job}/preview.jpg",
        f"/api/v1/generations/{job}",
    ):  # fmt: skip
        assert bob.get(url).status_code == 404, url
    for url, data in (
        (f"/gallery/{image}/favourite", {"favourite": "0"}),
        (f"/gallery/{image}/delete", {}),
        (f"/gallery/{image}/collections", {"collection": bobs_collection}),
        (f"/gallery/{image}/collections", {"collection": adas_collection, "action": "remove"}),
        (f"/gallery/{bobs_image}/collections", {"collection": adas_collection}),
        ("/gallery/bulk", {"action": "collect", "collection": bobs_collection, "ids": [bobs_image, image]}),
        ("/gallery/bulk", {"action": "collect", "collection": adas_collection, "ids": [bobs_image]}),
        ("/gallery/bulk", {"action": "favourite", "ids": [image]}),
        ("/gallery/bulk", {"action": "delete", "ids": [bobs_image, image]}),
        ("/gallery/download", {"ids": [image]}),
        ("/collections", {"name": "Sneaky", "ids": [image]}),
        (f"/collections/{adas_collection}/rename", {"name": "Mine now"}),
        (f"/collections/{adas_collection}/delete", {}),
        (f"/jobs/{job}/cancel", {}),
    ):
        assert bob.form(url, data).status_code == 404, (url, data)
    # nothing of Ada's changed, and nothing of Bob's was half done
    with transaction(settings) as session:
        row = session.get(Image, image)
        assert row is not None and row.favourite is False
        assert collections_of(session, a, image) == {adas_collection}
        assert get_collection(session, a, adas_collection).name == "Ada's"
        assert session.get(Image, bobs_image) is not None
        assert [c.name for c in list_collections(session, b)] == ["Bob's"]
    assert get_storage(settings).exists(row.storage_key)
    assert ada.get(f"/images/{image}.png").status_code == 200


def test_favourite_and_collections_through_the_pages(settings, make_client):
    ada, _ = ada_and_bob(make_client, settings)
    owner = user_id(settings, "ada@example.com")
    first, second = add_image(settings, owner, "a quiet lake"), add_image(settings, owner, "a loud city")
    heart = ada.http.post(f"/gallery/{first}/favourite", data={"favourite": "1"},
                          headers={"HX-Request": "true", "X-CSRF-Token": ada.csrf})  # fmt: skip
    assert heart.status_code == 200 and 'aria-pressed="true"' in heart.text and "<html" not in heart.text
    assert "a quiet lake" in ada.get("/gallery?favourites=1").text
    assert "a loud city" not in ada.get("/gallery?favourites=1").text
    made = ada.form("/gallery/bulk", {"action": "collect", "name": "Water", "ids": [first, second], "next": "/gallery"})
    assert made.status_code == 303
    with transaction(settings) as session:
        [water] = list_collections(session, owner)
    assert water.name == "Water" and water.count == 2
    page = ada.get(f"/gallery?collection={water.id}")
    assert "Collection ·" in page.text and "a loud city" in page.text
    ada.form("/gallery/bulk", {"action": "uncollect", "collection": water.id, "ids": [second]})
    assert "a loud city" not in ada.get(f"/gallery?collection={water.id}").text
    assert ada.form(f"/collections/{water.id}/rename", {"name": "Lakes"}).status_code == 303
    assert "Lakes" in ada.get("/collections").text
    detail = ada.get(f"/gallery/{first}").text
    assert "✓ Lakes" in detail and "Use these settings" in detail and "seed=1234" in detail
    assert ada.form(f"/collections/{water.id}/delete", {}).status_code == 303
    assert "No collections yet" in ada.get("/collections").text


def test_bulk_download_is_a_zip_of_the_originals_and_their_metadata(settings, make_client):
    ada, _ = ada_and_bob(make_client, settings)
    owner = user_id(settings, "ada@example.com")
    ids = [add_image(settings, owner, f"tile {i}", size=(64 + 32 * i, 64)) for i in range(3)]
    response = ada.form("/gallery/download", {"ids": ids})
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    assert "attachment" in response.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    manifest = json.loads(archive.read("images.json"))
    assert [m["id"] for m in manifest] == ids and manifest[1]["prompt"] == "tile 1" and manifest[1]["seed"] == 1234
    for entry in manifest:
        assert archive.read(entry["file"]) == png((entry["width"], entry["height"]))


def test_images_without_a_thumbnail_get_one_on_first_view(settings, make_client):
    ada, _ = ada_and_bob(make_client, settings)
    owner = user_id(settings, "ada@example.com")
    image = add_image(settings, owner, "from before thumbnails", size=(512, 256), thumbnail=False)
    response = ada.get(f"/images/{image}.webp")
    assert response.status_code == 200 and response.headers["content-type"] == "image/webp"
    thumb = PILImage.open(io.BytesIO(response.content))
    assert thumb.format == "WEBP" and thumb.size == (384, 192)
    with transaction(settings) as session:
        key = session.get(Image, image).thumbnail_key
    assert key and get_storage(settings).get(key) == response.content


# ---- deletion, down to storage ---------------------------------------------------------


@pytest.fixture(params=["filesystem", "s3"])
def storage_settings(request, tmp_path, tiny_model_path):
    if request.param == "filesystem":
        return make_settings(tmp_path / "data", tiny_model_path)
    return make_settings(
        tmp_path / "data", tiny_model_path, storage="s3",
        s3_endpoint_url=request.getfixturevalue("s3_endpoint"), s3_bucket=request.getfixturevalue("bucket"),
    )  # fmt: skip


def stored_keys(settings) -> set[str]:
    if settings.storage == "s3":
        s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name="us-east-1")
        return {o["Key"] for o in s3.list_objects_v2(Bucket=settings.s3_bucket).get("Contents", [])}
    root = Path(settings.storage_dir)
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def test_deleting_removes_images_and_every_object_they_had(storage_settings, make_client):
    from tests.support import migrated

    settings = migrated(storage_settings)
    ada, _ = ada_and_bob(make_client, settings)
    owner = user_id(settings, "ada@example.com")
    keep = add_image(settings, owner, "keep me")
    one = add_image(settings, owner, "delete me alone")
    old = add_image(settings, owner, "an old one, thumbnail made on view", thumbnail=False)
    several = [add_image(settings, owner, f"delete me in bulk {i}") for i in range(3)]
    assert ada.get(f"/images/{old}.webp").status_code == 200  # its thumbnail is made now
    with transaction(settings) as session:
        shelf = create_collection(session, owner, "Shelf").id
        add_to_collection(session, owner, shelf, [one, old, keep, *several])
        keep_keys = {session.get(Image, keep).storage_key, session.get(Image, keep).thumbnail_key}
    assert len(stored_keys(settings)) == 12  # six PNGs, six thumbnails

    assert ada.form(f"/gallery/{one}/delete", {"next": "/gallery"}).status_code == 303
    assert ada.form("/gallery/bulk", {"action": "delete", "ids": [old, *several]}).status_code == 303

    page = ada.get("/gallery").text
    assert "keep me" in page and "delete me" not in page and "an old one" not in page
    for gone in (one, old, *several):
        assert ada.get(f"/gallery/{gone}").status_code == 404
        assert ada.get(f"/images/{gone}.webp").status_code == 404
    with transaction(settings) as session:
        assert session.scalars(select(Image.id)).all() == [keep]
        assert session.scalars(select(CollectionImage.image_id)).all() == [keep]
    assert stored_keys(settings) == keep_keys  # nothing orphaned


# ---- the worker makes thumbnails -----------------------------------------------------------


@pytest.mark.worker
def test_the_worker_stores_a_webp_thumbnail_next_to_each_image(settings, user_client, start_worker):
    from tests.support import wait_for_job

    start_worker(settings)
    made = user_client.api_post("/api/v1/generations", {"prompt": "a red circle", "steps": 2, "n": 2})
    assert made.status_code == 202, made.text
    job = wait_for_job(user_client, made.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    storage = get_storage(settings)
    with transaction(settings) as session:
        rows = session.scalars(select(Image).where(Image.job_id == job["id"]).order_by(Image.index)).all()
    assert len(rows) == 2
    for row in rows:
        assert row.thumbnail_key == row.storage_key.replace(".png", ".thumb.webp")
        thumb = PILImage.open(io.BytesIO(storage.get(row.thumbnail_key)))
        assert thumb.format == "WEBP" and max(thumb.size) <= 384
        assert (row.mode, row.aspect) == ("txt2img", "square")
        assert user_client.get(f"/images/{row.id}.webp").content == storage.get(row.thumbnail_key)
    assert f'src="/images/{rows[0].id}.webp"' in user_client.get("/gallery").text
