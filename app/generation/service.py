"""Submitting jobs (web side) and recording their progress and outcome (worker side).

What a request costs is :mod:`app.generation.quote`; the Pillow work on its images is
:mod:`app.generation.images`.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, Update, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.credits import ledger
from app.db import reading, transaction, utcnow
from app.enums import MODES, JobStatus, Mode
from app.errors import NotFound, ServiceUnavailable, UserError
from app.gallery import service as gallery
from app.gallery.models import Image
from app.generation import images, quote
from app.generation.catalog import get_catalog
from app.generation.models import Job
from app.generation.schemas import MAX_SEED, GenerationRequest
from app.queue import send_generate
from app.storage import ObjectNotFound, Storage, get_storage, input_key

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage


@dataclass(frozen=True)
class Inputs:
    """An image-mode job's source and mask as PNGs, shaped for the model."""

    source_png: bytes | None = None
    mask_png: bytes | None = None


@dataclass(frozen=True)
class StoredImage:
    """An image the worker made and stored, as :func:`succeed` records it."""

    key: str
    thumb_key: str | None  # None: the thumbnail could not be made; the gallery makes one later
    index: int
    seed: int
    width: int
    height: int


@dataclass(frozen=True)
class SourceImage:
    """A gallery image the form starts from, as the form shows it."""

    id: str
    width: int
    height: int
    prompt: str


# ---- web side: submitting a job -------------------------------------------------


def submit(
    settings: Settings,
    user_id: int,
    req: GenerationRequest,
    client_request_id: str,
    uploads: dict[str, bytes] | None = None,
) -> Job:
    """Price the request, hold the credits, create the job and enqueue it.

    The same ``client_request_id`` (a double click, a retried API call) returns
    the first job instead of creating and charging a second one.
    """
    client_request_id = (client_request_id or "").strip()[:64] or uuid.uuid4().hex
    existing = _job_by_request(settings, user_id, client_request_id)
    if existing is not None:
        return existing
    req, inputs = prepare_inputs(settings, user_id, req, uploads or {})
    job = _new_job(settings, user_id, req, client_request_id)
    created = _create_and_hold(settings, job, inputs, _memo(req))
    if created is job:
        enqueue(settings, job)
    return created


def prepare_inputs(
    settings: Settings, user_id: int, req: GenerationRequest, uploads: dict[str, bytes]
) -> tuple[GenerationRequest, Inputs]:
    """Check and shape an image-mode request's inputs before anything is charged: the
    request with its output size (and its source's prompt where it has none), and the
    source and mask the model gets."""
    if req.mode == Mode.TXT2IMG:
        return req, Inputs()
    source, prompt, negative = _source(settings, user_id, req, uploads)
    if not prompt:
        raise UserError("Describe the image you want in the prompt.", field="prompt")
    width, height = quote.output_size(settings, req, source.size)
    model = get_catalog(settings).get(req.model)
    mask = _upload(settings, uploads, "mask", "the mask") if req.mode == Mode.INPAINT else None
    canvas, mask = images.model_inputs(
        req.mode,
        source,
        size=(width, height),
        work_size=quote.work_size(model, source.size),
        extend=req.extend,
        multiple=model.size_multiple,
        mask=mask,
    )
    shaped = replace(req, width=width, height=height, prompt=prompt, negative_prompt=negative)
    return shaped, Inputs(images.png(canvas), images.png(mask) if mask is not None else None)


def _source(
    settings: Settings, user_id: int, req: GenerationRequest, uploads: dict[str, bytes]
) -> tuple[PILImage, str, str]:
    """The source image (the user's gallery image, or the upload), and the prompts to use:
    the request's, else the gallery image's own."""
    prompt, negative = req.prompt, req.negative_prompt
    if req.source_image_id:
        with transaction(settings) as session:
            row = gallery.get_image(session, user_id, req.source_image_id)
            key, source_prompt, source_negative = row.storage_key, row.job.prompt, row.job.negative_prompt
        own = images.UploadLimits(max_bytes=2**31, max_pixels=4 * settings.max_upscale_side**2)  # ours: trusted
        source = images.open_upload(get_storage(settings).get(key), field="source_image", label="the image", limits=own)
        if not prompt:
            prompt, negative = source_prompt, negative or source_negative
        return source, prompt, negative
    upload = _upload(settings, uploads, "image", "the image")
    if upload is None:
        raise UserError("Upload an image, or choose one from your gallery.", field="image")
    return upload, prompt, negative


def _upload(settings: Settings, uploads: dict[str, bytes], field: str, label: str) -> PILImage | None:
    if not uploads.get(field):
        return None
    limits = images.UploadLimits(settings.max_upload_bytes, settings.max_upload_pixels)
    return images.open_upload(uploads[field], field=field, label=label, limits=limits)


