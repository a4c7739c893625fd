"""A browser that asks for a missing page gets a page of ours (404, 405); the API keeps its
JSON; /favicon.ico answers; the login's ``next`` leads only to a path on this site; bulk
actions leave a message for the next page's toast."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest

from app.accounts.routes import safe_next
from tests.support import PASSWORD

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@pytest.mark.parametrize(
    ("path", "method", "status"), [("/nonexistent", "GET", 404), ("/docs", "GET", 404), ("/logout", "GET", 405)]
)
def test_a_browser_gets_a_styled_page_for_a_missing_or_wrong_method_page(client, path, method, status):
    response = client.http.request(method, path, headers=HTML)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")
    assert "/static/css/app.css" in response.text and "<h1>" in response.text
    assert ("Not found" if status == 404 else "Not a page you can open") in response.text
    if path == "/docs":
        assert 'href="/api/docs"' in response.text
    if status == 405:
        assert response.headers["allow"] == "POST"


def test_other_clients_and_the_api_keep_their_json(client):
    plain = client.get("/nonexistent")  # curl, scripts: no text/html in Accept
    assert plain.status_code == 404 and plain.json() == {"detail": "Not Found"}
    for headers in ({}, HTML):
        api = client.get("/api/v1/nothing-here", headers=headers)
        assert api.status_code == 404
        assert api.json() == {"error": "No such API endpoint: GET /api/v1/nothing-here.", "field": None}
        wrong = client.http.put("/api/v1/generations", headers=headers)
        assert wrong.status_code == 405 and wrong.json()["error"] == "PUT is not allowed here; use GET, POST."
        openai = client.get("/v1/nothing-here", headers=headers)
        assert openai.status_code == 404 and "error" in openai.json() and "code" in openai.json()["error"]
    asset = client.get("/static/no-such-file.css", headers={"Accept": "text/css,*/*;q=0.1"})
    assert asset.status_code == 404 and "<html" not in asset.text


def test_the_favicon_is_ours_and_linked_from_every_page(client):
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.content.startswith(b"<svg") and icon.content == client.get("/static/favicon.svg").content
    for path in ("/login", "/signup", "/pricing"):
        assert re.search(
            r'<link rel="icon" href="[^"]*/static/favicon\.svg" type="image/svg\+xml">', client.get(path).text
        )


@pytest.mark.parametrize(
    "target",
    [
        "//evil.com",
        "https://evil.com",
        "http://evil.com/billing",
        "/\\evil.com",
        "\\\\evil.com",
        "/\t/evil.com",
        " //evil.com",
        "javascript:alert(1)",
        "evil.com",
        "",
        "/login?next=//evil.com",
        "/logout",
    ],
)
def test_next_never_leaves_the_site(client, target):
    assert safe_next(target) == ""
    client.sign_up("ada@example.com")
    client.http.cookies.delete("gouache_session")
    response = client.form("/login", {"email": "ada@example.com", "password": PASSWORD, "next": target})
    assert response.status_code == 303 and response.headers["location"] == "/"
    page = client.get("/login", params={"next": target})
    assert 'name="next"' not in page.text


def test_a_page_behind_the_login_comes_back_after_it(client):
    client.sign_up("ada@example.com")
    client.http.cookies.delete("gouache_session")
    sent = client.get("/billing?tab=history")
    assert sent.status_code == 303 and sent.headers["location"] == "/login?next=%2Fbilling%3Ftab%3Dhistory"
    page = client.get(sent.headers["location"])
    assert '<input type="hidden" name="next" value="/billing?tab=history">' in page.text
    wrong = client.form("/login", {"email": "ada@example.com", "password": "wrong password", "next": "/billing"})
    assert wrong.status_code >= 400 and 'name="next" value="/billing"' in wrong.text  # a typo keeps it
    back = client.form("/login", {"email": "ada@example.com", "password": PASSWORD, "next": "/billing?tab=history"})
    assert back.status_code == 303 and back.headers["location"] == "/billing?tab=history"
    assert safe_next("/gallery/abc?q=red%20circle") == "/gallery/abc?q=red%20circle"
    assert client.get("/", follow_redirects=False).status_code == 200


def test_an_htmx_request_after_the_session_ended_returns_to_the_page_it_came_from(client):
    client.sign_up("ada@example.com")
    client.http.cookies.delete("gouache_session")

    def redirect(current_url: str) -> str:
        response = client.get("/balance", headers={"HX-Request": "true", "HX-Current-URL": current_url})
        assert response.status_code == 401
        return response.headers["HX-Redirect"]

    assert redirect("http://testserver/gallery?q=red") == "/login?next=%2Fgallery%3Fq%3Dred"  # the page, not /balance
    assert redirect("http://testserver/") == "/login"
    assert redirect("") == "/login"
    other = redirect("https://evil.com//evil.com/x")  # a forged header: the login route refuses it as a next
    assert safe_next(unquote(other.removeprefix("/login?next="))) == ""


def test_a_bulk_action_leaves_a_message_for_a_toast(client, settings):
    from tests.gallery_data import add_image, user_id

    client.sign_up("ada@example.com")
    owner = user_id(settings, "ada@example.com")
    ids = [add_image(settings, owner, f"image {i}") for i in range(3)]
    done = client.form("/gallery/bulk", {"action": "favourite", "ids": ids[:2], "next": "/gallery"})
    assert done.status_code == 303 and unquote(done.cookies["gouache_toast"]) == "Favourited 2 images."
    gone = client.form("/gallery/bulk", {"action": "delete", "ids": ids[2], "next": "/gallery"})
    assert unquote(gone.cookies["gouache_toast"]) == "Deleted 1 image."
    named = client.form("/gallery/bulk", {"action": "collect", "ids": ids[:2], "name": "Reds", "next": "/gallery"})
    assert unquote(named.cookies["gouache_toast"]) == "Added 2 images to “Reds”."
