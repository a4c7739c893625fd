"""Hardening, as an attacker would try it: oversized bodies, pages framed or scripted
from elsewhere, requests forged from another site, images shaped to dodge the size
rules. Each is refused with a 4xx and a message; the site's own pages keep working."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image as PILImage

from app.main import create_app
from tests.support import Browserless, make_settings, migrated

SMALL_BODY = 16 * 1024


@pytest.fixture
def small_limits(tmp_path: Path, tiny_model_path: Path):
    """A server whose request bodies may be 16 KB, uploads 64 KB each."""
    settings = migrated(
        make_settings(tmp_path / "data", tiny_model_path, max_body_bytes=SMALL_BODY, max_upload_bytes=64 * 1024)
    )
    c = Browserless(create_app(settings))
    c.sign_up("big@example.com")
    return c


def _chunks(total: int, size: int = 4096) -> Iterator[bytes]:
    """A body sent chunked: no Content-Length for the server to check up front."""
    sent = 0
    while sent < total:
        yield b"a" * min(size, total - sent)
        sent += size


def png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", size, (30, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


# ---- the request body limit ------------------------------------------------------------


def test_an_oversized_json_body_is_refused_before_it_is_read(small_limits):
    c = small_limits
    body = b'{"prompt": "x", "pad": "' + b"a" * (SMALL_BODY + 1) + b'"}'
    response = c.http.post(
        "/api/v1/generations", content=body, headers={"X-CSRF-Token": c.csrf, "content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json() == {"error": "The request is too large: the limit is 16 KB.", "field": None}


def test_a_chunked_body_without_content_length_is_cut_off_at_the_limit(small_limits):
    c = small_limits
    response = c.http.post(
        "/api/v1/generations",
        content=_chunks(SMALL_BODY * 4),
        headers={"X-CSRF-Token": c.csrf, "content-type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert "too large" in response.json()["error"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_form_gets_an_error_page(small_limits, chunked):
    c = small_limits
    content = _chunks(SMALL_BODY * 2) if chunked else b"name=" + b"a" * (SMALL_BODY * 2)
    response = c.http.post(
        "/collections",
        content=content,
        headers={"X-CSRF-Token": c.csrf, "content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("text/html")
    assert "The request is too large: the limit is 16 KB." in response.text
    assert "Content-Security-Policy" in response.headers  # the error page has the headers too


def test_an_oversized_htmx_submit_shows_its_error_in_the_form(small_limits):
    c = small_limits
    response = c.http.post(
        "/generate",
        content=b"prompt=" + b"a" * (SMALL_BODY * 2),
        headers={"X-CSRF-Token": c.csrf, "HX-Request": "true", "content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413
    assert response.headers["HX-Retarget"] == "#form-error"
    assert 'id="form-error"' in response.text and "too large" in response.text


def test_uploads_keep_their_own_limit_above_the_body_limit(small_limits):
    """A 40 KB image is more than a plain body may be but within the upload limit: it
    reaches the upload checks. An image over the upload limit gets the upload's message."""
    c = small_limits
    noisy = PILImage.effect_noise((160, 160), 100).convert("RGB")
    buf = io.BytesIO()
    noisy.save(buf, format="PNG")
    image = buf.getvalue()
    assert SMALL_BODY < len(image) < 64 * 1024
    fields = {"mode": "img2img", "prompt": "a sea", "steps": "4"}
    ok = c.http.post(
        "/api/v1/generations",
        data=fields,
        files={"image": ("a.png", image, "image/png")},
        headers={"X-CSRF-Token": c.csrf},
    )
    assert ok.status_code == 202, ok.text
    too_big = image + b"\0" * (64 * 1024)
    refused = c.http.post(
        "/api/v1/generations",
        data=fields,
        files={"image": ("a.png", too_big, "image/png")},
        headers={"X-CSRF-Token": c.csrf},
    )
    assert refused.status_code == 422 and refused.json()["field"] == "image"
    assert "the limit is" in refused.json()["error"]


def test_stripe_webhook_bodies_are_limited_too(small_limits):
    response = small_limits.http.post(
        "/billing/webhook", content=b"{" + b" " * (SMALL_BODY * 2) + b"}", headers={"stripe-signature": "t=1,v1=x"}
    )
    assert response.status_code == 413


