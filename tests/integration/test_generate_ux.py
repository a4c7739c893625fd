"""The Create page as a newcomer meets it (issue 15): the warning about words the model has
never seen, what typed parameters set, the price at once for an image mode, the result's
own buttons, and the user's own recent prompts (no worker: jobs stay queued)."""

from __future__ import annotations

import html
import json
import re

import pytest

from app.generation import vocabulary
from app.generation.catalog import DEMO_VOCABULARY, get_catalog, load_file
from app.main import create_app
from tests.gallery_data import add_image, user_id
from tests.support import Browserless, make_settings, migrated


@pytest.fixture
def demo_settings(tmp_path):
    """A fresh install's settings: the demo model, which declares the words it knows."""
    return migrated(make_settings(tmp_path / "demo-data", model="builtin:demo"))


@pytest.fixture
def demo_user(demo_settings) -> Browserless:
    c = Browserless(create_app(demo_settings))
    c.sign_up("ada@example.com")
    return c


def quote_of(c: Browserless, **params) -> str:
    response = c.get("/generate/quote", params=params)
    assert response.status_code == 200
    return response.text


def test_the_demo_model_warns_about_words_it_has_never_seen_before_anything_is_charged(demo_user, demo_settings):
    fragment = quote_of(demo_user, prompt="A cat astronaut on a blue background --ar 16:9")
    warning = re.search(r'<p class="quote-warning"[^>]*>(.*?)</p>', fragment, re.S)
    assert warning, fragment
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", warning.group(1))).split())
    assert text == "Gouache demo (shapes and colours) has never seen: cat, astronaut — expect flat shapes and colours."
    assert "quote-price" in fragment  # a warning, not a refusal: the user decides
    # what it knows (plurals, counts, positions, small words) draws no warning
    for prompt in DEMO_EXAMPLE_LIKE:
        assert "quote-warning" not in quote_of(demo_user, prompt=prompt), prompt
    # nothing was charged or queued by asking
    assert "<strong>200</strong> credits" in demo_user.get("/").text


DEMO_EXAMPLE_LIKE = (
    "two yellow stars on a black background",
    "Three PINK squares on the purple background --n 2 --steps 12",
    "a green triangle in the top left on a white background",
    "an orange circle --no blue",
)


def test_a_model_without_a_vocabulary_never_warns(user_client):
    assert "quote-warning" not in quote_of(user_client, prompt="a cat astronaut, oil painting", size="64x64")


def test_unknown_words_skip_stop_words_parameters_and_plurals(tmp_path):
    demo = get_catalog(make_settings(tmp_path / "data", model="builtin:demo")).default
    assert vocabulary.unknown_words(demo, "The cats and a red circle with dogs --no stars --ar 3:2") == ["cats", "dogs"]
    assert vocabulary.unknown_words(demo, "a red boxes on blue --n") == ["boxes"]  # a half-typed parameter
    assert vocabulary.unknown_words(demo, "") == []


def test_the_demo_vocabulary_is_every_word_of_the_training_captions():
    from tools.demo import scenes

    words = {word for scene in scenes.all_scenes(include_held_out=True) for word in scene.caption().split()}
    words |= {"one"}  # "one" is written "a"/"an" in captions, but a person may type it
    assert words == set(DEMO_VOCABULARY)


def test_typed_parameters_are_priced_and_shown_as_what_they_set(demo_user):
    fragment = quote_of(
        demo_user, prompt="a red circle on a blue background --ar 16:9 --n 4 --steps 50", size="256x256", n="1"
    )
    overrides = json.loads(html.unescape(re.search(r"data-overrides='([^']*)'", fragment).group(1)))
    assert overrides["n"] == "4" and overrides["steps"] == "50"
    width, height = map(int, overrides["size"].split("x"))
    assert width > height
    # the price is the price of what the chips say, not of the form's own 1 image at 256²
    api = demo_user.get("/api/v1/quote", params={"width": width, "height": height, "n": 4, "steps": 50}).json()
    assert f"<strong>{api['credits']}</strong> credits" in fragment
    assert "→ 4 images" in html.unescape(fragment) and "→ 50 steps" in html.unescape(fragment)
    # and the size the prompt picks is one the size menu offers, so the field can show it
    page = demo_user.get("/").text
    assert f'<option value="{overrides["size"]}"' in page


def test_the_quote_url_carries_no_csrf_token(demo_user):
    page = demo_user.get("/").text
    include = re.search(r'hx-include="([^"]*)"', page).group(1)
    assert ":not([name=csrf_token])" in include
    # and the quote needs none (a GET)
    demo_user.http.headers.pop("X-CSRF-Token", None)
    assert "quote-price" in quote_of(demo_user, prompt="a red circle")


def test_placeholder_and_examples_come_from_the_models_catalog_entry(demo_user):
    page = demo_user.get("/").text
    assert 'placeholder="a yellow star in the top left on a blue background"' in page
    assert 'data-example href="/?model=demo&amp;prompt=a+red+circle+on+a+blue+background"' in page
    assert "lighthouse" not in page


def test_a_catalog_file_may_declare_vocabulary_placeholder_and_examples(tmp_path):
    path = tmp_path / "catalog.toml"
    path.write_text(
        """
[[models]]
id = "shapes"
name = "Shapes"
source = "builtin:tiny"
licence = { name = "AGPL-3.0", commercial_use = true }
placeholder = "a blue star"
examples = ["a blue star"]
vocabulary = ["A", "Blue", "star", " "]
""",
        encoding="utf-8",
    )
    model = load_file(path).default
    assert model.placeholder == "a blue star" and model.example_prompts == ("a blue star",)
    assert model.vocabulary == ("a", "blue", "star")
    assert vocabulary.unknown_words(model, "a blue stars on a red moon") == ["red", "moon"]


