"""The model catalog: an operator lists the models users may pick in a TOML file; a
mistake in it stops the app at start with a message naming the file and the entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import REPO_ROOT
from app.errors import UserError
from app.generation.catalog import BUILTIN_DEMO_MODEL, BUILTIN_TINY_MODEL, CatalogError, get_catalog, load_file
from app.generation.schemas import parse_quote, parse_request

GOOD = """
[[models]]
id = "demo"
name = "Gouache demo"
source = "builtin:demo"
family = "demo"
default_size = 256
max_size = 512
default_steps = 20
default_guidance = 5.0
licence = { name = "AGPL-3.0", url = "https://www.gnu.org/licenses/agpl-3.0.html", commercial_use = true }
example_prompts = ["a red circle on a blue background"]

[[models]]
id = "turbo"
name = "SD-Turbo"
source = "stabilityai/sd-turbo"
family = "turbo"
default_size = 512
max_size = 512
default_steps = 1
max_steps = 4
default_guidance = 0.0
price_multiplier = 0.25
description = "One step."
licence.name = "Stability AI Non-Commercial Research Community License"
licence.url = "https://huggingface.co/stabilityai/sd-turbo/blob/main/LICENSE"
licence.commercial_use = false
"""

ENTRY = """
[[models]]
id = "{id}"
name = "A model"
source = "some/model"
licence = {{ name = "MIT", commercial_use = true }}
{extra}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    return path


def test_a_good_catalog_is_read_in_order_and_its_first_model_is_the_default(tmp_path):
    catalog = load_file(write(tmp_path, GOOD))
    assert catalog.ids == ["demo", "turbo"]
    assert catalog.default.id == "demo" and catalog.get(None) is catalog.default and catalog.get("") is catalog.default
    turbo = catalog.get("turbo")
    assert (turbo.default_size, turbo.max_size, turbo.default_steps, turbo.max_steps) == (512, 512, 1, 4)
    assert turbo.price_multiplier == 0.25 and turbo.default_guidance == 0.0
    assert turbo.licence.commercial_use is False
    assert turbo.licence.commercial_label == "commercial use not allowed"
    assert catalog.default.licence.commercial_label == "commercial use allowed"
    assert turbo.queue("generate") == "generate.turbo"
    assert catalog.default.example_prompts == ("a red circle on a blue background",)


def test_the_shipped_example_catalog_is_valid_and_starts_with_the_demo_model():
    catalog = load_file(REPO_ROOT / "docs" / "catalog.example.toml")
    assert catalog.default.source == BUILTIN_DEMO_MODEL
    assert {m.family for m in catalog} >= {"demo", "sd1", "sdxl", "turbo"}
    for model in catalog:
        assert model.licence.url.startswith("https://"), model.id
    assert catalog.get("sd-turbo").licence.commercial_use is False


