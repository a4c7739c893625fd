"""The price formula: what a user is quoted and charged for a request::

    credits per image = ceil(base * steps/ref_steps * (pixels/ref_pixels) ** exponent * multiplier)

at least price_min_credits_per_image; a request pays that times its image count.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from app.credits import pricing
from app.credits.pricing import price_per_image
from app.generation.catalog import get_catalog

SIZES = st.integers(min_value=8, max_value=256).map(lambda k: k * 8)  # 64..2048 in steps of 8
STEPS = st.integers(min_value=1, max_value=150)
N_IMAGES = st.integers(min_value=1, max_value=9)
MULTIPLIERS = st.floats(min_value=0.05, max_value=20, allow_nan=False, allow_infinity=False)
PROPERTY = hyp_settings(max_examples=200, deadline=None, database=None)


@pytest.fixture(scope="module")
def defaults(make_settings, tmp_path_factory):
    return make_settings(tmp_path_factory.mktemp("pricing"))


def price(settings, *, multiplier=None, **request):
    """The price for the settings' own model (the catalog's default) unless another model's
    multiplier is given."""
    if multiplier is None:
        multiplier = get_catalog(settings).default.price_multiplier
    return pricing.price(settings, multiplier=multiplier, **request)


def per_image(settings, width, height, steps, multiplier=1.0):
    return price_per_image(settings, width=width, height=height, steps=steps, multiplier=multiplier)


def test_the_defaults_are_the_documented_constants(defaults):
    # The rest of this file reasons with these numbers.
    assert defaults.price_base_credits == 10.0
    assert defaults.price_ref_steps == 50
    assert defaults.price_ref_pixels == 512 * 512
    assert defaults.price_pixel_exponent == 1.2
    assert defaults.price_min_credits_per_image == 1
    assert defaults.model_price_multiplier == 1.0


def test_the_reference_image_costs_exactly_the_base_price(defaults):
    assert price(defaults, width=512, height=512, steps=50, n_images=1, multiplier=1.0) == 10
    assert per_image(defaults, 512, 512, 50) == defaults.price_base_credits


@pytest.mark.parametrize("base", [1.0, 3.0, 7.0, 10.0, 25.0, 99.0])
def test_the_reference_image_costs_the_configured_base_whatever_it_is(make_settings, tmp_path, base):
    settings = make_settings(tmp_path, price_base_credits=base)
    assert price(settings, width=512, height=512, steps=50, n_images=1, multiplier=1.0) == int(base)


def test_a_fractional_price_is_rounded_up_not_down(make_settings, tmp_path):
    settings = make_settings(tmp_path, price_base_credits=12.25)
    assert per_image(settings, 512, 512, 50) == 13


def test_the_smallest_cheapest_image_still_costs_the_floor(defaults):
    # 64x64 at 1 step is a tiny fraction of a credit before the floor.
    assert per_image(defaults, 64, 64, 1) == defaults.price_min_credits_per_image == 1
    assert price(defaults, width=64, height=64, steps=1, n_images=4) == 4


def test_the_floor_is_a_setting(make_settings, tmp_path):
    settings = make_settings(tmp_path, price_min_credits_per_image=5)
    assert per_image(settings, 64, 64, 1) == 5
    assert price(settings, width=64, height=64, steps=1, n_images=3) == 15
    # An image that costs more than the floor is not affected by it.
    assert per_image(settings, 512, 512, 50) == 10


@pytest.mark.parametrize(("width", "height", "steps"), [(64, 64, 1), (128, 128, 20), (512, 512, 50), (768, 512, 30)])
def test_the_price_is_linear_in_the_number_of_images(defaults, width, height, steps):
    one = price(defaults, width=width, height=height, steps=steps, n_images=1)
    for n in range(1, 10):
        assert price(defaults, width=width, height=height, steps=steps, n_images=n) == n * one


def test_more_steps_never_cost_less(defaults):
    for width, height in [(64, 64), (128, 128), (512, 512), (1024, 768)]:
        prices = [per_image(defaults, width, height, steps) for steps in range(1, 151)]
        assert prices == sorted(prices), (width, height)
        if width * height >= 128 * 128:  # 64x64 stays at the floor even at 150 steps
            assert prices[-1] > prices[0]


def test_doubling_the_steps_about_doubles_the_price(defaults):
    # Linear in steps: ceil(2x) is 2*ceil(x) or one less.
    for steps in (25, 30, 50, 60):
        single = per_image(defaults, 512, 512, steps)
        double = per_image(defaults, 512, 512, 2 * steps)
        assert 2 * single - 1 <= double <= 2 * single


def test_more_pixels_never_cost_less(defaults):
    sizes = sorted(((w, h) for w in range(64, 1025, 64) for h in range(64, 1025, 64)), key=lambda s: s[0] * s[1])
    for steps in (1, 20, 50):
        prices = [per_image(defaults, w, h, steps) for w, h in sizes]
        # Equal pixel counts cost the same, so sorting by pixels sorts by price.
        assert prices == sorted(prices), steps


@pytest.mark.parametrize(("width", "height"), [(512, 512), (768, 512), (640, 640), (1024, 1024)])
def test_doubling_both_sides_costs_more_than_four_times(defaults, width, height):
    # Super-linear in pixels: 4x the pixels costs 4 ** 1.2 (about 5.3) times as much.
    small = per_image(defaults, width, height, 50)
    large = per_image(defaults, 2 * width, 2 * height, 50)
    assert small >= 10, "pick sizes where rounding up does not dominate"
    assert large > 4 * small
    assert large == pytest.approx(small * 4**1.2, abs=4**1.2 + 1)


def test_with_an_exponent_of_one_pixels_are_priced_linearly(make_settings, tmp_path):
    settings = make_settings(tmp_path, price_pixel_exponent=1.0)
    assert per_image(settings, 1024, 1024, 50) == 4 * per_image(settings, 512, 512, 50) == 40


def test_the_model_multiplier_setting_scales_the_price(make_settings, tmp_path):
    plain = make_settings(tmp_path)
    pricey = make_settings(tmp_path, model_price_multiplier=2.0)
    request = dict(width=512, height=512, steps=50, n_images=2)
    assert price(plain, **request) == 20
    assert price(pricey, **request) == 40
    # Another model's multiplier prices that model.
    assert price(pricey, **request, multiplier=0.5) == 10


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("price_base_credits", 20.0, 20),  # twice the base
        ("price_ref_steps", 25, 20),  # 50 steps is now twice the reference
        ("price_ref_pixels", 256 * 256, 53),  # 512x512 is 4x the reference pixels: 10 * 4 ** 1.2 = 52.8
        ("price_pixel_exponent", 2.0, 10),  # at the reference size the exponent does not matter
        ("price_min_credits_per_image", 11, 11),  # the floor now binds
    ],
)
def test_every_constant_is_a_setting(make_settings, tmp_path, setting, value, expected):
    settings = make_settings(tmp_path, **{setting: value})
    assert price(settings, width=512, height=512, steps=50, n_images=1, multiplier=1.0) == expected


@PROPERTY
@given(width=SIZES, height=SIZES, steps=STEPS, n=N_IMAGES, multiplier=MULTIPLIERS)
def test_price_is_a_positive_whole_number_times_the_image_count(defaults, width, height, steps, n, multiplier):
    each = per_image(defaults, width, height, steps, multiplier)
    total = price(defaults, width=width, height=height, steps=steps, n_images=n, multiplier=multiplier)
    assert type(each) is int and type(total) is int
    assert each >= defaults.price_min_credits_per_image >= 1
    assert total == n * each


@PROPERTY
@given(
    sizes=st.tuples(SIZES, SIZES, SIZES, SIZES),
    steps=st.tuples(STEPS, STEPS),
    multiplier=MULTIPLIERS,
)
def test_a_bigger_or_longer_request_never_costs_less(defaults, sizes, steps, multiplier):
    w1, w2 = sorted(sizes[:2])
    h1, h2 = sorted(sizes[2:])
    s1, s2 = sorted(steps)
    assert per_image(defaults, w1, h1, s1, multiplier) <= per_image(defaults, w2, h2, s2, multiplier)
