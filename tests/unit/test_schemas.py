"""Validating a generation request: what the form and the API accept, and the
message (naming the field) that a user sees when something is wrong.

The settings are the embedded defaults with the built-in test model: sizes
64..256 (default 128), steps 1..100 (default 20), 1..4 images, prompts of at
most 1000 characters.
"""

from __future__ import annotations

import pytest

from app.errors import UserError
from app.generation.catalog import get_catalog
from app.generation.quote import size_presets
from app.generation.schemas import GenerationRequest, QuoteRequest, parse_quote, parse_request

FORM = {
    "prompt": "  a red fox in the snow  ",
    "negative_prompt": " blurry ",
    "width": "256",
    "height": "192",
    "steps": "30",
    "guidance": "8.5",
    "n": "2",
    "seed": "42",
}


def form(**changes) -> dict:
    data = dict(FORM)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def refusal(data, settings) -> UserError:
    with pytest.raises(UserError) as excinfo:
        parse_request(data, settings)
    return excinfo.value


def test_the_limits_these_tests_assume(settings):
    model = get_catalog(settings).default
    assert (model.default_size, model.max_size) == (128, 256)
    assert (model.default_steps, model.max_steps) == (20, 100)
    assert settings.max_images_per_job == 4
    assert settings.max_prompt_chars == 1000


def test_a_valid_form_is_parsed_into_a_typed_request(settings):
    assert parse_request(FORM, settings) == GenerationRequest(
        model="tiny",  # the catalog's only model, from GOUACHE_MODEL=builtin:tiny-random
        width=256,
        height=192,
        steps=30,
        n_images=2,
        prompt="a red fox in the snow",
        negative_prompt="blurry",
        guidance=8.5,
        seed=42,
    )


def test_a_json_body_with_numbers_is_parsed_the_same_way(settings):
    body = {"prompt": "a red fox in the snow", "negative_prompt": "blurry", "width": 256, "height": 192,
            "steps": 30, "guidance": 8.5, "n": 2, "seed": 42}  # fmt: skip
    assert parse_request(body, settings) == parse_request(FORM, settings)


def test_missing_fields_take_the_models_defaults(settings):
    request = parse_request({"prompt": "a lighthouse"}, settings)
    assert (request.width, request.height) == (128, 128)
    assert request.steps == 20
    assert request.n_images == 1
    assert request.guidance == 7.5
    assert request.seed is None
    assert request.negative_prompt == ""


def test_blank_fields_take_the_defaults_too(settings):
    # A form posts every input, empty or not.
    request = parse_request(form(width="", height="", steps="", n="", guidance="", seed="", size=""), settings)
    assert (request.width, request.height, request.steps, request.n_images) == (128, 128, 20, 1)
    assert request.guidance == 7.5


def test_an_empty_seed_means_a_random_seed(settings):
    assert parse_request(form(seed=""), settings).seed is None
    assert parse_request(form(seed="   "), settings).seed is None
    assert parse_request(form(seed=None), settings).seed is None


@pytest.mark.parametrize("size", ["128x96", "128X96", " 128x96 "])
def test_the_forms_size_choice_splits_into_width_and_height(settings, size):
    request = parse_request(form(size=size, width=None, height=None), settings)
    assert (request.width, request.height) == (128, 96)


def test_the_size_choice_wins_over_width_and_height(settings):
    request = parse_request(form(size="96x128", width="256", height="256"), settings)
    assert (request.width, request.height) == (96, 128)


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"prompt": ""}, "prompt", "Describe the image you want in the prompt."),
        ({"prompt": "   \n\t "}, "prompt", "Describe the image you want in the prompt."),
        ({"prompt": None}, "prompt", "Describe the image you want in the prompt."),
        ({"prompt": "x" * 1001}, "prompt", "The prompt is 1001 characters long; the limit is 1000."),
        ({"negative_prompt": "x" * 1001}, "negative_prompt", "The negative prompt is longer than 1000 characters."),
        ({"width": "100"}, "width", "Width must be a multiple of 8 for this model (got 100)."),
        ({"height": "130"}, "height", "Height must be a multiple of 8 for this model (got 130)."),
        ({"width": "264"}, "width", "Width must be between 64 and 256."),
        ({"height": "56"}, "height", "Height must be between 64 and 256."),
        ({"width": "wide"}, "width", "Width must be a whole number."),
        ({"steps": "0"}, "steps", "Steps must be between 1 and 100."),
        ({"steps": "101"}, "steps", "Steps must be between 1 and 100."),
        ({"steps": "2.5"}, "steps", "Steps must be a whole number."),
        ({"steps": 2.5}, "steps", "Steps must be a whole number."),
        ({"guidance": "-0.5"}, "guidance", "Guidance must be between 0 and 30."),
        ({"guidance": "30.5"}, "guidance", "Guidance must be between 0 and 30."),
        ({"guidance": "abc"}, "guidance", "Guidance must be a number."),
        ({"guidance": "nan"}, "guidance", "Guidance must be a number."),
        ({"n": "0"}, "n", "Number of images must be between 1 and 4."),
        ({"n": "5"}, "n", "Number of images must be between 1 and 4."),
        ({"seed": "-1"}, "seed", "Seed must be between 0 and 4294967295."),
        ({"seed": str(2**32)}, "seed", "Seed must be between 0 and 4294967295."),
        ({"seed": "lucky"}, "seed", "Seed must be a whole number."),
        ({"size": "512"}, "size", "Size must look like 512x512."),
        ({"size": "128x"}, "size", "Size must look like 512x512."),
    ],
)
def test_a_bad_value_is_refused_with_a_message_naming_the_field(settings, changes, field, message):
    error = refusal(form(**changes), settings)
    assert error.field == field
    assert error.message == message
    assert error.status_code == 422


