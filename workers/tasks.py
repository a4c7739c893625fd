"""generate(job_id): claim the job → run the pipeline → store images → capture.

Any failure marks the job failed and releases its credits. A task delivered twice finds
the job held by a live attempt (or over) and does nothing. While it runs, one writer
thread (``workers/lease.py``) renews the attempt's lease and records its progress; every
write names the attempt, so a worker that lost its lease changes nothing.
"""

from __future__ import annotations

import functools
import io
import logging
import time
from dataclasses import dataclass
from typing import Any

from celery.signals import worker_process_init
from PIL import Image

from app.config import Settings, get_settings
from app.enums import SAMPLERS, JobStatus, Mode
from app.gallery import thumbnails
from app.generation import metadata, quote, service
from app.generation.catalog import ModelSpec, get_catalog
from app.generation.models import Job
from app.queue import GENERATE_TASK
from app.storage import Storage, get_storage, image_key, preview_key, thumbnail_key
from workers import pipelines
from workers.celery_app import app
from workers.lease import AttemptWriter, JobCancelled, JobLost

__all__ = ["JobCancelled", "JobLost", "generate"]

log = logging.getLogger(__name__)

Made = list[tuple[Image.Image, int]]  # the images a job made, each with its seed


def served_models(settings: Settings) -> list[ModelSpec]:
    """The catalog models whose queues this worker consumes (all of them when it was
    started without ``--queues``/``--models``), in catalog order."""
    consumed = {q.name for q in app.amqp.queues.consume_from.values()} if app.amqp.queues.consume_from else None
    return [m for m in get_catalog(settings) if consumed is None or m.queue(settings.queue) in consumed]


@worker_process_init.connect
def _warm_up(**_kwargs: Any) -> None:
    # Load the first model this worker serves now rather than on the first user's job.
    # (Jobs orphaned by a worker that died are the janitor's.)
    settings = get_settings()
    served = served_models(settings)
    log.info("serving models: %s", ", ".join(m.id for m in served) or "none")
    if not served:
        return
    try:
        pipe = pipelines.load(settings, served[0].source)
        if settings.compile:
            warm_compiled(settings, served[0], pipe)
    except Exception:  # a broken model must not stop the worker: jobs will fail with the reason
        log.exception("could not load model %s at start", served[0].id)


def warm_compiled(settings: Settings, model: ModelSpec, pipe: pipelines.Pipeline) -> None:
    """Compile the UNet (``GOUACHE_COMPILE``) now, before the worker reports ready: a short
    run at the model's default size for one image and for a full batch, the shapes most
    jobs have (another shape compiles on its first job)."""
    started = time.monotonic()
    for n_images in dict.fromkeys((1, settings.batch_max_images)):
        pipelines.sample(
            pipe,
            prompt="warm-up",
            width=model.default_size,
            height=model.default_size,
            steps=2,
            guidance=model.default_guidance,
            seed=0,
            n_images=n_images,
        )
    log.info("compiled %s for %d² in %.0f s", model.id, model.default_size, time.monotonic() - started)


@app.task(name=GENERATE_TASK)
def generate(job_id: str) -> None:
    """Claim the job and run it, with the compatible queued jobs :func:`gather` claims to
    share its pipeline call (batching); each job is settled on its own."""
    settings = get_settings()
    job = service.claim(settings, job_id)
    if job is None:
        log.info("job %s is held by another attempt or over; skipping this delivery", job_id)
        return
    if job.attempts > 1:
        log.warning("job %s: attempt %d (an earlier one lost its worker)", job_id, job.attempts)
    storage = get_storage(settings)
    lead = Slot(job, AttemptWriter(settings, job, storage).start())
    try:
        batch = [lead, *gather(settings, job, storage)] if batchable(settings, job) else [lead]
    except Exception as exc:  # the model would not load, or it was cancelled meanwhile
        settle(settings, storage, lead, exc)
        return
    if len(batch) == 1:
        try:
            made = run(settings, job, lead.writer)
        except Exception as exc:
            settle(settings, storage, lead, exc)
            return
        settle(settings, storage, lead, made)
        return
    run_batch(settings, storage, batch)


@dataclass
class Slot:
    """One job's attempt in a run: its writer (lease, progress, preview, cancel), where
    its images start in a batch, and whether it is settled already."""

    job: Job
    writer: AttemptWriter
    offset: int = 0
    settled: bool = False


