"""The walking skeleton's user story on the real parts: a Celery worker process on
the SQLite broker, a tiny diffusers pipeline, filesystem object storage."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from app.credits import ledger
from app.db import transaction
from app.gallery.models import Image
from app.storage import get_storage
from tests.support import make_settings, migrated, wait_for_job

pytestmark = pytest.mark.worker


def balance_on_page(c) -> int:
    html = c.get("/").text
    return int(re.search(r'id="balance"[^>]*><strong>(\d+)</strong>', html).group(1))


def test_sign_up_generate_and_see_the_image_in_the_gallery(settings, user_client, start_worker):
    start_worker(settings)
    c = user_client
    assert balance_on_page(c) == 200

    quoted = c.get("/api/v1/quote", params={"width": 64, "height": 64, "steps": 4, "n": 2}).json()["credits"]
    page = c.get("/")
    request_id = re.search(r'name="request_id" id="request-id" value="(\w+)"', page.text).group(1)
    submitted = c.form(
        "/generate",
        {
            "prompt": "a red circle on a blue background",
            "size": "64x64",
            "steps": 4,
            "guidance": 7,
            "n": 2,
            "seed": "",
            "request_id": request_id,
        },
    )
    assert submitted.status_code == 303
    job_id = submitted.headers["location"].rsplit("/", 1)[1]
    assert balance_on_page(c) == 200 - quoted  # held at submit

    job = wait_for_job(c, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["price"] == quoted
    assert 0 <= job["seed"] < 2**32  # a random seed was chosen and recorded
    assert [i["seed"] for i in job["images"]] == [job["seed"], job["seed"] + 1]

    # The bytes are PNGs of the requested size in object storage.
    storage = get_storage(settings)
    with transaction(settings) as session:
        stored = session.scalars(select(Image).where(Image.job_id == job_id).order_by(Image.index)).all()
        user_id = stored[0].user_id
        assert ledger.balance(session, user_id) == ledger.ledger_sum(session, user_id) == 200 - quoted
    assert len(stored) == 2
    for image in stored:
        png = PILImage.open(io.BytesIO(storage.get(image.storage_key)))
        assert (png.format, png.size) == ("PNG", (64, 64))

    # The gallery lists them; the detail page shows the settings; the file is served.
    gallery = c.get("/gallery").text
    for image in job["images"]:
        assert f"/gallery/{image['id']}" in gallery
    detail = c.get(f"/gallery/{job['images'][0]['id']}").text
    assert "a red circle on a blue background" in detail and str(job["seed"]) in detail
    served = c.get(f"/images/{job['images'][0]['id']}.png")
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert balance_on_page(c) == 200 - quoted  # captured: exactly the quote, no more

    # Another user sees none of it.
    other = type(c)(c.http.app)
    other.sign_up("eve@example.com")
    assert other.get(f"/api/v1/generations/{job_id}").status_code == 404
    assert other.get(f"/gallery/{job['images'][0]['id']}").status_code == 404
    assert other.get(f"/images/{job['images'][0]['id']}.png").status_code == 404
    assert f"/gallery/{job['images'][0]['id']}" not in other.get("/gallery").text


def test_a_job_whose_pipeline_raises_fails_and_costs_nothing(tmp_path, broken_model, make_client, start_worker):
    settings = migrated(make_settings(tmp_path / "broken", broken_model))
    start_worker(settings)
    c = make_client(settings)
    c.sign_up("grace@example.com")

    submitted = c.api_post("/api/v1/generations", {"prompt": "a green star", "width": 64, "height": 64, "steps": 3})
    assert submitted.status_code == 202
    job = wait_for_job(c, submitted.json()["id"])

    assert job["status"] == "failed"
    assert job["error"].startswith("Generation failed:")
    assert job["images"] == []
    assert balance_on_page(c) == 200
    card = c.get(f"/jobs/{job['id']}/card").text
    assert "No credits were charged" in card
    with transaction(settings) as session:
        kinds = [e.kind for e in session.scalars(select(ledger.LedgerEntry).order_by(ledger.LedgerEntry.id))]
    assert kinds == ["grant", "hold", "release"]


def test_a_jobs_events_stream_its_progress_then_its_images(settings, start_worker):
    """A script follows its job over server-sent events (httpx, streaming from a real uvicorn)
    instead of polling: each change once, then the final state with the images."""
    import json

    import httpx

    from app.main import create_app
    from tests.integration.test_event_loop import live_server, signed_up

    start_worker(settings)
    with live_server(create_app(settings)) as url, httpx.Client(base_url=url) as http:
        csrf = signed_up(http, settings)
        submitted = http.post(
            "/api/v1/generations",
            json={"prompt": "a lighthouse at dusk", "size": "64x64", "steps": 12, "n": 2},
            headers={"X-CSRF-Token": csrf},
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        received: list[tuple[str, str, dict]] = []
        with http.stream("GET", f"/api/v1/generations/{job_id}/events", timeout=180) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for block in stream.iter_text():  # events arrive as they happen, not at the end
                for event in block.strip().split("\n\n"):
                    fields = dict(line.split(": ", 1) for line in event.splitlines() if not line.startswith(":"))
                    if "event" in fields:
                        received.append((fields["id"], fields["event"], json.loads(fields["data"])))
        *progress, (last_id, final, job) = received
        assert final == "done" and job["status"] == "succeeded" and len(job["images"]) == 2
        assert progress and all(name == "progress" for _, name, _ in progress)
        ids = [event_id for event_id, _, _ in received]
        assert len(ids) == len(set(ids))  # each state once
        steps = [data["step"] for _, _, data in progress]
        assert steps == sorted(steps) and any(data["status"] == "running" for _, _, data in progress)
        png = http.get(job["images"][0]["url"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        # the client that already has the final event is told to stop reconnecting
        again = http.get(f"/api/v1/generations/{job_id}/events", headers={"Last-Event-ID": last_id})
        assert again.status_code == 204
