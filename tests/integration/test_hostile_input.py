"""No input reaches a 500: every route gets hostile values in every number, date, id
and text it parses (huge and negative numbers, 1e309, NaN, years 1 and 9999, NUL
bytes, broken UTF-8, forged cursors) and must answer with a 4xx (or a success).

The app runs with ``raise_server_exceptions=False``, so an unhandled error shows up
as the 500 a user would get. On SQLite and on PostgreSQL, which refuses more."""

from __future__ import annotations

import base64
import json
from datetime import UTC, timedelta, timezone
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from app.main import create_app
from tests.gallery_data import add_image, user_id
from tests.support import Browserless, make_settings, migrated

NUMBER_FIELDS = (
    "steps", "guidance", "seed", "n", "strength", "width", "height", "upscale",
    "extend_left", "extend_right", "extend_top", "extend_bottom", "source_width", "source_height",
)  # fmt: skip
TEXT_FIELDS = ("model", "prompt", "negative_prompt", "size", "aspect", "sampler", "mode", "variation", "source_image")
MODES = ("txt2img", "img2img", "outpaint", "variation", "upscale")


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


HOSTILE = [
    "1e309", "-1e309", "nan", "inf", "-inf", "-0", "9" * 400, "-" + "9" * 30, "-1", "0", "",
    "\x00", "a\x00b", "0x10", "1.5", "9999-12-31", "0001-01-01", "99999-01-01", "é", "x" * 3000,
]  # fmt: skip
CURSORS = [
    "!!!", _cursor("9999-12-31T23:59:59-14:00|a"), _cursor("0001-01-01T00:00:00+14:00|a"),
    _cursor("2024-01-01T00:00:00|a"), _cursor("2024-01-01T00:00:00+00:00|"), _cursor("x|" + "a" * 500),
]  # fmt: skip
ZONES = [UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-14))]
RAW_JSON = ["1e309", "-1e309", "1" + "0" * 400, "-" + "1" * 400, "NaN", "Infinity", "-0", "true", "null", "[]", "{}"]


@pytest.fixture(scope="module")
def site(module_db_settings):
    """A signed-up user with plenty of credits, an image and a collection, and a client
    that shows 500s as responses."""
    settings = migrated(
        make_settings(
            module_db_settings.data_dir,
            module_db_settings.model,
            database_url=module_db_settings.database_url,
            model_name="Tiny test model",
            model_default_size=64,
            model_max_size=128,
            model_default_steps=4,
            signup_grant_credits=10**9,
            max_active_jobs_per_user=0,
        )
    )
    app = create_app(settings)
    owner = Browserless(app)
    email = f"hostile-{id(owner)}@example.com"
    owner.sign_up(email)  # and confirms the address, as everyone does
    http = TestClient(app, raise_server_exceptions=False, follow_redirects=False, cookies=dict(owner.http.cookies))
    csrf = http.cookies["gouache_csrf"]
    image = add_image(settings, user_id(settings, email), "a red fox")
    made = http.post("/collections", data={"name": "Foxes", "csrf_token": csrf})
    collection = made.headers["location"].rsplit("=", 1)[1]
    return http, csrf, image, collection


def _no_500(response, what) -> None:
    assert response.status_code < 500, f"{what!r}: {response.status_code} {response.text[:300]}"


@pytest.mark.parametrize("field", NUMBER_FIELDS + TEXT_FIELDS)
def test_generation_fields(site, field):
    http, csrf, image, _ = site
    for value in HOSTILE:
        for mode in MODES:
            fields = {"prompt": "a fox", "mode": mode, "source_image": image, field: value}
            _no_500(http.get("/generate/quote", params=fields), (field, value, mode))
            api = http.post("/api/v1/generations", json=fields, headers={"X-CSRF-Token": csrf})
            _no_500(api, (field, value, mode))
        _no_500(http.get("/api/v1/quote", params={"prompt": "a fox", field: value}), (field, value))
        _no_500(http.get("/", params={"mode": "img2img", "source_image": image, field: value}), (field, value))
        page = http.post("/generate", data={"prompt": "a fox", field: value, "csrf_token": csrf})
        _no_500(page, (field, value))
    for raw in RAW_JSON:
        for mode in MODES:
            body = f'{{"prompt": "a fox", "mode": "{mode}", "source_image": "{image}", "{field}": {raw}}}'
            api = http.post(
                "/api/v1/generations", content=body, headers={"X-CSRF-Token": csrf, "content-type": "application/json"}
            )
            _no_500(api, (field, raw, mode))


@pytest.mark.parametrize(
    "typed", ["--seed 1e309", "--steps " + "9" * 40, "--guidance 1e309", "--strength nan", "--ar 1:0",
              "--ar 99999999999999999999:1", "--size 1e309x64", "--ar -1:-1", "--n -0", "--no \x00"],
)  # fmt: skip
def test_parameters_typed_in_the_prompt(site, typed):
    http, csrf, image, _ = site
    for mode in MODES:
        fields = {"prompt": f"a fox {typed}", "mode": mode, "source_image": image}
        _no_500(http.get("/generate/quote", params=fields), (typed, mode))
        _no_500(http.post("/api/v1/generations", json=fields, headers={"X-CSRF-Token": csrf}), (typed, mode))


