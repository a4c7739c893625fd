"""Submitting jobs (web side) and recording their progress and outcome (worker side)."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.credits import ledger, pricing
from app.db import transaction, utcnow
from app.errors import NotFound, ServiceUnavailable
from app.gallery.models import Image
from app.generation.models import FAILED, QUEUED, RUNNING, SUCCEEDED, Job
from app.generation.schemas import MAX_SEED, GenerationRequest, QuoteRequest


def quote(settings: Settings, req: QuoteRequest) -> int:
    return pricing.price(settings, width=req.width, height=req.height, steps=req.steps, n_images=req.n_images)


@dataclass(frozen=True)
class SizePreset:
    label: str
    width: int
    height: int

    @property
    def value(self) -> str:
        return f"{self.width}x{self.height}"


_ASPECTS = (("Square", 1, 1), ("Landscape", 3, 2), ("Portrait", 2, 3), ("Wide", 16, 9), ("Tall", 9, 16))


def size_presets(settings: Settings) -> list[SizePreset]:
    """Aspect ratio presets with about the model's native pixel count, in multiples of 8."""
    base = settings.model_default_size
    presets = []
    for name, aw, ah in _ASPECTS:
        scale = (base * base / (aw * ah)) ** 0.5
        w = max(64, min(settings.model_max_size, round(aw * scale / 8) * 8))
        h = max(64, min(settings.model_max_size, round(ah * scale / 8) * 8))
        presets.append(SizePreset(f"{name} {aw}:{ah} — {w}×{h}", w, h))
    big = min(settings.model_max_size, base * 2) // 8 * 8
    if big > base:
        presets.append(SizePreset(f"Large square 1:1 — {big}×{big}", big, big))
    return presets


def submit(settings: Settings, user_id: int, req: GenerationRequest, client_request_id: str) -> Job:
    """Price the request, hold the credits, create the job and enqueue it.

    The same ``client_request_id`` (a double click, a retried API call) returns
    the first job instead of creating and charging a second one.
    """
    client_request_id = (client_request_id or "").strip()[:64] or uuid.uuid4().hex
    existing = _job_by_request(settings, user_id, client_request_id)
    if existing is not None:
        return existing
    price = quote(settings, req)
    job = Job(
        id=str(uuid.uuid4()),
        user_id=user_id,
        client_request_id=client_request_id,
        status=QUEUED,
        model=settings.model,
        prompt=req.prompt,
        negative_prompt=req.negative_prompt,
        width=req.width,
        height=req.height,
        steps=req.steps,
        guidance=req.guidance,
        seed=req.seed if req.seed is not None else secrets.randbelow(MAX_SEED + 1),
        n_images=req.n_images,
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
                memo=f"{req.n_images} image(s), {req.width}×{req.height}, {req.steps} steps",
            )
    except IntegrityError:
        existing = _job_by_request(settings, user_id, client_request_id)
        if existing is None:
            raise
        return existing
    enqueue(settings, job)
    return job


def _job_by_request(settings: Settings, user_id: int, client_request_id: str) -> Job | None:
    with transaction(settings) as session:
        return session.scalar(select(Job).where(Job.user_id == user_id, Job.client_request_id == client_request_id))


def enqueue(settings: Settings, job: Job) -> None:
    from workers.celery_app import celery_for

    try:
        celery_for(settings).send_task("gouache.generate", args=[job.id], queue=settings.queue)
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
    if job.status == RUNNING and (job.heartbeat_at or job.created_at) < now - timedelta(
        seconds=settings.job_stale_after_s
    ):
        return STALE_RUNNING
    if job.status == QUEUED and job.created_at < now - timedelta(seconds=settings.job_queue_timeout_s):
        return STALE_QUEUED
    return None


def reap_stale_jobs(settings: Settings) -> int:
    """Fail and refund every job whose worker died or that no worker took; returns how many."""
    now = utcnow()
    with transaction(settings) as session:
        ids = session.scalars(
            select(Job.id).where(
                or_(
                    (Job.status == RUNNING) & (Job.heartbeat_at < now - timedelta(seconds=settings.job_stale_after_s)),
                    (Job.status == QUEUED) & (Job.created_at < now - timedelta(seconds=settings.job_queue_timeout_s)),
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
            .where(Job.id == job_id, Job.status == QUEUED)
            .values(status=RUNNING, started_at=utcnow(), heartbeat_at=utcnow())
        ).rowcount
        return session.get(Job, job_id) if taken else None


def report_progress(settings: Settings, job_id: str, step: int) -> None:
    with transaction(settings) as session:
        session.execute(
            update(Job).where(Job.id == job_id, Job.status == RUNNING).values(progress_step=step, heartbeat_at=utcnow())
        )


def succeed(settings: Settings, job: Job, images: list[tuple[str, int, int, int, int]]) -> bool:
    """Record the stored images ``(key, index, seed, width, height)`` and capture the charge.

    Returns False (and records nothing) if the job is no longer running: it was
    failed as stale meanwhile and its credits already went back.
    """
    with transaction(settings) as session:
        done = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == RUNNING)
            .values(status=SUCCEEDED, progress_step=job.steps, finished_at=utcnow())
        ).rowcount
        if not done:
            return False
        for key, index, seed, width, height in images:
            session.add(
                Image(
                    id=str(uuid.uuid4()),
                    user_id=job.user_id,
                    job_id=job.id,
                    index=index,
                    storage_key=key,
                    seed=seed,
                    width=width,
                    height=height,
                )
            )
        ledger.capture(session, job.user_id, job_id=job.id)
        return True


def fail(settings: Settings, job_id: str, reason: str) -> None:
    """Mark the job failed and give its held credits back (once)."""
    with transaction(settings) as session:
        job = session.get(Job, job_id)
        if job is None or job.status in (SUCCEEDED, FAILED):
            return
        job.status = FAILED
        job.error = reason[:2000]
        job.finished_at = utcnow()
        ledger.release(session, job.user_id, job.price, job_id=job.id, memo="Released: the job failed")
