"""The committed demo model, end to end: a real worker draws what the prompt names."""

from __future__ import annotations

import io

import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from app.db import transaction
from app.gallery.models import Image
from app.generation.catalog import BUILTIN_DEMO_MODEL
from app.storage import get_storage
from tests.support import make_settings, migrated, wait_for_job
from tools.demo import judge, scenes

pytestmark = [pytest.mark.worker, pytest.mark.model]


def test_the_demo_model_paints_what_the_prompt_names(tmp_path, make_client, start_worker):
    settings = migrated(
        make_settings(
            tmp_path / "demo",
            BUILTIN_DEMO_MODEL,
            model_name="Gouache demo",
            model_default_size=256,
            model_max_size=256,
            model_default_steps=20,
        )
    )
    start_worker(settings)
    client = make_client(settings)
    client.sign_up("painter@example.com")
    prompts = [
        "a red circle in the top left on a blue background",
        "two yellow squares on a black background",
        "a white star on a green background",
    ]
    jobs = [
        client.api_post(
            "/api/v1/generations", {"prompt": p, "width": 256, "height": 256, "steps": 20, "guidance": 5, "seed": 1}
        ).json()
        for p in prompts
    ]
    storage = get_storage(settings)
    for prompt, job in zip(prompts, jobs, strict=True):
        done = wait_for_job(client, job["id"])
        assert done["status"] == "succeeded", done["error"]
        with transaction(settings) as session:
            key = session.scalar(select(Image.storage_key).where(Image.job_id == job["id"]))
        image = PILImage.open(io.BytesIO(storage.get(key)))
        # Colours and place, read off the pixels; the bench also judges the shape's class (with
        # a classifier trained on renders) over 60 held-out prompts. Counts are not asserted:
        # the judge counts connected patches, and drawn shapes may touch.
        scene = scenes.parse_caption(prompt)
        shape_colour_ok, background_ok = judge.colour_match(image, scene)
        assert background_ok, f"{prompt!r}: the background is not {scene.background}"
        assert shape_colour_ok, f"{prompt!r}: the shapes are not {scene.colour}"
        assert judge.position_match(image, scene) in (True, None), f"{prompt!r}: not in the {scene.position}"
