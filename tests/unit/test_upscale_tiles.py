"""An upscale larger than the model's maximum is charged per tile, and the worker runs
exactly the tiles it was charged for: price and work come from one ``quote.tiles``."""

from __future__ import annotations

from PIL import Image

from app.credits import pricing
from app.generation import images, quote
from app.generation.catalog import get_catalog
from app.generation.models import Job
from app.generation.schemas import QuoteRequest
from app.storage import get_storage, input_key


def test_the_worker_runs_the_very_tiles_an_upscale_was_priced_for(settings, monkeypatch):
    from workers import pipelines, tasks

    model = get_catalog(settings).default
    req = QuoteRequest(
        model=model.id, mode="upscale", width=480, height=320, steps=20, n_images=1, strength=0.3, upscale=2
    )
    priced = quote.tiles(model, req.mode, req.width, req.height)
    sizes = [(right - left, bottom - top) for left, top, right, bottom in priced]
    assert len(priced) > 1 and max(max(size) for size in sizes) <= model.max_size
    per_tile = pricing.price(
        settings, width=256, height=256, steps=6, n_images=1, multiplier=model.price_multiplier
    )  # a 256×256 tile, 20 steps × 0.3 strength
    assert quote.quote(settings, req) == len(priced) * per_tile

    source_key = input_key(1, "job-1", "source")
    get_storage(settings).put(source_key, images.png(Image.new("RGB", (240, 160), "teal")), "image/png")
    job = Job(id="job-1", user_id=1, mode="upscale", model=model.id, prompt="a harbour", negative_prompt="",
              width=req.width, height=req.height, steps=req.steps, guidance=7.0, seed=5, n_images=1,
              sampler="euler", strength=req.strength, source_key=source_key)  # fmt: skip

    run_boxes: list[images.Box] = []
    painted: list[tuple[tuple[int, int], int]] = []
    real_upscale = pipelines.upscale

    def upscale_spy(pipe, source, *, boxes, **kwargs):
        run_boxes.extend(boxes)
        return real_upscale(pipe, source, boxes=boxes, **kwargs)

    def sample(pipe, *, image, seed, **kwargs):  # the model: hands the tile back unchanged
        painted.append((image.size, seed))
        return [(image, seed)]

    monkeypatch.setattr(pipelines, "load", lambda settings, source: object())
    monkeypatch.setattr(pipelines, "upscale", upscale_spy)
    monkeypatch.setattr(pipelines, "sample", sample)

    [(out, seed)] = tasks.run(settings, job)

    assert run_boxes == priced
    assert painted == [(size, job.seed + i) for i, size in enumerate(sizes)]  # tile i, seed + i
    assert out.size == (req.width, req.height) and seed == job.seed
