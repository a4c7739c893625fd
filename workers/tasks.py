"""generate(job_id): claim the job → run the pipeline → store images → capture.

Any failure marks the job failed and releases its credits. A task delivered
twice finds the job already claimed and does nothing.
"""

from __future__ import annotations

import io
import logging

import torch
from celery.signals import worker_process_init

from app.config import get_settings
from app.generation import service
from app.storage import get_storage, image_key
from workers import pipelines
from workers.celery_app import app

log = logging.getLogger(__name__)


@worker_process_init.connect
def _warm_up(**_kwargs):
    # Refund jobs orphaned by a worker that died, then load the model now rather
    # than on the first user's job.
    settings = get_settings()
    try:
        if reaped := service.reap_stale_jobs(settings):
            log.warning("failed and refunded %d stale job(s)", reaped)
    except Exception:
        log.exception("could not reap stale jobs")
    try:
        pipelines.load(settings, settings.model)
    except Exception:  # a broken model must not stop the worker: jobs will fail with the reason
        log.exception("could not load model %s at start", settings.model)


@app.task(name="gouache.generate")
def generate(job_id: str) -> None:
    settings = get_settings()
    job = service.claim(settings, job_id)
    if job is None:
        log.info("job %s already claimed; skipping duplicate delivery", job_id)
        return
    try:
        images = run(settings, job)
        storage = get_storage(settings)
        stored = []
        for index, (image, seed) in enumerate(images):
            key = image_key(job.user_id, job.id, index)
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            storage.put(key, buf.getvalue(), "image/png")
            stored.append((key, index, seed, image.width, image.height))
        if not service.succeed(settings, job, stored):
            log.warning("job %s was failed meanwhile; discarding its images", job_id)
            for key, *_ in stored:
                storage.delete(key)
    except Exception as exc:
        log.exception("job %s failed", job_id)
        service.fail(settings, job_id, f"Generation failed: {type(exc).__name__}: {exc}")


def run(settings, job):
    """Sample ``job.n_images`` images; image i uses seed ``job.seed + i``."""
    pipe = pipelines.load(settings, job.model)
    device = pipe.device.type if hasattr(pipe, "device") else "cpu"
    seeds = [(job.seed + i) % 2**32 for i in range(job.n_images)]
    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]

    def on_step_end(_pipe, step, _timestep, callback_kwargs):
        service.report_progress(settings, job.id, step + 1)
        return callback_kwargs

    log.info(
        "job %s: %d×%d, %d steps, %d image(s) on %s", job.id, job.width, job.height, job.steps, job.n_images, device
    )
    result = pipe(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt or None,
        width=job.width,
        height=job.height,
        num_inference_steps=job.steps,
        guidance_scale=job.guidance,
        num_images_per_prompt=job.n_images,
        generator=generators,
        callback_on_step_end=on_step_end,
    )
    return list(zip(result.images, seeds, strict=True))