# ---- security headers -----------------------------------------------------------------


def csp(response) -> dict[str, list[str]]:
    policy = response.headers["Content-Security-Policy"]
    return {name: values for name, *values in (d.split() for d in policy.split(";") if d.strip())}


def test_pages_carry_a_csp_without_inline_script_or_style(user_client):
    for url in ("/", "/gallery", "/billing", "/login", "/api/v1/models"):
        response = user_client.get(url)
        policy = csp(response)
        assert policy["script-src"] == ["'self'"], url
        assert policy["style-src"] == ["'self'"], url
        assert "'unsafe-inline'" not in response.headers["Content-Security-Policy"]
        assert "'unsafe-eval'" not in response.headers["Content-Security-Policy"]
        assert policy["object-src"] == ["'none'"]
        assert policy["frame-ancestors"] == ["'none'"]
        assert policy["base-uri"] == ["'self'"]
        assert policy["form-action"] == ["'self'"]
        assert "camera=()" in response.headers["Permissions-Policy"]
        assert "geolocation=()" in response.headers["Permissions-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "same-origin"


def test_the_pages_have_no_inline_script_handler_or_style():
    templates = Path(__file__).resolve().parents[2] / "templates"
    for path in templates.rglob("*.html"):
        text = path.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), f"inline <script> in {path.name}"
        assert not re.search(r"\son[a-z]+\s*=", text), f"inline event handler in {path.name}"
        assert not re.search(r"\sstyle\s*=", text), f"style attribute in {path.name}"
        assert "hx-on" not in text, f"hx-on (needs eval) in {path.name}"


def test_hsts_only_over_https(settings):
    app = create_app(settings)
    from fastapi.testclient import TestClient

    plain = TestClient(app).get("/login")
    assert "Strict-Transport-Security" not in plain.headers
    secure = TestClient(app, base_url="https://gouache.example").get("/login")
    assert secure.headers["Strict-Transport-Security"] == f"max-age={settings.hsts_max_age_s}"
    off = TestClient(create_app(settings.model_copy(update={"hsts_max_age_s": 0})), base_url="https://g.example")
    assert "Strict-Transport-Security" not in off.get("/login").headers


def test_with_stripe_the_forms_may_post_on_to_stripe_checkout(settings):
    stripe = Browserless(create_app(settings.model_copy(update={"stripe_secret_key": "sk_test_x"})))
    assert csp(stripe.get("/login"))["form-action"] == ["'self'", "https://checkout.stripe.com"]


def test_api_docs_load_swagger_ui_from_our_own_static_files_under_a_nonce(client):
    response = client.get("/api/docs")
    assert response.status_code == 200
    html = response.text
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in html
    assert "/static/vendor/swagger-ui/swagger-ui.css" in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "nothing from another host"
    nonce = re.search(r"<script nonce=\"([^\"]+)\">", html).group(1)
    assert csp(response)["script-src"] == ["'self'", f"'nonce-{nonce}'"]
    assert client.get("/api/docs").text.count(nonce) == 0  # a fresh nonce per response
    assert client.get("/static/vendor/swagger-ui/swagger-ui-bundle.js").status_code == 200
    assert client.get("/api/redoc").status_code == 404
    assert client.get("/docs").status_code == 404


# ---- where a state-changing request comes from ----------------------------------------------


def test_a_request_from_another_site_is_refused_even_with_the_token(user_client):
    c = user_client
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Referer": "https://evil.example/x"}):
        api = c.http.post("/api/v1/generations", json={"prompt": "a fox"}, headers={"X-CSRF-Token": c.csrf, **headers})
        assert api.status_code == 403, headers
        assert "came from another site" in api.json()["error"]
        page = c.http.post("/collections", data={"name": "Foxes", "csrf_token": c.csrf}, headers=headers)
        assert page.status_code == 403 and "came from another site" in page.text


