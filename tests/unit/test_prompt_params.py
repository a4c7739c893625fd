"""Midjourney-style parameters typed in the prompt box become the form's fields."""

from __future__ import annotations

import pytest

from app.errors import UserError
from app.generation import prompt_params
from app.generation.schemas import parse_quote, parse_request


def test_parameters_are_split_from_the_prompt_text():
    text, fields = prompt_params.split("a lighthouse at dusk --ar 16:9 --seed 42 --no text, blur --steps 30 --n 4")
    assert text == "a lighthouse at dusk"
    assert fields == {"aspect": "16:9", "seed": "42", "negative_prompt": "text, blur", "steps": "30", "n": "4"}


def test_a_prompt_without_parameters_is_left_alone():
    assert prompt_params.split("  a well-lit room, 35mm - f/1.8  ") == ("a well-lit room, 35mm - f/1.8", {})


def test_aliases_and_an_em_dash_typed_by_a_phone_work():
    text, fields = prompt_params.split("a cat —ar 2:3 --cfg 6.5 --images 2 --sampler Euler a")
    assert text == "a cat"
    assert fields == {"aspect": "2:3", "guidance": "6.5", "n": "2", "sampler": "Euler a"}


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a cat --chaos 50", "Unknown parameter --chaos"),
        ("a cat --seed", "--seed needs a value, e.g. --seed 42"),
        ("a cat --seed 1 --seed 2", "--seed is given twice"),
        ("a cat --steps 30 sitting on a mat", "--steps takes one value"),
    ],
)
def test_bad_parameters_are_refused_with_a_message_naming_them(prompt, message):
    with pytest.raises(UserError) as excinfo:
        prompt_params.split(prompt)
    assert message in str(excinfo.value)
    assert excinfo.value.field == "prompt"


def test_typed_parameters_win_over_the_form_and_are_validated_like_it(settings):
    request = parse_request(
        {"prompt": "a fox --ar 1:1 --steps 12 --no blur --seed 7", "size": "192x128", "steps": "30", "seed": "1"},
        settings,
    )
    assert request.prompt == "a fox"
    assert (request.width, request.height) == (128, 128)  # the model's native size at 1:1
    assert (request.steps, request.seed, request.negative_prompt) == (12, 7, "blur")

    with pytest.raises(UserError) as excinfo:
        parse_request({"prompt": "a fox --steps 500"}, settings)
    assert excinfo.value.field == "steps" and "between 1 and 100" in str(excinfo.value)


def test_the_quote_prices_typed_parameters(settings):
    plain = parse_quote({"prompt": "a fox", "n": "1"}, settings)
    typed = parse_quote({"prompt": "a fox --n 4 --steps 40", "n": "1"}, settings)
    assert (plain.n_images, typed.n_images, typed.steps) == (1, 4, 40)


@pytest.mark.parametrize(
    ("aspect", "expected"),
    [("16:9", (168, 96)), ("9:16", (96, 168)), ("3:2", (160, 104)), ("1:1", (128, 128))],
)
def test_aspect_ratios_map_to_sizes_the_model_can_make(settings, aspect, expected):
    request = parse_request({"prompt": "x", "aspect": aspect}, settings)
    assert (request.width, request.height) == expected
    assert request.width % 8 == 0 and request.height % 8 == 0


@pytest.mark.parametrize(
    ("aspect", "message"),
    [("16/9", "must look like 16:9"), ("0:1", "must look like 16:9"), ("8:1", "between 1:4 and 4:1")],
)
def test_aspect_ratios_the_model_cannot_make_are_refused(settings, aspect, message):
    with pytest.raises(UserError) as excinfo:
        parse_request({"prompt": f"x --ar {aspect}"}, settings)
    assert message in str(excinfo.value) and excinfo.value.field == "aspect"


def test_samplers_are_accepted_by_id_or_by_the_name_users_know(settings):
    for typed, expected in [
        ("DPM++ 2M Karras", "dpmpp_2m_karras"),
        ("dpmpp_2m_karras", "dpmpp_2m_karras"),
        ("euler a", "euler_a"),
        ("UniPC", "unipc"),
        ("", "euler"),
    ]:
        assert parse_request({"prompt": "x", "sampler": typed}, settings).sampler == expected
    with pytest.raises(UserError) as excinfo:
        parse_request({"prompt": "x", "sampler": "heun"}, settings)
    assert "Unknown sampler 'heun'" in str(excinfo.value) and "DPM++ 2M Karras" in str(excinfo.value)
