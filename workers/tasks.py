"""generate(job_id): claim the job → run the pipeline → store images → capture.

Any failure marks the job failed and releases its credits. A task delivered
twice finds the job already claimed and does nothing.
"""

from __future__ import annotations

import io
import logging

from celery.signals import worker_process_init

from app.config import get_settings
from app.enums import SAMPLERS
from app.gallery import thumbnails
from app.generation import images, metadata, service
from app.generation.catalog import get_catalog
from app.queue import GENERATE_TASK
from app.storage import get_storage, image_key, preview_key, thumbnail_key
from workers import pipelines
from workers.celery_app import app

log = logging.getLogger(__name__)


def served_models(settings):
    """The catalog models whose queues this worker consumes (all of them when it was
    started without ``--queues``/``--models``), in catalog order."""
    consumed = {q.name for q in app.amqp.queues.consume_from.values()} if app.amqp.queues.consume_from else None
    return [m for m in get_catalog(settings) if consumed is None or m.queue(settings.queue) in consumed]


@worker_process_init.connect
def _warm_up(**_kwargs):
    # Refund jobs orphaned by a worker that died, then load the first model this
    # worker serves now rather than on the first user's job.
    settings = get_settings()
    try:
        if reaped := service.reap_stale_jobs(settings):
            log.warning("failed and refunded %d stale job(s)", reaped)
    except Exception:
        log.exception("could not reap stale jobs")
    served = served_models(settings)
    log.info("serving models: %s", ", ".join(m.id for m in served) or "none")
    if not served:
        return
    try:
        pipelines.load(settings, served[0].source)
    except Exception:  # a broken model must not stop the worker: jobs will fail with the reason
        log.exception("could not load model %s at start", served[0].id)


class JobCancelled(Exception):
    """Raised between steps when the job's owner pressed Cancel; stops the pipeline."""


@app.task(name=GENERATE_TASK)
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
            storage.put(key, metadata.png_bytes(image, parameters(settings, job, seed)), "image/png")
            stored.append((key, index, seed, image.width, image.height, store_thumbnail(storage, job, index, image)))
        if not service.succeed(settings, job, stored):
            log.warning("job %s was failed meanwhile; discarding its images", job_id)
            for key, *_, thumb in stored:
                storage.delete(key)
                if thumb:
                    storage.delete(thumb)
    except JobCancelled:
        log.info("job %s cancelled by its owner", job_id)
        service.settle_cancelled(settings, job_id)
    except Exception as exc:
        log.exception("job %s failed", job_id)
        service.fail(settings, job_id, f"Generation failed: {type(exc).__name__}: {exc}")
    finally:
        # the live preview is only for while it runs
        try:
            get_storage(settings).delete(preview_key(job.user_id, job.id))
        except Exception:
            log.warning("could not delete the preview of job %s", job_id, exc_info=True)


def model_of(settings, job):
    """The job's catalog model (by id; rows from before the catalog name its source)."""
    model = get_catalog(settings).find(job.model)
    if model is None:
        raise LookupError(f"the model {job.model!r} is not in this worker's catalog")
    return model


def store_thumbnail(storage, job, index: int, image) -> str | None:
    """The gallery grid's small WebP, next to the PNG; its key, or None if it could not be
    made (the gallery then makes one on first view, so the job need not fail for it)."""
    key = thumbnail_key(job.user_id, job.id, index)
    try:
        storage.put(key, thumbnails.webp(image), "image/webp")
    except Exception:
        log.warning("job %s: no thumbnail for image %d", job.id, index, exc_info=True)
        return None
    return key


def run(settings, job):
    """Make the job's images, reporting progress per denoising step."""
    model = model_of(settings, job)
    pipe = pipelines.load(settings, model.source)
    log.info(
        "job %s: %s %d×%d, %d steps, %d image(s)", job.id, job.mode, job.width, job.height, job.steps, job.n_images
    )
    storage = get_storage(settings)

    def report(done: int, total: int, latents=None) -> None:
        step = round(done / total * job.steps)
        key = None
        if latents is not None and settings.preview_every and done % settings.preview_every == 0 and done < total:
            key = preview_key(job.user_id, job.id)
            buf = io.BytesIO()
            pipelines.preview(pipe, latents).save(buf, format="JPEG", quality=70)
            storage.put(key, buf.getvalue(), "image/jpeg")
        if service.report_progress(settings, job.id, step, key):
            raise JobCancelled(job.id)

    common = dict(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        steps=job.steps,
        guidance=job.guidance,
        sampler=job.sampler,
    )
    if job.mode == "txt2img":
        return pipelines.sample(
            pipe, width=job.width, height=job.height, seed=job.seed, n_images=job.n_images, on_step=report, **common
        )
    source = _open(storage.get(job.source_key))
    mask = _open(storage.get(job.mask_key)).convert("L") if job.mask_key else None
    if job.mode == "upscale":
        return [(upscale(model, pipe, source, job, report, common), job.seed)]
    return pipelines.sample(
        pipe,
        width=job.width,
        height=job.height,
        seed=job.seed,
        n_images=job.n_images,
        image=source,
        mask=mask,
        strength=job.strength,
        on_step=report,
        **common,
    )


def upscale(model, pipe, source, job, report, common):
    """Resize (Lanczos) to the job's size, then repaint detail with a low-strength
    image-to-image pass, in overlapping tiles no larger than the model's maximum,
    blended where they overlap."""
    from PIL import Image

    big = source.convert("RGB").resize((job.width, job.height), Image.Resampling.LANCZOS)
    boxes = images.tile_grid(job.width, job.height, model.max_size, service.UPSCALE_OVERLAP)
    out = big.copy()
    for i, box in enumerate(boxes):
        tile = big.crop(box)
        [(painted, _)] = pipelines.sample(
            pipe,
            width=tile.width,
            height=tile.height,
            seed=job.seed + i,
            image=tile,
            strength=job.strength,
            on_step=lambda done, total, latents, i=i: report(i * total + done, total * len(boxes), latents),
            **common,
        )
        weight = images.feather_mask(tile.size, box, big.size, service.UPSCALE_OVERLAP // 2 if len(boxes) > 1 else 0)
        out.paste(painted.resize(tile.size), box[:2], weight)
    return out


def _open(data: bytes):
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def parameters(settings, job, seed: int) -> metadata.Parameters:
    """What the PNG records about how it was made (AUTOMATIC1111's fields)."""
    model = get_catalog(settings).find(job.model)
    return metadata.Parameters(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        steps=job.steps,
        sampler=SAMPLERS.get(job.sampler, job.sampler),
        guidance=job.guidance,
        seed=seed,
        width=job.width,
        height=job.height,
        model=model.name if model else job.model,
        extra=(
            *((("Denoising strength", f"{job.strength:g}"), ("Mode", job.mode)) if job.strength is not None else ()),
            ("Licence", job.licence or "unspecified"),
            *((("Licence URL", job.licence_url),) if job.licence_url else ()),
            ("Gouache job", job.id),
        ),
    )
