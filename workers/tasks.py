"""generate(job_id): claim the job → run the pipeline → store images → capture.

Any failure marks the job failed and releases its credits. A task delivered
twice finds the job already claimed and does nothing.
"""

from __future__ import annotations

import io
import logging

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
    """Sample ``job.n_images`` images for the job, reporting progress per step."""
    pipe = pipelines.load(settings, job.model)
    log.info("job %s: %d×%d, %d steps, %d image(s)", job.id, job.width, job.height, job.steps, job.n_images)
    return pipelines.sample(
        pipe,
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        width=job.width,
        height=job.height,
        steps=job.steps,
        guidance=job.guidance,
        seed=job.seed,
        n_images=job.n_images,
        on_step=lambda step: service.report_progress(settings, job.id, step),
    )