def test_a_request_from_this_site_or_saying_nothing_goes_through(user_client):
    c = user_client
    same = c.http.post(
        "/api/v1/generations",
        json={"prompt": "a fox", "steps": 4},
        headers={"X-CSRF-Token": c.csrf, "Origin": "http://testserver"},
    )
    assert same.status_code == 202, same.text
    referer = c.http.post(
        "/collections", data={"name": "Foxes", "csrf_token": c.csrf}, headers={"Referer": "http://testserver/gallery"}
    )
    assert referer.status_code == 303
    silent = c.http.post("/collections", data={"name": "Birds", "csrf_token": c.csrf})
    assert silent.status_code == 303
    no_token = c.http.post("/collections", data={"name": "Cats"})
    assert no_token.status_code == 403 and "security token" in no_token.text  # the token still applies


def test_the_configured_public_url_is_this_site(settings):
    c = Browserless(create_app(settings.model_copy(update={"base_url": "https://studio.example"})))
    response = c.http.post(
        "/login", data={"email": "x@example.com", "password": "x", "csrf_token": c.csrf},
        headers={"Origin": "https://studio.example"},
    )  # fmt: skip
    assert response.status_code == 422  # past the origin check: a wrong password
    other = c.http.post(
        "/login", data={"email": "x@example.com", "password": "x", "csrf_token": c.csrf},
        headers={"Origin": "https://studio.example:8443"},
    )  # fmt: skip
    assert other.status_code == 403


def test_stripes_webhook_is_exempt_it_is_signed(client):
    response = client.http.post(
        "/billing/webhook", content=b"{}", headers={"Origin": "https://stripe.example", "stripe-signature": "t=1,v1=x"}
    )
    assert response.status_code != 403


# ---- an input image's sides ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((1, 100_000), "each side must be at least 64 pixels"),
        ((32, 32), "each side must be at least 64 pixels"),
        ((64, 400), "longer than 4:1"),
        ((1000, 200), "longer than 4:1"),
    ],
)
def test_an_input_image_is_held_to_the_size_rules(user_client, size, message):
    c = user_client
    for mode in ("img2img", "inpaint", "outpaint"):
        response = c.http.post(
            "/api/v1/generations",
            data={"mode": mode, "prompt": "a sea", "extend_right": "32"},
            files={"image": ("a.png", png(size), "image/png"), "mask": ("m.png", png(size), "image/png")},
            headers={"X-CSRF-Token": c.csrf},
        )
        assert response.status_code == 422, (mode, response.text)
        assert message in response.json()["error"] and response.json()["field"] == "image"
        assert f"{size[0]}×{size[1]}" in response.json()["error"]
    quote = c.get("/generate/quote", params={"mode": "img2img", "source_width": size[0], "source_height": size[1]})
    assert message in quote.text  # the live price says so before the upload is sent


def test_an_outpainted_frame_is_held_to_the_aspect_limit(user_client):
    c = user_client
    response = c.http.post(
        "/api/v1/generations",
        data={"mode": "outpaint", "prompt": "a sea", "extend_right": "1024"},
        files={"image": ("a.png", png((64, 64)), "image/png")},
        headers={"X-CSRF-Token": c.csrf},
    )
    assert response.status_code == 422
    assert "The extended frame" in response.json()["error"] and "4:1" in response.json()["error"]
    fine = c.http.post(
        "/api/v1/generations",
        data={"mode": "outpaint", "prompt": "a sea", "extend_right": "64", "steps": "4"},
        files={"image": ("a.png", png((64, 64)), "image/png")},
        headers={"X-CSRF-Token": c.csrf},
    )
    assert fine.status_code == 202, fine.text


# ---- text with NUL --------------------------------------------------------------------------


def test_text_with_nul_is_refused_before_the_database_and_batches_still_insert(any_db_settings):
    from sqlalchemy import func, select

    from app.accounts.models import User
    from app.db import transaction
    from app.errors import UserError

    with transaction(any_db_settings) as session:  # several rows in one INSERT (insertmanyvalues)
        session.add_all([User(email=f"batch-{i}@example.com", password_hash="x", balance=0) for i in range(3)])
    with pytest.raises(UserError, match="NUL"), transaction(any_db_settings) as session:
        session.add_all([User(email="ok@example.com", password_hash="x"), User(email="a\x00b", password_hash="x")])
    with transaction(any_db_settings) as session:
        assert session.scalar(select(func.count()).select_from(User)) == 3
        with pytest.raises(UserError, match="NUL"):
            session.scalar(select(User).where(User.email == "\x00"))
