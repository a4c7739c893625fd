"""Every sampler and every image mode, on a tiny random SD pipeline loaded by the worker's code."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.enums import SAMPLERS
from tests.support import make_settings
from workers import pipelines

pytestmark = pytest.mark.model  # runs models in this process (torch)


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def pipe(request, tmp_path_factory):
    """The two families, each loaded by the worker's own code (AutoPipelineForText2Image)."""
    model = request.getfixturevalue("tiny_model" if request.param == "sd1" else "tiny_sdxl_model")
    loaded = pipelines.load(make_settings(tmp_path_factory.mktemp("data"), model), str(model))
    assert (
        type(loaded).__name__ == {"sd1": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}[request.param]
    )
    return loaded


def run(pipe, **kwargs):
    values = dict(prompt="a red circle", width=64, height=64, steps=3, guidance=5.0, seed=1)
    values.update(kwargs)
    return pipelines.sample(pipe, **values)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_runs_and_a_seed_repeats(pipe, sampler):
    [(first, seed)] = run(pipe, sampler=sampler)
    [(again, _)] = run(pipe, sampler=sampler)
    assert seed == 1 and first.size == (64, 64)
    assert first.tobytes() == again.tobytes()


def test_samplers_really_differ_and_do_not_leak_into_the_next_job(pipe):
    [(euler, _)] = run(pipe, sampler="euler")
    [(ddim, _)] = run(pipe, sampler="ddim")
    [(euler_again, _)] = run(pipe, sampler="euler")
    assert euler.tobytes() != ddim.tobytes()
    assert euler.tobytes() == euler_again.tobytes()
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"


def test_a_live_preview_is_drawn_from_the_latents(pipe):
    previews = []

    def on_step(done, total, latents):
        previews.append(pipelines.preview(pipe, latents, max_side=64))

    run(pipe, on_step=on_step)
    assert len(previews) == 3 and all(p.size == (64, 64) and p.mode == "RGB" for p in previews)
    assert len(set(previews[-1].getdata())) > 1  # a picture, not a flat fill


def test_image_to_image_runs_strength_times_steps_and_reports_them(pipe):
    source = Image.new("RGB", (64, 64), (20, 200, 20))
    seen = []
    [(out, _)] = run(
        pipe, image=source, strength=0.5, steps=8, on_step=lambda done, total, _: seen.append((done, total))
    )
    assert out.size == (64, 64)
    assert seen == [(i, 4) for i in range(1, 5)]
    # image-to-image reuses the loaded weights
    assert pipelines.derived(pipe, "img2img").unet is pipe.unet


def test_inpainting_changes_only_the_masked_area(pipe):
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    [(out, _)] = run(pipe, image=source, mask=mask, strength=1.0)
    before, after = np.asarray(source), np.asarray(out.convert("RGB"))
    outside = np.asarray(mask) == 0
    assert (before[outside] == after[outside]).all()
    assert (before[~outside] != after[~outside]).any()
