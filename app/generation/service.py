"""Submitting jobs (web side) and recording their progress and outcome (worker side)."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, replace
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.credits import ledger, pricing
from app.db import transaction, utcnow
from app.enums import MODES, JobStatus
from app.errors import NotFound, ServiceUnavailable, UserError
from app.gallery import service as gallery
from app.gallery.models import Image
from app.generation import images
from app.generation.catalog import ModelSpec, get_catalog
from app.generation.models import Job
from app.generation.schemas import (
    MAX_SEED,
    MIN_SIZE,
    Extend,
    GenerationRequest,
    QuoteRequest,
    parse_quote,
    size_for_aspect,
)
from app.queue import send_generate
from app.storage import get_storage, input_key

UPSCALE_OVERLAP = 64  # pixels shared by neighbouring upscale tiles, blended when stitched


def tiles(settings: Settings, req: QuoteRequest) -> list[tuple[int, int, int, int]]:
    """How the output is cut for the model: one tile, except for upscales larger than
    the model's maximum size."""
    if req.mode != "upscale":
        return [(0, 0, req.width, req.height)]
    return images.tile_grid(req.width, req.height, get_catalog(settings).get(req.model).max_size, UPSCALE_OVERLAP)


def quote(settings: Settings, req: QuoteRequest) -> int:
    """The price: per tile, of the steps the model really runs (``steps × strength`` for
    image modes), at the model's price multiplier, through the one price function."""
    boxes = tiles(settings, req)
    left, top, right, bottom = boxes[0]
    return len(boxes) * pricing.price(
        settings,
        width=right - left,
        height=bottom - top,
        steps=req.denoising_steps,
        n_images=req.n_images,
        multiplier=get_catalog(settings).get(req.model).price_multiplier,
    )


def output_size(settings: Settings, req: QuoteRequest, source_size: tuple[int, int]) -> tuple[int, int]:
    """The size an image-mode job makes from a source of ``source_size``."""
    w, h = source_size
    model = get_catalog(settings).get(req.model)
    m = model.size_multiple
    if req.mode == "upscale":
        out_w, out_h = w * req.upscale // m * m, h * req.upscale // m * m
        if max(out_w, out_h) > settings.max_upscale_side:
            raise UserError(
                f"Upscaling this {w}×{h} image {req.upscale}× would make it {w * req.upscale}×{h * req.upscale}; "
                f"the limit is {settings.max_upscale_side} pixels a side.",
                field="upscale",
            )
        return out_w, out_h
    fitted = work_size(model, (w, h))
    if req.mode == "outpaint":
        e = req.extend
        scale = fitted[0] / w
        return images.outpaint_size(fitted, _scaled(e, scale), model.max_size, m)
    return fitted


def quote_form(settings: Settings, user_id: int, data) -> int | None:
    """The price of what the form describes, or None while an image mode has no image
    yet. An image mode's size comes from its gallery image, or from ``source_width`` /
    ``source_height``, which the page sends once an upload is chosen."""
    req = parse_quote(data, settings)
    if req.mode == "txt2img":
        return quote(settings, req)
    source_size = None
    if data.get("source_image"):
        with transaction(settings) as session:
            row = gallery.get_image(session, user_id, str(data["source_image"]))
            source_size = (row.width, row.height)
    elif data.get("source_width") and data.get("source_height"):
        try:
            source_size = (int(data["source_width"]), int(data["source_height"]))
        except ValueError:
            source_size = None
        if source_size and min(source_size) < 1:
            source_size = None
    if source_size is None:
        return None
    width, height = output_size(settings, req, source_size)
    return quote(settings, replace(req, width=width, height=height))


def work_size(model: ModelSpec, size: tuple[int, int]) -> tuple[int, int]:
    """The size the model works on a source image at: its own (to the size multiple) when
    the model can make it, else about the model's native pixel count."""
    w, h = size
    m = model.size_multiple
    if MIN_SIZE <= min(w, h) and max(w, h) <= model.max_size:
        return w // m * m, h // m * m
    return images.fitted_size((w, h), model.default_size, model.max_size, m)