@pytest.mark.parametrize(
    "field", ["q", "model", "mode", "date_from", "date_to", "aspect", "favourites", "collection", "sort", "after"]
)
def test_gallery_filters_and_cursors(site, field):
    http, _, image, _ = site
    for value in HOSTILE + CURSORS:
        for url in ("/gallery", f"/gallery/{image}"):
            _no_500(http.get(url, params={field: value}), (url, field, value))
            _no_500(http.get(url, params={field: value}, headers={"HX-Request": "true"}), (url, field, value))


def test_the_issues_gallery_500s_are_422s_or_pages(site):
    http, _, _, _ = site
    assert http.get("/gallery?date_to=9999-12-31").status_code == 200  # up to the last day there is
    assert http.get("/gallery?date_from=0001-01-01").status_code == 200
    for cursor in CURSORS[:3]:
        response = http.get(f"/gallery?after={cursor}")
        assert response.status_code == 422 and "page link is broken" in response.text


def test_ids_in_paths_and_query_strings(site):
    http, csrf, _, _ = site
    gets = ["/jobs/{}", "/jobs/{}/card", "/jobs/{}/preview.jpg", "/api/v1/generations/{}", "/gallery/{}",
            "/images/{}.png", "/images/{}.webp", "/billing/test-checkout/{}", "/billing/receipts/{}"]  # fmt: skip
    posts = ["/jobs/{}/cancel", "/api/v1/generations/{}/cancel", "/gallery/{}/favourite", "/gallery/{}/delete",
             "/gallery/{}/collections", "/collections/{}/rename", "/collections/{}/delete",
             "/billing/test-checkout/{}"]  # fmt: skip
    for value in HOSTILE:
        for template in gets:
            url = template.format(quote(value, safe="") or "x")
            _no_500(http.get(url), url)
        for template in posts:
            url = template.format(quote(value, safe="") or "x")
            form = {"csrf_token": csrf, "name": value, "collection": value, "favourite": value, "action": value}
            _no_500(http.post(url, data=form), url)
        for name in ("page", "paid", "canceled"):
            _no_500(http.get("/billing", params={name: value}), (name, value))
        _no_500(http.get("/billing/success", params={"session_id": value}), value)


def test_forms_with_hostile_text(site):
    http, csrf, image, collection = site
    for value in HOSTILE:
        form = {
            "csrf_token": csrf, "ids": [image, value], "name": value, "collection": value, "action": "collect",
            "pack": value, "email": value, "password": value, "current_password": value, "new_password": value,
            "next": value,
        }  # fmt: skip
        for url in ("/gallery/bulk", "/gallery/download", "/collections", "/billing/checkout", "/signup", "/login",
                    "/account/password", f"/collections/{collection}/rename"):  # fmt: skip
            _no_500(http.post(url, data=form), (url, value))


def test_broken_utf8_and_bodies_that_are_not_what_they_say(site):
    http, csrf, _, _ = site
    for url in ("/gallery?q=%ff%fe", "/generate/quote?prompt=%ff", "/api/v1/quote?steps=%ff", "/billing?page=%ff",
                "/gallery?date_to=%ff", "/?prompt=%ff"):  # fmt: skip
        _no_500(http.get(url), url)
    bodies = {
        "application/x-www-form-urlencoded": b"prompt=%ff&name=\xff\xfe&csrf_token=" + csrf.encode(),
        "application/json": b'{"prompt": "\xff"}',
        "multipart/form-data; boundary=x": (
            b'--x\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n\xff\r\n--x--\r\n'
        ),
        "multipart/form-data": b"not multipart at all",
        "text/plain": b"\x00\x01\x02",
    }
    for url in ("/generate", "/api/v1/generations", "/gallery/bulk", "/login", "/collections"):
        for content_type, body in bodies.items():
            response = http.post(url, content=body, headers={"X-CSRF-Token": csrf, "content-type": content_type})
            _no_500(response, (url, content_type))


QUERY_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)  # a URL can't carry lone surrogates

# A value of any JSON type, weighted towards the edges.
json_values = st.one_of(
    st.integers(),
    st.integers(min_value=2**53, max_value=10**500),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=40),  # lone surrogates included: JSON can carry them
    st.dates().map(lambda d: d.isoformat()),
    st.lists(st.integers(), max_size=3),
)


@hypothesis_settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(NUMBER_FIELDS + TEXT_FIELDS), json_values, max_size=4), st.sampled_from(MODES))
def test_any_json_generation_request(site, fields, mode):
    http, csrf, image, _ = site
    body = {"prompt": "a fox", "mode": mode, "source_image": image, **fields}
    response = http.post(
        "/api/v1/generations",
        content=json.dumps(body, allow_nan=False),
        headers={"X-CSRF-Token": csrf, "content-type": "application/json"},
    )
    _no_500(response, body)
    query = {k: str(v) for k, v in body.items()}
    if all(v.isascii() or v.encode("utf-8", "replace").decode() == v for v in query.values()):
        _no_500(http.get("/api/v1/quote", params=query), query)


@hypothesis_settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["q", "model", "mode", "date_from", "date_to", "aspect", "favourites", "collection", "sort"]),
        st.one_of(QUERY_TEXT, st.dates().map(lambda d: d.isoformat()), st.integers().map(str)),
        max_size=4,
    ),
    st.one_of(
        st.none(),
        QUERY_TEXT,
        st.datetimes(timezones=st.sampled_from(ZONES)).map(lambda d: _cursor(f"{d.isoformat()}|x")),
    ),
)
def test_any_gallery_query(site, filters, after):
    http, _, _, _ = site
    params = dict(filters, **({"after": after} if after is not None else {}))
    _no_500(http.get("/gallery", params=params), params)
