"""The prompt blocklist: whole words and phrases, any case, from the setting and the file."""

from __future__ import annotations

import os

import pytest

from app.errors import UserError
from app.generation.blocklist import Blocklist, check_prompt, get_blocklist
from app.generation.schemas import parse_quote, parse_request


@pytest.mark.parametrize(
    ("prompt", "found"),
    [
        ("Blood and GORE", "gore"),
        ("a gorilla in the mist", None),  # whole words only
        ("gore-tex jacket", "gore"),  # a hyphen ends a word
        ("a glass of Red\n Wine", "red wine"),  # any whitespace inside a phrase
        ("a red dress, wine glass", None),
        ("ＧＯＲＥ", "gore"),  # full-width letters read as plain ones
        ("", None),
    ],
)
def test_entries_match_as_whole_words_in_any_case(prompt, found):
    assert Blocklist.of(["Gore", " red   wine ", ""]).find(prompt) == found


def test_an_empty_list_refuses_nothing():
    assert Blocklist.of(["", " "]).find("anything at all") is None


def test_the_setting_and_the_file_are_combined_and_a_changed_file_is_read_again(tmp_path, make_settings):
    policy = tmp_path / "blocklist.txt"
    policy.write_text("# the studio's policy\n\nbeheading   # graphic violence\n")
    settings = make_settings(tmp_path, prompt_blocklist="gore,red wine", prompt_blocklist_file=policy)
    assert get_blocklist(settings).entries == ("gore", "red wine", "beheading")
    policy.write_text("decapitation\n")
    os.utime(policy, ns=(0, 10**18))  # a new modification time, whatever the clock's resolution
    assert get_blocklist(settings).entries == ("gore", "red wine", "decapitation")


def test_a_missing_blocklist_file_stops_the_settings(tmp_path, make_settings):
    with pytest.raises(ValueError, match="prompt_blocklist_file"):
        make_settings(tmp_path, prompt_blocklist_file=tmp_path / "missing.txt")


def test_a_refused_prompt_names_the_word_on_the_prompt_field(tmp_path, make_settings):
    settings = make_settings(tmp_path, prompt_blocklist="gore")
    with pytest.raises(UserError) as refused:
        check_prompt("so much GORE", settings)
    assert refused.value.field == "prompt" and refused.value.status_code == 422
    assert "“gore” is not allowed by this studio's content policy" in refused.value.message


@pytest.mark.parametrize("mode", ["txt2img", "img2img", "inpaint", "variation", "upscale"])
def test_every_mode_checks_the_prompt_but_not_the_negative_prompt(settings, mode):
    settings = settings.model_copy(update={"prompt_blocklist": "gore"})
    fields = {"mode": mode, "source_image": "img-1", "extend_left": 64}
    with pytest.raises(UserError, match="“gore” is not allowed"):
        parse_request({**fields, "prompt": "gore --n 2"}, settings)
    with pytest.raises(UserError, match="“gore” is not allowed"):
        parse_quote({**fields, "prompt": "gore"}, settings)
    assert parse_request({**fields, "prompt": "a gorilla", "negative_prompt": "gore"}, settings).prompt == "a gorilla"