def settle(settings: Settings, storage: Storage, slot: Slot, outcome: Made | BaseException) -> None:
    """End the attempt: record its images and capture its charge, or settle what stopped
    it (cancelled: released; failed: released with the reason; lost: the janitor's), then
    stop its writer and remove its live preview. Only this job's rows and credits."""
    job, writer = slot.job, slot.writer
    slot.settled = True
    lost = False
    try:
        if isinstance(outcome, BaseException):
            raise outcome
        record(settings, job, outcome, writer)
    except JobCancelled:
        log.info("job %s cancelled by its owner", job.id)
        service.settle_cancelled(settings, job.id, job.attempts)
    except JobLost:
        lost = True
        log.warning("job %s: attempt %d lost its lease; stopping (the janitor gave the job on)", job.id, job.attempts)
    except StorageFailed as exc:
        log.error("job %s: %s", job.id, exc.__cause__ or exc)
        service.fail(settings, job.id, str(exc), job.attempts)
    except Exception as exc:
        log.error("job %s failed", job.id, exc_info=exc)
        service.fail(settings, job.id, f"Generation failed: {type(exc).__name__}: {exc}", job.attempts)
    finally:
        writer.stop()
        # the live preview is only for while it runs (a lost attempt's is the next one's,
        # unless the job is gone with its deleted account)
        if not lost or service.status_of(settings, job.id) in (*service.FINISHED, None):
            try:
                storage.delete(preview_key(job.user_id, job.id))
            except Exception:
                log.warning("could not delete the preview of job %s", job.id, exc_info=True)


# ---- batching: compatible jobs in one pipeline call ------------------------------------

GATHER_POLL_S = 0.01  # how often the window looks for more compatible jobs


def batchable(settings: Settings, job: Job) -> bool:
    """Whether the job may share its pipeline call: text-to-image, with room for more."""
    return job.mode == Mode.TXT2IMG and settings.batch_max_images > job.n_images


def gather(settings: Settings, job: Job, storage: Storage) -> list[Slot]:
    """Load the job's model, then claim queued jobs compatible with it (see
    :func:`service.claim_compatible`), up to ``GOUACHE_BATCH_MAX_IMAGES`` images with the
    job's own, looking for at most ``GOUACHE_BATCH_WINDOW_MS`` (a lone job waits no
    longer; a full batch does not wait). Each claimed job gets its own attempt and writer
    (its own broker message, arriving later, finds it taken and is skipped)."""
    pipelines.load(settings, model_of(settings, job).source)  # jobs queue up while it loads
    room = settings.batch_max_images - job.n_images
    deadline = time.monotonic() + settings.batch_window_ms / 1000
    found: list[Slot] = []
    while room > 0:
        for other in service.claim_compatible(settings, job, room):
            found.append(Slot(other, AttemptWriter(settings, other, storage).start()))
            room -= other.n_images
        left = deadline - time.monotonic()
        if room <= 0 or left <= 0:
            break
        time.sleep(min(GATHER_POLL_S, left))
    if found:
        log.info("job %s: batched with %s", job.id, ", ".join(s.job.id for s in found))
    return found


class _EveryJobStopped(Exception):
    """Stops a batched call whose jobs were all cancelled or lost."""