def _scaled(extend: Extend, scale: float) -> Extend:
    return Extend(*(round(v * scale) for v in (extend.left, extend.right, extend.top, extend.bottom)))


def prepare_inputs(
    settings: Settings, user_id: int, req: GenerationRequest, uploads: dict[str, bytes]
) -> tuple[GenerationRequest, bytes | None, bytes | None]:
    """Check and shape an image-mode request's inputs before anything is charged:
    ``(request with its output size, source PNG, mask PNG)``."""
    if req.mode == "txt2img":
        return req, None, None
    limits = images.UploadLimits(settings.max_upload_bytes, settings.max_upload_pixels)
    prompt, negative = req.prompt, req.negative_prompt
    if req.source_image_id:
        with transaction(settings) as session:
            source_row = gallery.get_image(session, user_id, req.source_image_id)
            key, source_prompt, source_negative = (
                source_row.storage_key,
                source_row.job.prompt,
                source_row.job.negative_prompt,
            )
        own = images.UploadLimits(max_bytes=2**31, max_pixels=4 * settings.max_upscale_side**2)  # ours: trusted
        source = images.open_upload(get_storage(settings).get(key), field="source_image", label="the image", limits=own)
        if not prompt:
            prompt, negative = source_prompt, negative or source_negative
    elif uploads.get("image"):
        source = images.open_upload(uploads["image"], field="image", label="the image", limits=limits)
    else:
        raise UserError("Upload an image, or choose one from your gallery.", field="image")
    if not prompt:
        raise UserError("Describe the image you want in the prompt.", field="prompt")
    width, height = output_size(settings, req, source.size)
    mask = None
    model = get_catalog(settings).get(req.model)
    m = model.size_multiple
    if req.mode == "upscale":
        canvas = source.convert("RGB")
    elif req.mode == "outpaint":
        fitted = source.convert("RGB").resize(work_size(model, source.size), images.Image.Resampling.LANCZOS)
        extend = _scaled(req.extend, fitted.width / source.width)
        canvas, mask = images.outpaint_canvas(fitted, extend, multiple=m)
        if canvas.size != (width, height):  # larger than the model allows: shrink the whole frame
            canvas = canvas.resize((width, height), images.Image.Resampling.LANCZOS)
            mask = mask.resize((width, height), images.Image.Resampling.NEAREST)
    else:
        canvas = source.convert("RGB").resize((width, height), images.Image.Resampling.LANCZOS)
        if req.mode == "inpaint":
            if not uploads.get("mask"):
                raise UserError("Paint over the area to regenerate, or upload a mask.", field="mask")
            mask_image = images.open_upload(uploads["mask"], field="mask", label="the mask", limits=limits)
            mask = images.mask_from_upload(mask_image, source.size).resize(
                (width, height), images.Image.Resampling.NEAREST
            )
    shaped = replace(req, width=width, height=height, prompt=prompt, negative_prompt=negative)
    return shaped, images.png(canvas), images.png(mask) if mask is not None else None


@dataclass(frozen=True)
class SizePreset:
    label: str
    width: int
    height: int

    @property
    def value(self) -> str:
        return f"{self.width}x{self.height}"


_ASPECTS = (("Square", 1, 1), ("Landscape", 3, 2), ("Portrait", 2, 3), ("Wide", 16, 9), ("Tall", 9, 16))