def test_outpaint_opened_from_an_image_is_priced_at_once(demo_user, demo_settings):
    owner = user_id(demo_settings, "ada@example.com")
    image = add_image(demo_settings, owner, "a red circle", model="demo", size=(256, 256))
    for mode in ("outpaint", "img2img", "inpaint"):
        page = demo_user.get("/", params={"mode": mode, "source_image": image, "prompt": "a red circle"}).text
        quote = re.search(r'<div id="quote".*?</div>', page, re.S).group(0)
        assert re.search(r'class="quote-price"><strong>\d+</strong>', quote), (mode, quote)
    # the fields show the frame that was priced
    page = demo_user.get("/", params={"mode": "outpaint", "source_image": image}).text
    assert re.search(r'id="extend_left"[^>]*value="64"', page) and re.search(r'id="extend_top"[^>]*value="0"', page)
    # a small image gets a frame it can grow by, so a small model can still price it
    small = add_image(demo_settings, owner, "a red circle", model="demo", size=(64, 64))
    page = demo_user.get("/", params={"mode": "outpaint", "source_image": small}).text
    assert re.search(r'id="extend_left"[^>]*value="16"', page)
    assert re.search(r'class="quote-price"><strong>\d+</strong>', page)


def test_submitting_sends_no_swap_for_an_element_that_may_be_gone(demo_user):
    response = demo_user.http.post(
        "/generate",
        data={"prompt": "a red circle", "csrf_token": demo_user.csrf, "request_id": "r1"},
        headers={"HX-Request": "true", "X-CSRF-Token": demo_user.csrf},
    )
    assert response.status_code == 200
    assert "jobs-empty" not in response.text  # the page removes its own empty note
    assert 'class="thumbs-pending" data-images="1"' in response.text  # its image's tile, to fill in


def test_a_finished_job_offers_more_like_this_remix_and_upscale(demo_user, demo_settings):
    owner = user_id(demo_settings, "ada@example.com")
    image = add_image(demo_settings, owner, "two yellow stars on a black background", model="demo", size=(256, 256))
    page = demo_user.get("/").text
    card = re.search(r'<article class="job job-succeeded".*?</article>', page, re.S).group(0)
    assert re.search(r'More like this <span class="btn-price">\d+ cr</span>', card)
    assert re.search(r'Upscale 2× <span class="btn-price">\d+ cr</span>', card)
    assert f'name="source_image" value="{image}"' in card
    remix = html.unescape(re.search(r'<a class="btn btn-ghost btn-small" href="([^"]*)"[^>]*>Remix</a>', card).group(1))
    assert remix.startswith("/?") and "prompt=two+yellow+stars" in remix and "model=demo" in remix
    # the button's price is what "More like this" charges
    price = int(re.search(r'More like this <span class="btn-price">(\d+) cr', card).group(1))
    form = card.split("More like this")[0].rsplit("<form", 1)[1]
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', form))
    job = demo_user.form("/generate", fields)
    assert job.status_code == 303
    job_page = demo_user.get(job.headers["location"]).text
    assert f"{price} credit" in job_page


def test_recent_prompts_are_the_users_own_newest_first_each_once(any_db_settings):
    demo_settings = any_db_settings  # SQLite and PostgreSQL (a GROUP BY ordered by its MAX)
    ada, bob = (Browserless(create_app(demo_settings)) for _ in range(2))
    ada.sign_up("ada@example.com")
    bob.sign_up("bob@example.com")
    for i, prompt in enumerate(("a red circle", "a blue square", "a red circle --n 2", "a pink star")):
        assert ada.form("/generate", {"prompt": prompt, "request_id": f"ada-{i}"}).status_code == 303
    assert bob.form("/generate", {"prompt": "bob's secret green triangle", "request_id": "bob"}).status_code == 303

    def history(c: Browserless) -> list[str]:
        block = re.search(r'<details class="prompt-history".*?</details>', c.get("/").text, re.S)
        return [html.unescape(p) for p in re.findall(r'data-prompt="([^"]*)"', block.group(0))] if block else []

    assert history(ada) == ["a pink star", "a red circle", "a blue square"]
    assert history(bob) == ["bob's secret green triangle"]
    fresh = Browserless(create_app(demo_settings))
    fresh.sign_up("cy@example.com")
    assert history(fresh) == []


def test_choosing_another_model_brings_its_placeholder_examples_and_vocabulary(tmp_path):
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        """
[[models]]
id = "shapes"
name = "Shapes"
source = "builtin:tiny"
licence = { name = "AGPL-3.0", commercial_use = true }
placeholder = "a blue star"
examples = ["a blue star"]
vocabulary = ["a", "blue", "star"]

[[models]]
id = "general"
name = "General"
source = "builtin:tiny"
licence = { name = "AGPL-3.0", commercial_use = true }
""",
        encoding="utf-8",
    )
    settings = migrated(make_settings(tmp_path / "data", model_catalog=catalog))
    c = Browserless(create_app(settings))
    c.sign_up("ada@example.com")
    shapes, general = c.get("/?model=shapes").text, c.get("/?model=general").text
    assert 'placeholder="a blue star"' in shapes and "data-example" in shapes
    assert 'placeholder="a blue star"' not in general and "data-example" not in general
    assert "has never seen: moon" in quote_of(c, model="shapes", prompt="a blue moon")
    assert "quote-warning" not in quote_of(c, model="general", prompt="a blue moon")