def run_batch(settings: Settings, storage: Storage, batch: list[Slot]) -> None:
    """One pipeline call for the batch's jobs (text-to-image, same size, steps, guidance,
    sampler), then each job settled on its own.

    A job cancelled (or whose lease is lost) while the call runs is settled at once (its
    credits released, its preview removed) and its images, when the call ends, are
    discarded; the others' slices run on (dropping a slice from a running batch would
    change the scheduler's and the generators' state for the rest). Only when every job
    stopped does the call stop. A failing call fails each job still running, each
    releasing its own hold."""
    lead = batch[0].job
    offset = 0
    for slot in batch:
        slot.offset, offset = offset, offset + slot.job.n_images
    try:
        model = model_of(settings, lead)
        pipe = pipelines.load(settings, model.source)
        reporters = [progress_reporter(settings, slot.job, pipe, slot.writer, slot.offset) for slot in batch]

        def on_step(done: int, total: int, latents: Any = None) -> None:
            for slot, report in zip(batch, reporters, strict=True):
                if slot.settled:
                    continue
                try:
                    report(done, total, latents)
                except (JobCancelled, JobLost) as exc:
                    settle(settings, storage, slot, exc)  # at once: its credits go back now
            if all(slot.settled for slot in batch):
                raise _EveryJobStopped

        for slot in batch:  # cancelled (or lost) while the batch was gathered
            try:
                slot.writer.check()
            except (JobCancelled, JobLost) as exc:
                settle(settings, storage, slot, exc)
        live = [slot for slot in batch if not slot.settled]
        if not live:
            return
        log.info(
            "batch of %d jobs (%d images): %s %d×%d, %d steps",
            len(batch),
            offset,
            lead.mode,
            lead.width,
            lead.height,
            lead.steps,
        )
        made = pipelines.sample_batch(
            pipe,
            [pipelines.Request(s.job.prompt, s.job.negative_prompt, s.job.seed, s.job.n_images) for s in batch],
            width=lead.width,
            height=lead.height,
            steps=lead.steps,
            guidance=lead.guidance,
            sampler=lead.sampler,
            on_step=on_step,
        )
    except _EveryJobStopped:
        return
    except Exception as exc:
        log.exception("batch of jobs %s failed", ", ".join(s.job.id for s in batch))
        for slot in batch:
            if not slot.settled:
                settle(settings, storage, slot, exc)
        return
    for slot, images in zip(batch, made, strict=True):
        if not slot.settled:  # a cancelled job's images are discarded with it
            settle(settings, storage, slot, images)


class StorageFailed(Exception):
    """The object store refused or did not answer while the images were being stored.
    Its message is what the job's owner reads."""


def record(settings: Settings, job: Job, made: Made, writer: AttemptWriter | None = None) -> None:
    """Store the images (PNG with their parameters, and a thumbnail), then record them
    and capture the charge, if this attempt still holds the job. Nothing is listed before
    every image is stored; if the store fails part way, what was stored is removed again
    and :class:`StorageFailed` is raised (the job fails and its hold is released)."""
    storage = get_storage(settings)
    stored: list[service.StoredImage] = []
    for index, (image, seed) in enumerate(made):
        if writer is not None:
            writer.check()  # lost meanwhile: another attempt writes these keys
        key = image_key(job.user_id, job.id, index)
        png = metadata.png_bytes(image, parameters(settings, job, seed))
        try:
            storage.put(key, png, "image/png")
        except Exception as exc:
            if writer is None or writer.held:  # these keys are still this attempt's own
                _remove(storage, job, [*stored, service.StoredImage(key, None, index, seed, 0, 0)])
            raise StorageFailed(
                "The images were made but could not be saved (the image store did not answer). "
                "Nothing was charged; please try again."
            ) from exc
        thumb_key = store_thumbnail(storage, job, index, image)
        stored.append(service.StoredImage(key, thumb_key, index, seed, image.width, image.height))
    if service.succeed(settings, job, stored):
        return
    status = service.status_of(settings, job.id)
    if status is not None and status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        # Requeued, or another attempt runs or ran it: the same keys are (or will be) that
        # attempt's images, so they stay.
        log.warning("job %s: attempt %d lost the job before recording; keeping the images", job.id, job.attempts)
        return
    # failed, cancelled, or gone with its deleted account: nobody will record these
    log.warning("job %s was %s meanwhile; discarding its images", job.id, status or "deleted")
    _remove(storage, job, stored)


def _remove(storage: Storage, job: Job, stored: list[service.StoredImage]) -> None:
    """Delete images this attempt stored but will not list (best effort: the store may be
    the thing that failed)."""
    for image_ in stored:
        for key in (image_.key, image_.thumb_key):
            if key:
                try:
                    storage.delete(key)
                except Exception:
                    log.warning("job %s: could not remove %s", job.id, key, exc_info=True)


def model_of(settings: Settings, job: Job) -> ModelSpec:
    """The job's catalog model (by id; rows from before the catalog name its source)."""
    model = get_catalog(settings).find(job.model)
    if model is None:
        raise LookupError(f"the model {job.model!r} is not in this worker's catalog")
    return model


def store_thumbnail(storage: Storage, job: Job, index: int, image: Image.Image) -> str | None:
    """The gallery grid's small WebP, next to the PNG; its key, or None if it could not be
    made (the gallery then makes one on first view, so the job need not fail for it)."""
    key = thumbnail_key(job.user_id, job.id, index)
    try:
        storage.put(key, thumbnails.webp(image), "image/webp")
    except Exception:
        log.warning("job %s: no thumbnail for image %d", job.id, index, exc_info=True)
        return None
    return key