def test_the_prompt_limit_counts_the_trimmed_prompt(settings):
    padded = "  " + "x" * 1000 + "  "
    assert parse_request(form(prompt=padded), settings).prompt == "x" * 1000


@pytest.mark.parametrize(
    "changes",
    [
        {"width": "64", "height": "256"},
        {"steps": "1"},
        {"steps": "100"},
        {"guidance": "0"},
        {"guidance": "30"},
        {"n": "1"},
        {"n": "4"},
        {"seed": "0"},
        {"seed": str(2**32 - 1)},
    ],
)
def test_the_limits_themselves_are_allowed(settings, changes):
    parse_request(form(**changes), settings)


def test_the_limits_follow_the_settings(make_settings, tmp_path):
    roomy = make_settings(tmp_path, model_max_size=512, model_max_steps=150, max_images_per_job=9, max_prompt_chars=20)
    request = parse_request(form(width="512", steps="150", n="9", prompt="x" * 20), roomy)
    assert (request.width, request.steps, request.n_images) == (512, 150, 9)
    assert refusal(form(prompt="x" * 21), roomy).field == "prompt"


def test_a_quote_needs_only_size_steps_and_count(settings):
    assert parse_quote({"size": "256x128", "steps": "10", "n": "3"}, settings) == QuoteRequest(
        model="tiny", width=256, height=128, steps=10, n_images=3
    )
    assert parse_quote({}, settings) == QuoteRequest(model="tiny", width=128, height=128, steps=20, n_images=1)


@pytest.mark.parametrize(
    ("data", "field"),
    [({"width": "100"}, "width"), ({"steps": "0"}, "steps"), ({"n": "5"}, "n"), ({"size": "big"}, "size")],
)
def test_a_quote_refuses_what_a_request_refuses(settings, data, field):
    with pytest.raises(UserError) as excinfo:
        parse_quote(data, settings)
    assert excinfo.value.field == field
    assert refusal({"prompt": "a fox", **data}, settings).message == excinfo.value.message


# The size menu


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # the built-in model: 128 / 256
        {"model": "stabilityai/sd-turbo"},  # 512 / 768
        {"model": "stabilityai/sdxl", "model_default_size": 1024},  # 1024 / 1024
        {"model": "some/model", "model_default_size": 768, "model_max_size": 2048},
    ],
)
def test_every_size_preset_is_one_the_model_accepts(make_settings, tmp_path, overrides):
    settings = make_settings(tmp_path, **overrides)
    model = get_catalog(settings).default
    presets = size_presets(model)
    assert presets
    first = presets[0]
    assert (first.width, first.height) == (model.default_size, model.default_size)
    assert first.label.startswith("Square")
    for preset in presets:
        assert preset.width % 8 == 0 and preset.height % 8 == 0, preset
        assert 64 <= preset.width <= model.max_size, preset
        assert 64 <= preset.height <= model.max_size, preset
        # What the menu offers, the parser takes.
        quote = parse_quote({"size": preset.value}, settings)
        assert (quote.width, quote.height) == (preset.width, preset.height)
    assert len({p.value for p in presets}) == len(presets)


def test_the_presets_offer_each_aspect_ratio_near_the_native_pixel_count(settings):
    presets = {p.label.split()[0]: p for p in size_presets(get_catalog(settings).default)}
    assert {"Square", "Landscape", "Portrait", "Wide", "Tall"} <= set(presets)
    assert presets["Landscape"].width > presets["Landscape"].height
    assert presets["Portrait"].width < presets["Portrait"].height
    native = get_catalog(settings).default.default_size ** 2
    for name in ("Square", "Landscape", "Portrait", "Wide", "Tall"):
        pixels = presets[name].width * presets[name].height
        assert 0.8 * native <= pixels <= 1.2 * native, name


def test_a_large_square_is_offered_when_the_model_allows_it(settings):
    large = size_presets(get_catalog(settings).default)[-1]
    assert large.label.startswith("Large square")
    assert (large.width, large.height) == (256, 256)


@pytest.mark.parametrize(
    "overrides",
    [
        {"model": "some/model", "model_default_size": 512, "model_max_size": 1020},
        {"model": "some/model", "model_default_size": 500},
        {"model_max_size": 100},
    ],
    ids=["max-not-multiple-of-8", "default-not-multiple-of-8", "max-below-default"],
)
def test_a_mistyped_model_size_is_refused_at_start(make_settings, tmp_path, overrides):
    """An operator may mistype a size: the start is refused, naming the setting, rather than
    offering a default or a preset that no request could use."""
    from app.generation.catalog import CatalogError

    settings = make_settings(tmp_path, **overrides)
    # Each of these is refused at start (every process reads the catalog first), naming the setting.
    with pytest.raises(CatalogError, match="GOUACHE_MODEL_"):
        get_catalog(settings)