def test_builtin_tiny_is_the_untrained_test_model(tmp_path):
    catalog = load_file(write(tmp_path, ENTRY.format(id="t", extra="").replace("some/model", "builtin:tiny")))
    assert catalog.default.source == BUILTIN_TINY_MODEL and catalog.default.untrained


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("default_size = 1000", ["models[1] (id 'bad')", "default_size (1000) is larger than max_size (768)"]),
        ("max_size = 900", ["models[1] (id 'bad')", "multiple of size_multiple (8)"]),
        ("default_steps = 200", ["models[1] (id 'bad')", "default_steps (200) is larger than max_steps"]),
        ('family = "dalle"', ["models[1] (id 'bad') family", "'sd1'"]),
        ("price_multiplier = 0", ["models[1] (id 'bad') price_multiplier", "greater than 0"]),
        ("colour = 3", ["models[1] (id 'bad') colour", "Extra inputs are not permitted"]),
    ],
)
def test_a_bad_entry_is_refused_naming_the_file_the_entry_and_the_problem(tmp_path, extra, words):
    path = write(tmp_path, ENTRY.format(id="ok", extra="") + ENTRY.format(id="bad", extra=extra))
    with pytest.raises(CatalogError) as excinfo:
        load_file(path)
    message = str(excinfo.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_an_entry_without_a_licence_or_with_a_bad_id_is_refused(tmp_path):
    no_licence = '[[models]]\nid = "x"\nname = "X"\nsource = "some/model"\n'
    with pytest.raises(CatalogError, match=r"models\[0\] \(id 'x'\) licence: Field required"):
        load_file(write(tmp_path, no_licence))
    # the licence link is shown to users: only a web address
    script_link = no_licence + 'licence = { name = "L", url = "javascript:alert(1)", commercial_use = true }\n'
    with pytest.raises(CatalogError, match=r"models\[0\] \(id 'x'\) licence.url"):
        load_file(write(tmp_path, script_link))
    with pytest.raises(CatalogError, match=r"models\[0\] \(id 'Not OK'\) id"):
        load_file(write(tmp_path, ENTRY.format(id="Not OK", extra="")))


def test_duplicate_ids_an_empty_catalog_and_broken_toml_are_refused(tmp_path):
    with pytest.raises(CatalogError, match="'same' appears twice"):
        load_file(write(tmp_path, ENTRY.format(id="same", extra="") * 2))
    with pytest.raises(CatalogError, match="models: Field required"):
        load_file(write(tmp_path, "# nothing yet\n"))
    with pytest.raises(CatalogError, match="not valid TOML"):
        load_file(write(tmp_path, "[[models]\n"))
    with pytest.raises(CatalogError, match="cannot read the model catalog"):
        load_file(tmp_path / "missing.toml")


def test_a_broken_catalog_stops_the_web_app_from_starting(make_settings, tmp_path):
    from app.main import create_app

    path = write(tmp_path, ENTRY.format(id="same", extra="") * 2)
    settings = make_settings(tmp_path, model_catalog=path)
    with pytest.raises(CatalogError) as excinfo:
        create_app(settings, check_migrations=False)
    assert "GOUACHE_MODEL_CATALOG" in str(excinfo.value) and str(path) in str(excinfo.value)


def test_without_a_catalog_file_the_catalog_is_the_configured_model(make_settings, tmp_path):
    demo = get_catalog(make_settings(tmp_path))
    assert demo.ids == ["demo"] and demo.default.source == BUILTIN_DEMO_MODEL
    assert demo.default.licence.name == "AGPL-3.0" and demo.default.licence.commercial_use is True
    assert demo.default.example_prompts and demo.default.default_guidance == 5.0
    hub = get_catalog(make_settings(tmp_path, model="stabilityai/sd-turbo", model_price_multiplier=2.0)).default
    assert (hub.id, hub.source, hub.family, hub.price_multiplier) == ("default", "stabilityai/sd-turbo", "turbo", 2.0)
    assert hub.licence.commercial_use is None and hub.licence.url == "https://huggingface.co/stabilityai/sd-turbo"


def test_requests_follow_the_chosen_models_limits_and_defaults(make_settings, tmp_path):
    settings = make_settings(tmp_path, model_catalog=write(tmp_path, GOOD))
    default = parse_request({"prompt": "a star"}, settings)
    assert (default.model, default.width, default.steps, default.guidance) == ("demo", 256, 20, 5.0)
    turbo = parse_request({"prompt": "a star", "model": "turbo"}, settings)
    assert (turbo.model, turbo.width, turbo.steps, turbo.guidance) == ("turbo", 512, 1, 0.0)
    with pytest.raises(UserError, match="between 1 and 4") as excinfo:
        parse_quote({"model": "turbo", "steps": 20}, settings)
    assert excinfo.value.field == "steps"


@pytest.mark.parametrize("model", ["sdxl", "DEMO", 3])
def test_an_unknown_model_is_a_4xx_naming_the_choices(make_settings, tmp_path, model):
    settings = make_settings(tmp_path, model_catalog=write(tmp_path, GOOD))
    with pytest.raises(UserError) as excinfo:
        parse_request({"prompt": "a star", "model": model}, settings)
    assert excinfo.value.field == "model" and 400 <= excinfo.value.status_code < 500
    if isinstance(model, str):
        assert excinfo.value.message == f"Unknown model {model!r}; choose one of: demo, turbo."