def run(settings: Settings, job: Job, writer: AttemptWriter | None = None) -> Made:
    """Make the job's images, handing each denoising step to the attempt's writer (without
    one, as when a test runs the pipeline alone, an unstarted writer that records nothing)."""
    storage = get_storage(settings)
    writer = writer or AttemptWriter(settings, job, storage)
    model = model_of(settings, job)
    pipe = pipelines.load(settings, model.source)
    writer.check()  # cancelled (or lost) while the model loaded
    log.info(
        "job %s: %s %d×%d, %d steps, %d image(s)", job.id, job.mode, job.width, job.height, job.steps, job.n_images
    )
    report = progress_reporter(settings, job, pipe, writer)
    common: dict[str, Any] = dict(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        steps=job.steps,
        guidance=job.guidance,
        seed=job.seed,
        sampler=job.sampler,
        on_step=report,
    )
    if job.mode == Mode.TXT2IMG:
        return pipelines.sample(pipe, width=job.width, height=job.height, n_images=job.n_images, **common)
    if job.source_key is None:
        raise ValueError(f"the {job.mode} job has no source image")
    source = _open(storage.get(job.source_key))
    if job.mode == Mode.UPSCALE:
        return [(upscale(model, pipe, source, job, common), job.seed)]
    mask = _open(storage.get(job.mask_key)).convert("L") if job.mask_key else None
    return pipelines.sample(
        pipe,
        width=job.width,
        height=job.height,
        n_images=job.n_images,
        image=source,
        mask=mask,
        strength=job.strength,
        **common,
    )


def progress_reporter(
    settings: Settings, job: Job, pipe: pipelines.Pipeline, writer: AttemptWriter, offset: int = 0
) -> pipelines.StepCallback:
    """The pipeline's ``on_step``: hands the step (and now and then the latents of the
    job's first image, the batch's image ``offset``, copied, for a live preview the writer
    renders) to the writer without waiting, and stops the run if the writer last read a
    Cancel or a lost lease. Nothing here waits for the device: the copy is only made when
    a preview is due, and on CUDA it is asynchronous (the writer's thread waits for it)."""

    def report(done: int, total: int, latents: Any = None) -> None:
        step = round(done / total * job.steps)
        preview = None
        if latents is not None and settings.preview_every and done % settings.preview_every == 0 and done < total:
            # a copy: the next step changes latents in place
            preview = functools.partial(preview_jpeg, pipe, pipelines.snapshot(latents[offset : offset + 1]))
        writer.step(step, preview)
        writer.check()

    return report


def preview_jpeg(pipe: pipelines.Pipeline, latents: pipelines.Latents) -> bytes:
    """The live preview of the first image's latents, a small JPEG (on the writer's thread)."""
    buf = io.BytesIO()
    pipelines.preview(pipe, latents).save(buf, format="JPEG", quality=70)
    return buf.getvalue()


def upscale(
    model: ModelSpec, pipe: pipelines.Pipeline, source: Image.Image, job: Job, common: dict[str, Any]
) -> Image.Image:
    """The job's upscale, run in exactly the tiles its price was worked out for."""
    return pipelines.upscale(
        pipe,
        source,
        size=(job.width, job.height),
        boxes=quote.tiles(model, job.mode, job.width, job.height),
        overlap=quote.UPSCALE_OVERLAP,
        strength=job.strength,
        **common,
    )


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def parameters(settings: Settings, job: Job, seed: int) -> metadata.Parameters:
    """What the PNG records about how it was made (AUTOMATIC1111's fields)."""
    return metadata.Parameters(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        steps=job.steps,
        sampler=SAMPLERS.get(job.sampler, job.sampler),
        guidance=job.guidance,
        seed=seed,
        width=job.width,
        height=job.height,
        model=get_catalog(settings).display_name(job.model),
        extra=(
            *((("Denoising strength", f"{job.strength:g}"), ("Mode", job.mode)) if job.strength is not None else ()),
            ("Licence", job.licence or "unspecified"),
            *((("Licence URL", job.licence_url),) if job.licence_url else ()),
            ("Gouache job", job.id),
        ),
    )