def _new_job(settings: Settings, user_id: int, req: GenerationRequest, client_request_id: str) -> Job:
    """The job row for a checked, shaped request, priced; not yet saved."""
    model = get_catalog(settings).get(req.model)
    return Job(
        id=str(uuid.uuid4()),
        user_id=user_id,
        client_request_id=client_request_id,
        mode=req.mode,
        strength=req.strength,
        source_image_id=req.source_image_id,
        status=JobStatus.QUEUED,
        model=model.id,
        licence=model.licence.name,
        licence_url=model.licence.url,
        licence_commercial=model.licence.commercial_use,
        prompt=req.prompt,
        negative_prompt=req.negative_prompt,
        width=req.width,
        height=req.height,
        steps=req.steps,
        guidance=req.guidance,
        seed=req.seed if req.seed is not None else secrets.randbelow(MAX_SEED + 1),
        n_images=req.n_images,
        sampler=req.sampler,
        price=quote.quote(settings, req),
    )


def _create_and_hold(settings: Settings, job: Job, inputs: Inputs, memo: str) -> Job:
    """Store the job's inputs, then save it and hold its price in one transaction. A
    concurrent double submit (the same request id) gets the job that won instead; a job
    not created (no credits ...) leaves no inputs behind."""
    storage = get_storage(settings)
    # stored before the charge; removed again if the job is not created
    job.source_key = _store_input(storage, job, "source", inputs.source_png)
    job.mask_key = _store_input(storage, job, "mask", inputs.mask_png)
    try:
        with transaction(settings) as session:
            session.add(job)
            session.flush()
            ledger.hold(session, job.user_id, job.price, job_id=job.id, memo=memo)
    except Exception as exc:
        for key in (job.source_key, job.mask_key):
            if key:
                storage.delete(key)
        if not isinstance(exc, IntegrityError):
            raise
        existing = _job_by_request(settings, job.user_id, job.client_request_id)
        if existing is None:
            raise
        return existing
    return job


def _store_input(storage: Storage, job: Job, name: str, png: bytes | None) -> str | None:
    if png is None:
        return None
    key = input_key(job.user_id, job.id, name)
    storage.put(key, png, "image/png")
    return key


def _memo(req: GenerationRequest) -> str:
    what = f"{req.n_images} image(s), {req.width}×{req.height}, {req.steps} steps"
    if req.mode == Mode.TXT2IMG:
        return what
    return f"{MODES[req.mode]}: {what} at strength {req.strength:g}"


def _job_by_request(settings: Settings, user_id: int, client_request_id: str) -> Job | None:
    with transaction(settings) as session:
        return session.scalar(select(Job).where(Job.user_id == user_id, Job.client_request_id == client_request_id))


def enqueue(settings: Settings, job: Job) -> None:
    """Send the job to its model's queue, which only workers serving that model consume."""
    queue = get_catalog(settings).get(job.model).queue(settings.queue)
    try:
        send_generate(settings, job.id, queue)
    except Exception as exc:  # the broker is down: the user must not pay for a job that never runs
        fail(settings, job.id, "The job could not be queued; no credits were charged. Please try again.")
        raise ServiceUnavailable(
            "The generation queue is unavailable right now; nothing was charged. Please try again."
        ) from exc


def recent_jobs(settings: Settings, user_id: int, limit: int) -> list[tuple[Job, list[Image]]]:
    """The user's latest jobs, newest first, each with its images."""
    with reading(settings) as session:
        jobs = session.scalars(
            select(Job).where(Job.user_id == user_id).order_by(Job.created_at.desc()).limit(limit)
        ).all()
        return [(job, job_images(session, job)) for job in jobs]


def source_image(settings: Settings, user_id: int, image_id: str) -> SourceImage | None:
    """The user's gallery image the form starts from; None if it is not theirs (or gone)."""
    with reading(settings) as session:
        try:
            row = gallery.get_image(session, user_id, image_id)
        except NotFound:
            return None
        return SourceImage(row.id, row.width, row.height, row.job.prompt)


def get_job(settings: Settings, user_id: int, job_id: str) -> tuple[Job, list[Image]]:
    """The user's own job and its images, or NotFound (never another user's).

    A job whose worker died is failed (and refunded) here, when its owner looks.
    """
    with reading(settings) as session:
        job = session.get(Job, job_id)
        if job is None or job.user_id != user_id:
            raise NotFound("No such job.")
        stale = _is_stale(settings, job)
    if stale:
        fail(settings, job_id, stale)
    with reading(settings) as session:
        job = session.get_one(Job, job_id)
        return job, job_images(session, job)


def job_preview(settings: Settings, user_id: int, job_id: str) -> bytes:
    """The running job's latest live preview (a JPEG), or NotFound."""
    job, _ = get_job(settings, user_id, job_id)
    if not job.preview_key or job.done:
        raise NotFound("No preview yet.")
    try:
        return get_storage(settings).get(job.preview_key)
    except ObjectNotFound:
        raise NotFound("No preview yet.") from None