def size_presets(model: ModelSpec) -> list[SizePreset]:
    """Aspect ratio presets with about the model's native pixel count, in the model's size multiple."""
    presets = []
    for name, aw, ah in _ASPECTS:
        w, h = size_for_aspect(model, aw, ah)
        presets.append(SizePreset(f"{name} {aw}:{ah} — {w}×{h}", w, h))
    m = model.size_multiple
    big = min(model.max_size, model.default_size * 2) // m * m
    if big > model.default_size:
        presets.append(SizePreset(f"Large square 1:1 — {big}×{big}", big, big))
    return presets


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
    req, source_png, mask_png = prepare_inputs(settings, user_id, req, uploads or {})
    model = get_catalog(settings).get(req.model)
    price = quote(settings, req)
    job_id = str(uuid.uuid4())
    storage = get_storage(settings)
    source_key = mask_key = None
    if source_png is not None:  # stored before the charge; removed again if the job is not created
        source_key = input_key(user_id, job_id, "source")
        storage.put(source_key, source_png, "image/png")
    if mask_png is not None:
        mask_key = input_key(user_id, job_id, "mask")
        storage.put(mask_key, mask_png, "image/png")
    job = Job(
        id=job_id,
        user_id=user_id,
        client_request_id=client_request_id,
        mode=req.mode,
        strength=req.strength,
        source_key=source_key,
        mask_key=mask_key,
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
        price=price,
    )
    try:
        with transaction(settings) as session:
            session.add(job)
            session.flush()
            ledger.hold(
                session,
                user_id,
                price,
                job_id=job.id,
                memo=_memo(req),
            )
    except Exception as exc:  # not created (no credits, a concurrent double submit): drop its inputs
        for key in (source_key, mask_key):
            if key:
                storage.delete(key)
        if not isinstance(exc, IntegrityError):
            raise
        existing = _job_by_request(settings, user_id, client_request_id)
        if existing is None:
            raise
        return existing
    enqueue(settings, job)
    return job


def _memo(req: GenerationRequest) -> str:
    what = f"{req.n_images} image(s), {req.width}×{req.height}, {req.steps} steps"
    if req.mode == "txt2img":
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


def get_job(settings: Settings, user_id: int, job_id: str) -> tuple[Job, list[Image]]:
    """The user's own job and its images, or NotFound (never another user's).

    A job whose worker died is failed (and refunded) here, when its owner looks.
    """
    with transaction(settings) as session:
        job = session.get(Job, job_id)
        if job is None or job.user_id != user_id:
            raise NotFound("No such job.")
        stale = _is_stale(settings, job)
    if stale:
        fail(settings, job_id, stale)
    with transaction(settings) as session:
        job = session.get(Job, job_id)
        return job, job_images(session, job)


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
            reason = _is_stale(settings, job)
        if reason:
            fail(settings, job_id, reason)
    return len(ids)


def job_images(session: Session, job: Job) -> list[Image]:
    return list(session.scalars(select(Image).where(Image.job_id == job.id).order_by(Image.index)))


# ---- worker side ---------------------------------------------------------------


def claim(settings: Settings, job_id: str) -> Job | None:
    """queued → running, exactly once; None if another delivery already took it."""
    with transaction(settings) as session:
        taken = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.RUNNING, started_at=utcnow(), heartbeat_at=utcnow())
        ).rowcount
        return session.get(Job, job_id) if taken else None


def report_progress(settings: Settings, job_id: str, step: int, preview_key: str | None = None) -> bool:
    """Record progress (and the latest preview); True if the owner asked to cancel."""
    values: dict = {"progress_step": step, "heartbeat_at": utcnow()}
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
        return session.get(Job, job_id)


def settle_cancelled(settings: Settings, job_id: str) -> bool:
    """queued/running → cancelled, releasing the hold: a cancelled job produced no images."""
    with transaction(settings) as session:
        done = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
            .values(status=JobStatus.CANCELLED, error="Cancelled.", finished_at=utcnow())
        ).rowcount
        if done:
            job = session.get(Job, job_id)
            ledger.release(session, job.user_id, job.price, job_id=job.id, memo="Released: cancelled")
        return bool(done)


def succeed(settings: Settings, job: Job, images: list[tuple[str, int, int, int, int, str | None]]) -> bool:
    """Record the stored images ``(key, index, seed, width, height, thumbnail key)`` and capture the charge.

    Returns False (and records nothing) if the job is no longer running: it was
    failed as stale meanwhile and its credits already went back.
    """
    with transaction(settings) as session:
        done = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.RUNNING)
            .values(status=JobStatus.SUCCEEDED, progress_step=job.steps, finished_at=utcnow())
        ).rowcount
        if not done:
            return False
        for key, index, seed, width, height, thumb_key in images:
            session.add(
                gallery.image_row(job, key=key, thumb_key=thumb_key, index=index, seed=seed, width=width, height=height)
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
