"""The OpenAI-compatible Images API, driven by the official ``openai`` client against a real
uvicorn server: what an existing OpenAI script gets when pointed at Gouache with
``base_url=…/v1`` and a Gouache API key."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from openai import OpenAI
from PIL import Image as PILImage
from sqlalchemy import select

from app.credits import ledger
from app.db import reading, transaction
from app.gallery.models import Image
from app.generation import service
from app.generation.models import Job
from app.main import create_app
from tests.integration.test_api_keys import _user_id, make_key
from tests.integration.test_event_loop import live_server
from tests.support import Browserless, make_settings, migrated

PROMPT = "a red circle on a blue background"


@pytest.fixture
def server(settings) -> Iterator[str]:
    with live_server(create_app(settings)) as url:
        yield url


@pytest.fixture
def ada(settings) -> Browserless:
    c = Browserless(create_app(settings))
    c.sign_up("ada@example.com")
    return c


def client_for(server: str, key: str, **kw) -> OpenAI:
    return OpenAI(base_url=f"{server}/v1", api_key=key, **kw)


def balance(settings, email: str = "ada@example.com") -> int:
    with reading(settings) as session:
        return ledger.balance(session, _user_id(settings, email))


def png(data: bytes) -> PILImage.Image:
    image = PILImage.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def jobs(settings) -> list[Job]:
    with reading(settings) as session:
        return list(session.scalars(select(Job).order_by(Job.created_at)))


# ---- without a worker: the catalog, and every refusal --------------------------------------


def test_models_lists_the_catalog(server, settings, ada):
    from app.generation.catalog import get_catalog

    models = client_for(server, make_key(settings, "ada@example.com")).models.list()
    assert [m.id for m in models.data] == [m.id for m in get_catalog(settings)]
    only = models.data[0]
    assert (only.object, only.owned_by) == ("model", "gouache") and isinstance(only.created, int)
    assert client_for(server, make_key(settings, "ada@example.com")).models.retrieve(only.id).id == only.id


def test_no_key_a_bad_key_and_a_revoked_key_are_authentication_errors(server, settings, ada):
    from app.apikeys import service as apikeys

    key = make_key(settings, "ada@example.com")
    client_for(server, key).models.list()  # works
    with pytest.raises(openai.AuthenticationError) as bad:
        client_for(server, "gch_abcdefgh" + "x" * 43).images.generate(prompt=PROMPT)
    assert bad.value.code == "invalid_api_key" and bad.value.status_code == 401
    with transaction(settings) as session:
        apikeys.revoke_prefix(session, key[:12])
    with pytest.raises(openai.AuthenticationError):
        client_for(server, key).models.list()
    # a browser's cookies do not open /v1: keys only, and never a redirect
    no_key = httpx.get(f"{server}/v1/models", cookies=dict(ada.http.cookies.items()))
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
    assert set(no_key.json()["error"]) == {"message", "type", "param", "code"}


def test_bad_input_is_a_bad_request_and_holds_nothing(server, settings, ada):
    client = client_for(server, make_key(settings, "ada@example.com"))
    with pytest.raises(openai.BadRequestError) as wrong_size:
        client.images.generate(prompt=PROMPT, size="1024x1024")  # past the test model's 128
    error = wrong_size.value.body
    assert wrong_size.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == "width" and "between 64 and 128" in error["message"]
    with pytest.raises(openai.BadRequestError) as too_many:
        client.images.generate(prompt=PROMPT, n=10)
    assert too_many.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as no_prompt:
        client.images.generate(prompt="  ")
    assert no_prompt.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as bad_format:
        client.images.generate(prompt=PROMPT, response_format="gif")  # type: ignore[arg-type]
    assert bad_format.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as unmasked:  # an edit needs transparent pixels
        client.images.edit(image=("flat.png", _png_bytes(_source()), "image/png"), prompt=PROMPT)
    assert unmasked.value.body["param"] == "image" and "transparent" in unmasked.value.body["message"]
    assert jobs(settings) == [] and balance(settings) == 200


def test_too_few_credits_is_a_rate_limit_error_insufficient_quota_not_retried(server, settings):
    c = Browserless(create_app(settings))
    c.sign_up("new@example.com", confirm=False)  # unconfirmed: no free credits yet
    client = client_for(server, make_key(settings, "new@example.com"))
    start = time.monotonic()
    with pytest.raises(openai.RateLimitError) as poor:
        client.images.generate(prompt=PROMPT, size="64x64")
    assert poor.value.code == "insufficient_quota" and poor.value.status_code == 429
    assert poor.value.response.headers["x-should-retry"] == "false"
    assert time.monotonic() - start < 5  # answered at once: the client did not back off and retry
    assert jobs(settings) == []


def test_a_keys_rate_limit_is_a_rate_limit_error_with_retry_after(tmp_path, tiny_model_path):
    settings = migrated(make_settings(tmp_path / "d", tiny_model_path, api_key_requests_per_minute=2))
    Browserless(create_app(settings)).sign_up("ada@example.com")
    with live_server(create_app(settings)) as url:
        client = client_for(url, make_key(settings, "ada@example.com"), max_retries=0)
        client.models.list()
        client.models.list()
        with pytest.raises(openai.RateLimitError) as limited:
            client.models.list()
    assert limited.value.code == "rate_limit_exceeded"
    assert int(limited.value.response.headers["retry-after"]) >= 1


def test_unknown_paths_and_methods_answer_in_openais_shape(server, settings, ada):
    auth = {"Authorization": f"Bearer {make_key(settings, 'ada@example.com')}"}
    unknown = httpx.post(f"{server}/v1/chat/completions", headers=auth, json={})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "invalid_request_error"
    wrong_method = httpx.get(f"{server}/v1/images/generations", headers=auth)
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
    not_json = httpx.post(f"{server}/v1/images/generations", headers=auth, content=b"{nope")
    assert not_json.status_code == 400 and "error" in not_json.json()


def _wait_for_a_job(settings, timeout: float = 20) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := jobs(settings):
            return found[0]
        time.sleep(0.05)
    raise AssertionError("no job was created")


def test_a_failed_job_is_an_error_with_its_message_and_costs_nothing(server, settings, ada):
    """No worker runs: the test fails the job itself while the call waits for it."""
    client = client_for(server, make_key(settings, "ada@example.com"))
    outcome: dict[str, Exception] = {}

    def call() -> None:
        try:
            client.images.generate(prompt=PROMPT, size="64x64")
        except Exception as e:
            outcome["error"] = e

    caller = threading.Thread(target=call)
    caller.start()
    job = _wait_for_a_job(settings)
    assert balance(settings) < 200  # held while it waits
    service.fail(settings, job.id, "The GPU ran out of memory.")
    caller.join(timeout=30)
    error = outcome["error"]
    assert isinstance(error, openai.InternalServerError) and error.status_code == 500
    assert "The GPU ran out of memory." in error.message and error.code == "generation_failed"
    assert balance(settings) == 200 and len(jobs(settings)) == 1  # released, and not retried


def test_a_job_not_done_in_time_is_cancelled_and_costs_nothing(tmp_path, tiny_model_path):
    settings = migrated(make_settings(tmp_path / "d", tiny_model_path, openai_wait_s=0.5))
    Browserless(create_app(settings)).sign_up("ada@example.com")
    with live_server(create_app(settings)) as url:
        with pytest.raises(openai.InternalServerError) as slow:
            client_for(url, make_key(settings, "ada@example.com")).images.generate(prompt=PROMPT, size="64x64")
    assert slow.value.status_code == 504 and slow.value.code == "timeout"
    assert [j.status for j in jobs(settings)] == ["cancelled"] and balance(settings) == 200


def test_waiting_calls_hold_no_thread_more_of_them_than_the_pool_has(tmp_path, tiny_model_path):
    """45 calls wait for jobs (no worker runs) — more than the 40 threads FastAPI's pool has —
    and a page still answers at once: a waiting call holds no thread."""
    calls = 45
    settings = migrated(make_settings(tmp_path / "d", tiny_model_path, max_active_jobs_per_user=0))
    Browserless(create_app(settings)).sign_up("ada@example.com")
    auth = {"Authorization": f"Bearer {make_key(settings, 'ada@example.com')}"}
    body = {"prompt": PROMPT, "size": "64x64"}
    with live_server(create_app(settings)) as url, ThreadPoolExecutor(calls) as pool:
        waiting = [
            pool.submit(httpx.post, f"{url}/v1/images/generations", json=body, headers=auth, timeout=60)
            for _ in range(calls)
        ]
        deadline = time.monotonic() + 60
        while len(jobs(settings)) < calls and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(jobs(settings)) == calls and not any(w.done() for w in waiting)
        start = time.monotonic()
        page = httpx.get(f"{url}/login", timeout=10)
        assert page.status_code == 200 and time.monotonic() - start < 2.0
        for job in jobs(settings):  # let every call answer
            service.fail(settings, job.id, "Stopped by the test.")
        assert {w.result().status_code for w in waiting} == {500}


def test_a_signed_link_opens_only_its_image_until_it_expires(server, settings, ada):
    from app import signing
    from app.generation.openai_api import _signed_message

    user_id = _user_id(settings, "ada@example.com")
    expires, signature = signing.sign(settings, _signed_message(user_id, "some-image"), 60)
    assert signing.verify(settings, _signed_message(user_id, "some-image"), expires, signature)
    assert not signing.verify(settings, _signed_message(user_id, "other-image"), expires, signature)
    assert not signing.verify(settings, _signed_message(user_id + 1, "some-image"), expires, signature)
    assert not signing.verify(settings, _signed_message(user_id, "some-image"), expires, signature, now=expires + 1)
    assert (settings.data_dir / "secret_key").stat().st_mode & 0o077 == 0  # the owner's only
    missing = httpx.get(f"{server}/v1/files/images/some-image.png", params={"expires": expires, "signature": signature})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


# ---- with a worker: images made, answered, in the gallery, at the form's price -----------------


def _source(size: int = 64) -> PILImage.Image:
    image = PILImage.new("RGB", (size, size), (30, 60, 200))
    for x in range(size // 4, 3 * size // 4):
        for y in range(size // 4, 3 * size // 4):
            image.putpixel((x, y), (220, 30, 30))
    return image


def _png_bytes(image: PILImage.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.worker
def test_generate_with_url_and_b64_json_at_the_forms_price(server, settings, ada, start_worker):
    start_worker(settings)
    client = client_for(server, make_key(settings, "ada@example.com"))
    quoted = ada.get("/api/v1/quote", params={"size": "64x64", "n": 2}).json()["credits"]

    made = client.images.generate(
        model="dall-e-3", prompt=PROMPT, n=2, size="64x64", quality="hd", style="vivid", user="script-7"
    )
    assert len(made.data) == 2 and made.created > 0
    for item in made.data:
        assert item.url and item.b64_json is None and item.revised_prompt is None
        fetched = httpx.get(item.url)  # no key, no cookie: the signed link is enough
        assert fetched.status_code == 200 and png(fetched.content).size == (64, 64)
    tampered = httpx.get(made.data[0].url.replace("signature=", "signature=x"))
    assert tampered.status_code == 404
    assert balance(settings) == 200 - quoted  # exactly what the form quotes

    encoded = client.images.generate(prompt=PROMPT + " --ar 2:1", size="64x64", response_format="b64_json")
    (item,) = encoded.data
    assert png(base64.b64decode(item.b64_json)).size == (128, 64) and item.url is None
    assert item.revised_prompt == PROMPT  # the --ar parameter was read out of the prompt

    with reading(settings) as session:  # all three images are in the gallery
        assert session.query(Image).count() == 3
    gallery = ada.get("/gallery").text
    with reading(settings) as session:
        for image in session.scalars(select(Image)):
            assert f"/gallery/{image.id}" in gallery


@pytest.mark.worker
def test_edit_repaints_only_the_masks_transparent_pixels(server, settings, ada, start_worker):
    start_worker(settings)
    client = client_for(server, make_key(settings, "ada@example.com"))
    source = _source()
    mask = PILImage.new("RGBA", (64, 64), (0, 0, 0, 255))
    for x in range(64):
        for y in range(32, 64):
            mask.putpixel((x, y), (0, 0, 0, 0))  # transparent: the bottom half is edited

    edited = client.images.edit(
        image=("source.png", _png_bytes(source), "image/png"),
        mask=("mask.png", _png_bytes(mask), "image/png"),
        prompt="a green field",
        n=1,
        size="64x64",
        response_format="b64_json",
    )
    out = png(base64.b64decode(edited.data[0].b64_json)).convert("RGB")
    assert out.size == (64, 64)
    top = [out.getpixel((x, y)) for x in range(64) for y in range(0, 28)]
    assert top == [source.getpixel((x, y)) for x in range(64) for y in range(0, 28)]  # kept as it was
    bottom = [out.getpixel((x, y)) for x in range(64) for y in range(36, 64)]
    assert bottom != [source.getpixel((x, y)) for x in range(64) for y in range(36, 64)]  # repainted
    (job,) = jobs(settings)
    assert (job.mode, job.prompt) == ("inpaint", "a green field")


@pytest.mark.worker
def test_variations_of_an_upload(server, settings, ada, start_worker):
    start_worker(settings)
    client = client_for(server, make_key(settings, "ada@example.com"))
    varied = client.images.create_variation(image=("source.png", _png_bytes(_source()), "image/png"), n=2)
    assert len(varied.data) == 2
    for item in varied.data:
        assert png(httpx.get(item.url).content).size == (64, 64)
    (job,) = jobs(settings)
    assert (job.mode, job.strength, job.n_images) == ("img2img", 0.35, 2)
    assert varied.data[0].revised_prompt == job.prompt  # the prompt used, since none was sent


@pytest.mark.worker
def test_user_bs_key_never_reaches_user_as_images(server, settings, ada, start_worker):
    start_worker(settings)
    Browserless(create_app(settings)).sign_up("bob@example.com")
    made = client_for(server, make_key(settings, "ada@example.com")).images.generate(prompt=PROMPT, size="64x64")
    (job,) = jobs(settings)
    with reading(settings) as session:
        image_id = session.scalars(select(Image.id)).one()
    bobs = {"Authorization": f"Bearer {make_key(settings, 'bob@example.com')}"}
    assert httpx.get(f"{server}/api/v1/generations/{job.id}", headers=bobs).status_code == 404
    # a link signed for Ada's image does not open another image
    other = made.data[0].url.replace(image_id, job.id)
    assert httpx.get(other).status_code == 404
