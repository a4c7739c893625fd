"""The demo model's data (captioned scene renders) and its judge.

The bench trusts these: a caption must say exactly what is drawn, held-out
combinations must never leak into training, and the judge must call every
clean render right, or the bench would blame the model for the judge's errors.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import pytest

from tools.demo.judge import (
    colour_match,
    count_match,
    evaluate_shape_classifier,
    judge,
    load_shape_classifier,
    position_match,
    train_shape_classifier,
)
from tools.demo.scenes import (
    COLOUR_NAMES,
    COLOURS,
    HELD_OUT,
    POSITIONS,
    SHAPES,
    Scene,
    all_scenes,
    dataset,
    example,
    held_out_prompts,
    parse_caption,
    render,
    sample_scene,
    vocabulary_words,
)

pytestmark = pytest.mark.model  # runs models in this process (torch)


def random_scenes(n: int, seed: int, include_held_out: bool = True) -> list[Scene]:
    rng = random.Random(seed)
    return [sample_scene(rng, include_held_out=include_held_out) for _ in range(n)]


# -- grammar ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scene", "caption"),
    [
        (Scene("circle", "red", "blue"), "a red circle on a blue background"),
        (Scene("star", "green", "white", count=2), "two green stars on a white background"),
        (Scene("triangle", "yellow", "black", "top left"), "a yellow triangle in the top left on a black background"),
        (Scene("square", "orange", "pink", count=3), "three orange squares on a pink background"),
        (Scene("star", "pink", "orange", "center"), "a pink star in the center on an orange background"),
    ],
)
def test_captions_read_as_english(scene, caption):
    assert scene.caption() == caption


def test_every_scene_round_trips_through_its_caption():
    scenes = all_scenes()
    assert len(scenes) == len(SHAPES) * len(COLOURS) * (len(COLOURS) - 1) * (1 + len(POSITIONS) + 2)
    captions = [scene.caption() for scene in scenes]
    assert len(set(captions)) == len(captions)
    for scene, caption in zip(scenes, captions, strict=True):
        assert parse_caption(caption) == scene


def test_random_scenes_round_trip_and_parsing_forgives_case_and_spacing():
    for scene in random_scenes(500, seed=1):
        assert parse_caption(scene.caption()) == scene
        assert parse_caption("  " + scene.caption().upper().replace(" ", "  ") + ".") == scene
    assert parse_caption("one red circle on a blue background") == Scene("circle", "red", "blue")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a cat on a mat",
        "a red circle on a red background",  # invisible: the grammar never draws it
        "two red circle on a blue background",  # number disagreement
        "a red circles on a blue background",
        "two red circles in the top left on a blue background",  # positions are for one shape only
        "a red circle in the middle on a blue background",
        "a magenta circle on a blue background",
        "a red circle on a blue background with a dog",
    ],
)
def test_sentences_outside_the_grammar_do_not_parse(text):
    assert parse_caption(text) is None


def test_invalid_scenes_are_refused():
    with pytest.raises(ValueError):
        Scene("circle", "red", "red")
    with pytest.raises(ValueError):
        Scene("circle", "red", "blue", "top left", count=2)
    with pytest.raises(ValueError):
        Scene("hexagon", "red", "blue")


def test_the_vocabulary_is_exactly_the_words_captions_use():
    used = {word for scene in all_scenes() for word in scene.caption().split()}
    assert set(vocabulary_words()) == used


def test_palette_colours_are_far_apart():
    # The judge classifies pixels by nearest palette colour; close colours would be confused.
    closest = min(math.dist(COLOURS[a], COLOURS[b]) for a, b in itertools.combinations(COLOURS, 2))
    assert closest >= 100


# -- held-out combinations -------------------------------------------------------------------------


def test_the_held_out_rule_holds_out_each_colour_once_per_shape():
    pairs = [pair for shape in SHAPES for pair in HELD_OUT[shape]]
    assert len(set(pairs)) == len(pairs) == 20  # so each pair is still seen with three other shapes
    for shape in SHAPES:
        assert sorted(colour for pair in HELD_OUT[shape] for colour in pair) == sorted(COLOUR_NAMES)


def test_training_never_samples_a_held_out_combination():
    assert not any(scene.held_out for scene in random_scenes(5000, seed=2, include_held_out=False))
    assert not any(scene.held_out for _, _, scene in dataset(300, seed=3, size=32))
    # ...while every combination that is not held out does turn up.
    seen = {(s.shape, s.colour, s.background) for s in random_scenes(20000, seed=4, include_held_out=False)}
    assert len(seen) == len(SHAPES) * len(COLOURS) * (len(COLOURS) - 1) - 20


def test_held_out_prompts_are_60_distinct_parseable_held_out_scenes():
    prompts = held_out_prompts(60, seed=0)
    assert len(prompts) == 60
    assert len({caption for caption, _ in prompts}) == 60
    for caption, scene in prompts:
        assert scene.held_out
        assert parse_caption(caption) == scene
    triples = Counter((scene.shape, scene.colour, scene.background) for _, scene in prompts)
    assert len(triples) == 20 and set(triples.values()) == {3}
    counts = Counter(scene.count for _, scene in prompts)
    assert counts[1] and counts[2] and counts[3]
    assert held_out_prompts(60, seed=0) == prompts
    assert held_out_prompts(60, seed=1) != prompts


# -- rendering -------------------------------------------------------------------------------------


def test_rendering_is_deterministic_from_the_seed():
    first = [(image.tobytes(), caption) for image, caption, _ in dataset(20, seed=5, size=64)]
    again = [(image.tobytes(), caption) for image, caption, _ in dataset(20, seed=5, size=64)]
    other = [(image.tobytes(), caption) for image, caption, _ in dataset(20, seed=6, size=64)]
    assert first == again
    assert first != other
    image, caption, scene = example(7, seed=5, size=64)
    assert (image.tobytes(), caption) == first[7]
    assert render(scene).tobytes() == render(scene).tobytes()


@pytest.mark.parametrize("size", [64, 256])
def test_renders_are_flat_background_corners_and_shape_colour(size):
    for scene in random_scenes(100, seed=8):
        image = render(scene, size, random.Random(scene.caption()))
        assert image.size == (size, size) and image.mode == "RGB"
        colours = {colour: count for count, colour in image.getcolors(maxcolors=16) or []}
        assert set(colours) == {COLOURS[scene.background], COLOURS[scene.colour]}
        for corner in [(0, 0), (size - 1, 0), (0, size - 1), (size - 1, size - 1)]:
            assert image.getpixel(corner) == COLOURS[scene.background]
        # Every shape is a few percent of the picture at least (a small star in a group is the least).
        assert colours[COLOURS[scene.colour]] > 0.005 * size * size


# -- the judge -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 256])
def test_colour_count_and_position_match_clean_renders(size):
    for scene in random_scenes(200, seed=9):
        image = render(scene, size, random.Random(scene.caption()))
        assert colour_match(image, scene) == (True, True), scene
        assert count_match(image, scene), scene
        assert position_match(image, scene) is (None if scene.position is None else True), scene


def test_the_judge_notices_wrong_colours_counts_and_positions():
    scene = Scene("square", "red", "blue", "top left")
    image = render(scene, 128)
    assert colour_match(image, Scene("square", "green", "blue")) == (False, True)
    assert colour_match(image, Scene("square", "red", "white")) == (True, False)
    assert colour_match(image, Scene("square", "blue", "red")) == (False, False)
    assert not count_match(image, Scene("square", "red", "blue", count=2))
    assert position_match(image, Scene("square", "red", "blue", "bottom right")) is False
    blank = render(Scene("square", "red", "blue"), 64).point(lambda _: 0)
    assert colour_match(blank, Scene("square", "red", "black")) == (False, True)


@pytest.fixture(scope="module")
def shape_classifier(tmp_path_factory):
    """A small classifier (about ten seconds of training), saved and loaded back as the bench would."""
    report = train_shape_classifier(
        tmp_path_factory.mktemp("judge") / "shapes.pt", seed=0, n=1500, epochs=8, n_eval=200
    )
    assert report.file_bytes < 300_000
    return load_shape_classifier(report.path)


@pytest.mark.parametrize("size", [64, 256])
def test_the_shape_classifier_names_fresh_renders(shape_classifier, size):
    accuracy = evaluate_shape_classifier(shape_classifier, n=200, seed=4242, size=size)
    assert accuracy >= 0.9


def test_judge_passes_clean_held_out_renders(shape_classifier):
    for caption, scene in held_out_prompts(60, seed=3)[:20]:
        verdict = judge(render(scene, 128), scene, shape_classifier)
        assert verdict.all_ok, (caption, verdict)
