"""Every generation mode end to end: the API and the form, a real Celery worker, the tiny
SD pipeline, object storage; and the refusals that must cost nothing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from app.db import transaction
from app.gallery.models import Image
from app.generation import metadata
from app.generation.models import Job
from app.storage import get_storage
from tests.support import wait_for_job


def png_bytes(size=(96, 64), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    PILImage.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def mask_bytes(size, box) -> bytes:
    mask = PILImage.new("L", size, 0)
    mask.paste(255, box)
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    return buf.getvalue()


def post_files(c, data: dict, files: dict):
    return c.http.post(
        "/api/v1/generations", data=data, files={k: (f"{k}.png", v, "image/png") for k, v in files.items()},
        headers={"X-CSRF-Token": c.csrf},
    )  # fmt: skip


def _balance(c) -> int:
    import re

    return int(re.search(r'id="balance"[^>]*><strong>(\d+)</strong>', c.get("/").text).group(1))


def stored_image(settings, job_id: str, index: int = 0) -> PILImage.Image:
    with transaction(settings) as session:
        key = session.scalar(select(Image.storage_key).where(Image.job_id == job_id, Image.index == index))
    return PILImage.open(io.BytesIO(get_storage(settings).get(key)))


@pytest.mark.worker
def test_every_mode_runs_through_the_worker_and_is_priced_by_its_real_work(settings, user_client, start_worker):
    start_worker(settings)
    c = user_client

    # text to image with a sampler typed as a Midjourney parameter
    first = c.api_post("/api/v1/generations", {"prompt": "a red circle --ar 3:2 --sampler DPM++ 2M Karras", "steps": 4})
    assert first.status_code == 202, first.text
    done = wait_for_job(c, first.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    assert (done["width"], done["height"], done["sampler"]) == (96, 64, "dpmpp_2m_karras")
    params = metadata.parse_a1111(metadata.read(get_storage(settings).get(_key(settings, done)))["parameters"])
    assert params["Sampler"] == "DPM++ 2M Karras" and params["Seed"] == str(done["seed"])
    source_id = done["images"][0]["id"]

    # variations of a gallery image: its prompt, n images, Midjourney's subtle strength
    vary = c.api_post("/api/v1/generations", {"mode": "variation", "source_image": source_id, "variation": "subtle",
                                              "n": 2, "steps": 4})  # fmt: skip
    assert vary.status_code == 202, vary.text
    varied = wait_for_job(c, vary.json()["id"])
    assert varied["status"] == "succeeded", varied["error"]
    assert varied["prompt"] == "a red circle" and varied["strength"] == 0.35 and len(varied["images"]) == 2
    assert (varied["width"], varied["height"]) == (96, 64)

    # upscale 2x: wider than the model's 128-pixel maximum, so it runs in two blended tiles
    one_tile = c.get("/api/v1/quote", params={"width": 128, "height": 128, "steps": 4}).json()["credits"]
    up = c.api_post("/api/v1/generations", {"mode": "upscale", "source_image": source_id, "upscale": 2, "steps": 4})
    assert up.status_code == 202, up.text
    upscaled = wait_for_job(c, up.json()["id"])
    assert upscaled["status"] == "succeeded", upscaled["error"]
    assert (upscaled["width"], upscaled["height"]) == (192, 128)
    assert stored_image(settings, upscaled["id"]).size == (192, 128)
    assert (
        upscaled["price"]
        == 2
        * c.get(  # two tiles of 128x128, each at steps x strength
            "/api/v1/quote", params={"width": 128, "height": 128, "steps": 1}
        ).json()["credits"]
        and one_tile > 0
    )

    # image to image from an upload: the upload is fitted to the model's size
    img2img = post_files(c, {"mode": "img2img", "prompt": "a blue square", "strength": "0.5", "steps": "4"},
                         {"image": png_bytes((96, 64))})  # fmt: skip
    assert img2img.status_code == 202, img2img.text
    done = wait_for_job(c, img2img.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["width"] % 8 == 0 and abs(done["width"] / done["height"] - 1.5) < 0.1

    # inpainting: only the masked area changes
    source = png_bytes((64, 64), seed=3)
    inpaint = post_files(c, {"mode": "inpaint", "prompt": "a green star", "steps": "4"},
                         {"image": source, "mask": mask_bytes((64, 64), (16, 16, 48, 48))})  # fmt: skip
    assert inpaint.status_code == 202, inpaint.text
    done = wait_for_job(c, inpaint.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    out = np.asarray(stored_image(settings, done["id"]).convert("RGB").resize((64, 64)))
    before = np.asarray(PILImage.open(io.BytesIO(source)).convert("RGB"))
    outside = np.ones((64, 64), bool)
    outside[12:52, 12:52] = False  # keep clear of the seam
    assert np.abs(out[outside].astype(int) - before[outside]).max() <= 2
    assert np.abs(out[~outside].astype(int) - before[~outside]).mean() > 5

    # outpainting: the frame grows, the old picture stays in place
    out_job = post_files(c, {"mode": "outpaint", "prompt": "a wide field", "extend_right": "32", "steps": "4"},
                         {"image": png_bytes((64, 64), seed=4)})  # fmt: skip
    assert out_job.status_code == 202, out_job.text
    done = wait_for_job(c, out_job.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    assert (done["width"], done["height"]) == (96, 64)


def _key(settings, job: dict) -> str:
    with transaction(settings) as session:
        return session.scalar(select(Image.storage_key).where(Image.job_id == job["id"]))


@pytest.mark.parametrize(
    ("data", "files", "field", "message"),
    [
        ({"mode": "img2img", "prompt": "x"}, {}, "image", "Upload an image"),
        ({"mode": "img2img", "prompt": "x"}, {"image": b"%PDF-1.4"}, "image", "not an image we can read"),
        ({"mode": "img2img", "prompt": "x", "strength": "1.5"}, {"image": "png"}, "strength", "between 0.05 and 1"),
        ({"mode": "inpaint", "prompt": "x"}, {"image": "png"}, "mask", "Paint over the area"),
        ({"mode": "inpaint", "prompt": "x"}, {"image": "png", "mask": "square-mask"}, "mask", "same shape"),
        ({"mode": "outpaint", "prompt": "x"}, {"image": "png"}, "extend_left", "at least one side"),
        ({"mode": "upscale", "prompt": "x", "upscale": "3"}, {}, "upscale", "2× or 4×"),
        ({"mode": "variation"}, {}, "source_image", "Choose an image from your gallery"),
        ({"mode": "sketch", "prompt": "x"}, {}, "mode", "Unknown mode"),
        ({"prompt": "x --ar 21:2"}, {}, "aspect", "between 1:4 and 4:1"),
    ],
)
def test_bad_input_is_a_4xx_with_a_message_and_costs_nothing(settings, user_client, data, files, field, message):
    c = user_client
    real = {"png": png_bytes((96, 64)), "square-mask": mask_bytes((64, 64), (0, 0, 8, 8))}
    before = _balance(c)
    response = post_files(c, data, {k: real.get(v, v) if isinstance(v, str) else v for k, v in files.items()})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == field and message in body["error"], body
    assert _balance(c) == before
    with transaction(settings) as session:
        assert session.scalar(select(Job.id)) is None
    inputs = settings.storage_dir / "inputs"
    assert not inputs.exists() or not any(p.is_file() for p in inputs.rglob("*"))


def test_another_users_image_cannot_be_used_as_a_source(settings, make_client, user_client):
    """A's gallery image, by id, in B's request: 404 for every mode, as if it did not exist."""
    import uuid

    a = make_client()
    a.sign_up("owner-a@example.com")
    with transaction(settings) as session:
        from app.accounts.models import User

        owner = session.scalar(select(User).where(User.email == "owner-a@example.com"))
        job = Job(id=str(uuid.uuid4()), user_id=owner.id, client_request_id="x", model="m", prompt="mine",
                  width=64, height=64, steps=4, guidance=7, seed=1, n_images=1, price=1,
                  status="succeeded")  # fmt: skip
        session.add(job)
        session.flush()
        image = Image(id=str(uuid.uuid4()), user_id=owner.id, job_id=job.id, index=0, storage_key="k",
                      width=64, height=64, seed=1)  # fmt: skip
        session.add(image)
    b = user_client
    for mode in ("variation", "upscale", "img2img", "inpaint", "outpaint"):
        response = b.api_post("/api/v1/generations", {"mode": mode, "source_image": image.id, "prompt": "x",
                                                      "extend_left": 8})  # fmt: skip
        assert response.status_code == 404, (mode, response.text)
        assert b.get("/generate/quote", params={"mode": mode, "source_image": image.id}).status_code == 200
    assert "your image" not in b.get(f"/?mode=variation&source_image={image.id}").text


def test_a_queued_job_is_cancelled_at_once_and_its_credits_released(settings, user_client):
    c = user_client
    before = _balance(c)
    job = c.api_post("/api/v1/generations", {"prompt": "a red circle", "steps": 4}).json()
    assert _balance(c) == before - job["price"]
    cancelled = c.http.post(f"/api/v1/generations/{job['id']}/cancel", headers={"X-CSRF-Token": c.csrf})
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert _balance(c) == before
    again = c.http.post(f"/api/v1/generations/{job['id']}/cancel", headers={"X-CSRF-Token": c.csrf})
    assert again.json()["status"] == "cancelled" and _balance(c) == before  # released once


def test_a_running_job_stops_between_steps_when_cancelled(settings, tiny_model, user_client, monkeypatch):
    """The worker's own task function, in this process: the owner's Cancel is seen at
    the first step; the job ends cancelled, with no images and its credits back."""
    from app.config import get_settings
    from workers import tasks

    c = user_client
    before = _balance(c)
    job = c.api_post("/api/v1/generations", {"prompt": "a red circle", "steps": 50}).json()
    with transaction(settings) as session:
        session.get(Job, job["id"]).cancel_requested = True
    monkeypatch.setattr(tasks, "get_settings", lambda: settings)
    get_settings.cache_clear()
    tasks.generate(job["id"])
    done = c.get(f"/api/v1/generations/{job['id']}").json()
    assert done["status"] == "cancelled" and done["images"] == [] and done["step"] <= 1
    assert _balance(c) == before
