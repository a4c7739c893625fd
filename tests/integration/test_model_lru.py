"""A worker serving several models keeps the pipelines it loaded within
GOUACHE_WORKER_MODEL_MEMORY_MB, dropping the least recently used first: real tiny
pipelines of two families, loaded by the worker's own code."""

from __future__ import annotations

import gc
import weakref

import diffusers
import pytest

from tests.support import make_settings
from workers import pipelines

pytestmark = pytest.mark.model  # runs models in this process (torch)


@pytest.fixture
def loads(monkeypatch):
    """Counts the weights really read from disk, per model folder."""
    counts: dict[str, int] = {}
    original = diffusers.AutoPipelineForText2Image.from_pretrained.__func__

    def counting(cls, source, *args, **kwargs):
        counts[str(source)] = counts.get(str(source), 0) + 1
        return original(cls, source, *args, **kwargs)

    monkeypatch.setattr(diffusers.AutoPipelineForText2Image, "from_pretrained", classmethod(counting))
    pipelines.unload_all()
    yield counts
    pipelines.unload_all()


def budget(tmp_path, model, mb: int):
    return make_settings(tmp_path / "data", model, worker_model_memory_mb=mb)


def test_sizes_are_the_bytes_of_parameters_and_buffers(tiny_model, tiny_sdxl_model, tmp_path, loads):
    settings = budget(tmp_path, tiny_model, 0)
    sd = pipelines.load(settings, str(tiny_model))
    expected = sum(
        t.numel() * t.element_size()
        for name in ("unet", "vae", "text_encoder")
        for t in (*getattr(sd, name).parameters(), *getattr(sd, name).buffers())
    )
    assert pipelines.pipeline_bytes(sd) == expected
    # These tests' budgets rely on each tiny pipeline being 5..15 MB and on the two together exceeding 15.
    xl = pipelines.load(settings, str(tiny_sdxl_model))
    sizes = [pipelines.pipeline_bytes(p) / 2**20 for p in (sd, xl)]
    assert all(5 < s < 15 for s in sizes) and sum(sizes) > 15, sizes


def test_a_budget_for_one_model_evicts_the_other_and_reuse_does_not_reload(
    tiny_model, tiny_sdxl_model, tmp_path, loads
):
    settings = budget(tmp_path, tiny_model, 15)
    sd_ref, xl_ref = str(tiny_model), str(tiny_sdxl_model)

    sd = pipelines.load(settings, sd_ref)
    assert pipelines.load(settings, sd_ref) is sd  # kept warm: the same pipeline, not read again
    assert loads == {sd_ref: 1}
    gone = weakref.ref(sd)
    del sd

    xl = pipelines.load(settings, xl_ref)
    assert pipelines.loaded_refs() == [xl_ref]  # SD was unloaded to make room ...
    gc.collect()
    assert gone() is None  # ... and nothing else holds its weights
    assert pipelines.load(settings, xl_ref) is xl
    assert loads == {sd_ref: 1, xl_ref: 1}

    pipelines.load(settings, sd_ref)  # back to SD: loaded again, XL goes
    assert pipelines.loaded_refs() == [sd_ref]
    assert loads == {sd_ref: 2, xl_ref: 1}


def test_the_least_recently_used_model_goes_first(tiny_model, tiny_sdxl_model, broken_model, tmp_path, loads):
    settings = budget(tmp_path, tiny_model, 20)  # room for the two SD-shaped ones (8 MB each), not three
    sd, other, xl = str(tiny_model), str(broken_model), str(tiny_sdxl_model)
    pipelines.load(settings, sd)
    pipelines.load(settings, other)
    pipelines.load(settings, sd)  # SD used again: now `other` is the least recently used
    assert pipelines.loaded_refs() == [other, sd]

    pipelines.load(settings, xl)
    assert pipelines.loaded_refs() == [sd, xl]
    assert loads == {sd: 1, other: 1, xl: 1}


def test_a_model_larger_than_the_budget_still_runs_alone(tiny_model, tiny_sdxl_model, tmp_path, loads):
    settings = budget(tmp_path, tiny_model, 1)
    pipelines.load(settings, str(tiny_model))
    xl = pipelines.load(settings, str(tiny_sdxl_model))
    assert pipelines.loaded_refs() == [str(tiny_sdxl_model)]
    [(image, _)] = pipelines.sample(xl, prompt="a star", width=64, height=64, steps=2, guidance=5.0, seed=1)
    assert image.size == (64, 64)


def test_without_a_budget_every_model_stays(tiny_model, tiny_sdxl_model, tmp_path, loads):
    settings = budget(tmp_path, tiny_model, 0)
    pipelines.load(settings, str(tiny_model))
    pipelines.load(settings, str(tiny_sdxl_model))
    assert pipelines.loaded_refs() == [str(tiny_model), str(tiny_sdxl_model)]


def test_modes_reuse_the_loaded_weights_and_leave_with_their_model(tiny_model, tiny_sdxl_model, tmp_path, loads):
    settings = budget(tmp_path, tiny_model, 15)
    sd = pipelines.load(settings, str(tiny_model))
    img2img = pipelines.derived(sd, "img2img")
    assert img2img.unet is sd.unet  # from_pipe: the same modules, no second copy
    gone = weakref.ref(img2img)
    del sd, img2img
    pipelines.load(settings, str(tiny_sdxl_model))
    gc.collect()
    assert gone() is None