STALE_RUNNING = "The worker stopped responding; no credits were charged. Please try again."
STALE_QUEUED = "No worker picked this job up in time; no credits were charged. Please try again later."


def _is_stale(settings: Settings, job: Job) -> str | None:
    now = utcnow()
    if job.status == JobStatus.RUNNING and (job.heartbeat_at or job.created_at) < now - timedelta(
        seconds=settings.job_stale_after_s
    ):
        return STALE_RUNNING
    if job.status == JobStatus.QUEUED and job.created_at < now - timedelta(seconds=settings.job_queue_timeout_s):
        return STALE_QUEUED
    return None


def reap_stale_jobs(settings: Settings) -> int:
    """Fail and refund every job whose worker died or that no worker took; returns how many."""
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.job_stale_after_s)
    queued_before = now - timedelta(seconds=settings.job_queue_timeout_s)
    with transaction(settings) as session:
        ids = session.scalars(
            select(Job.id).where(
                or_(
                    (Job.status == JobStatus.RUNNING) & (Job.heartbeat_at < stale_before),
                    (Job.status == JobStatus.QUEUED) & (Job.created_at < queued_before),
                )
            )
        ).all()
    for job_id in ids:
        with transaction(settings) as session:
            job = session.get(Job, job_id)
            reason = _is_stale(settings, job) if job is not None else None
        if reason:
            fail(settings, job_id, reason)
    return len(ids)


def job_images(session: Session, job: Job) -> list[Image]:
    """The job's images, in the order it made them."""
    return list(session.scalars(select(Image).where(Image.job_id == job.id).order_by(Image.index)))


# ---- worker side ---------------------------------------------------------------


def claim(settings: Settings, job_id: str) -> Job | None:
    """queued → running, exactly once; None if another delivery already took it."""
    with transaction(settings) as session:
        taken = _updated(
            session,
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.RUNNING, started_at=utcnow(), heartbeat_at=utcnow()),
        )
        return session.get(Job, job_id) if taken else None


def report_progress(settings: Settings, job_id: str, step: int, preview_key: str | None = None) -> bool:
    """Record progress (and the latest preview); True if the owner asked to cancel."""
    values: dict[str, Any] = {"progress_step": step, "heartbeat_at": utcnow()}
    if preview_key:
        values["preview_key"] = preview_key
    with transaction(settings) as session:
        session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING).values(**values))
        return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def request_cancel(settings: Settings, user_id: int, job_id: str) -> Job:
    """The owner's Cancel. A queued job is cancelled at once and its credits released;
    a running one is flagged, and its worker stops at the next step and settles it."""
    with transaction(settings) as session:
        job = session.get(Job, job_id)
        if job is None or job.user_id != user_id:
            raise NotFound("No such job.")
        if job.done:
            return job
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
        queued = job.status == JobStatus.QUEUED
    if queued:
        settle_cancelled(settings, job_id)
    with transaction(settings) as session:
        return session.get_one(Job, job_id)


def settle_cancelled(settings: Settings, job_id: str) -> bool:
    """queued/running → cancelled, releasing the hold: a cancelled job produced no images."""
    with transaction(settings) as session:
        done = _updated(
            session,
            update(Job)
            .where(Job.id == job_id, Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
            .values(status=JobStatus.CANCELLED, error="Cancelled.", finished_at=utcnow()),
        )
        if done:
            job = session.get_one(Job, job_id)
            ledger.release(session, job.user_id, job.price, job_id=job.id, memo="Released: cancelled")
        return bool(done)


def succeed(settings: Settings, job: Job, stored: list[StoredImage]) -> bool:
    """Record the stored images and capture the charge.

    Returns False (and records nothing) if the job is no longer running: it was
    failed as stale meanwhile and its credits already went back.
    """
    with transaction(settings) as session:
        done = _updated(
            session,
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.RUNNING)
            .values(status=JobStatus.SUCCEEDED, progress_step=job.steps, finished_at=utcnow()),
        )
        if not done:
            return False
        for image in stored:
            session.add(
                gallery.image_row(
                    job,
                    key=image.key,
                    thumb_key=image.thumb_key,
                    index=image.index,
                    seed=image.seed,
                    width=image.width,
                    height=image.height,
                )
            )
        ledger.capture(session, job.user_id, job_id=job.id)
        return True


def fail(settings: Settings, job_id: str, reason: str) -> None:
    """Mark the job failed and give its held credits back (once)."""
    with transaction(settings) as session:
        job = session.get(Job, job_id)
        if job is None or job.done:
            return
        job.status = JobStatus.FAILED
        job.error = reason[:2000]
        job.finished_at = utcnow()
        ledger.release(session, job.user_id, job.price, job_id=job.id, memo="Released: the job failed")


def _updated(session: Session, statement: Update) -> int:
    """How many rows a conditional UPDATE changed: whether this caller won the race."""
    # an UPDATE's result is a CursorResult; Session.execute is typed for any statement
    return cast(CursorResult[Any], session.execute(statement)).rowcount
