"""Submitting jobs (web side) and recording their progress and outcome (worker side).

What a request costs is :mod:`app.generation.quote`; the Pillow work on its images is
:mod:`app.generation.images`.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import ColumnElement, CursorResult, Update, and_, delete, func, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.accounts import service as accounts
from app.accounts.models import User
from app.config import Settings
from app.credits import ledger
from app.db import reading, transaction, utcnow
from app.enums import MODES, JobStatus, Mode
from app.errors import NotFound, ServiceUnavailable, TooManyJobs, UserError
from app.gallery import service as gallery
from app.gallery.models import Image
from app.gallery.search import Cursor
from app.generation import images, quote
from app.generation.catalog import get_catalog
from app.generation.models import Job
from app.generation.schemas import MAX_SEED, GenerationRequest
from app.queue import send_generate
from app.storage import ObjectNotFound, Storage, get_storage, input_key
from app.storage import keys as object_keys

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
# A queued job whose message is this old and still not sent lost its web process between
# the commit and the send (a younger one may be in that moment now): the janitor sends it.
UNSENT_GRACE_S = 10


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
        return _sent(settings, existing)
    req, inputs = prepare_inputs(settings, user_id, req, uploads or {})
    job = _new_job(settings, user_id, req, client_request_id)
    created = _create_and_hold(settings, job, inputs, _memo(req))
    if created is job:
        enqueue(settings, job)
    return created


def _sent(settings: Settings, job: Job) -> Job:
    """The job a retry found, sent first if a crash left it unsent (a ghost): the retry
    gets a job that really runs."""
    if job.status != JobStatus.QUEUED or job.sent_at is not None:
        return job
    if job.created_at > utcnow() - timedelta(seconds=UNSENT_GRACE_S):
        return job  # its own request may be sending it right now
    try:
        send(settings, job.id, job.model)
    except Exception:  # the janitor sends it later
        return job
    with transaction(settings) as session:
        return session.get_one(Job, job.id)


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
    width, height = quote.output_size(settings, req, source.size, "source_image" if req.source_image_id else "image")
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
    """Store the job's inputs, then, in one transaction, check the user's cap, save the
    job (unsent) and hold its price. A concurrent double submit (the same request id) gets
    the job that won instead; a job not created (no credits, over the cap) leaves no
    inputs behind."""
    storage = get_storage(settings)
    # stored before the charge; removed again if the job is not created
    job.source_key = _store_input(storage, job, "source", inputs.source_png)
    job.mask_key = _store_input(storage, job, "mask", inputs.mask_png)
    try:
        with transaction(settings) as session:
            accounts.ensure_not_suspended(session, job.user_id)
            _check_active_cap(session, settings, job.user_id)
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


def _check_active_cap(session: Session, settings: Settings, user_id: int) -> None:
    """Fair sharing: refuse a job past the user's cap of jobs queued + running. Runs in the
    hold's transaction, after locking the account (PostgreSQL; SQLite's BEGIN IMMEDIATE
    already serializes writers), so two concurrent submits count one after the other."""
    cap = settings.max_active_jobs_per_user
    if not cap:
        return
    session.execute(select(User.id).where(User.id == user_id).with_for_update())
    active = session.scalar(select(func.count()).select_from(Job).where(Job.status.in_(ACTIVE), Job.user_id == user_id))
    if (active or 0) >= cap:
        raise TooManyJobs(
            f"You already have {active} jobs queued or running, the most one account can have at once. "
            "Submit this one when one of them has finished; nothing was charged.",
            retry_after=_seconds_until_one_finishes(session, user_id),
        )


RECENT_PACE_JOBS = 10  # the user's latest finished jobs that set the pace of the estimate
MAX_RETRY_AFTER_S = 300


def _seconds_until_one_finishes(session: Session, user_id: int) -> int:
    """About how long until one of the user's active jobs finishes (a 429's ``Retry-After``):
    the fewest steps any of them has left, at the pace of the user's recent jobs (seconds
    per step, claim to finish; a second a step without any), within 1 s .. 5 min."""
    recent = session.execute(
        select(Job.started_at, Job.finished_at, Job.steps)
        .where(Job.user_id == user_id, Job.status == JobStatus.SUCCEEDED, Job.started_at.is_not(None))
        .order_by(Job.created_at.desc())
        .limit(RECENT_PACE_JOBS)
    ).all()
    timed = [(finished - started, n) for started, finished, n in recent if started and finished]
    seconds = sum(took.total_seconds() for took, _ in timed)
    steps = sum(n for _, n in timed)
    pace = seconds / steps if steps and seconds > 0 else 1.0
    left = session.execute(
        select(Job.status, Job.steps, Job.progress_step).where(Job.user_id == user_id, Job.status.in_(ACTIVE))
    ).all()
    fewest = min((n - done if status == JobStatus.RUNNING else n for status, n, done in left), default=1)
    return max(1, min(MAX_RETRY_AFTER_S, round(max(1, fewest) * pace)))


def _store_input(storage: Storage, job: Job, name: str, png: bytes | None) -> str | None:
    if png is None:
        return None
    key = input_key(job.user_id, job.id, name)
    storage.put(key, png, "image/png")
    return key


def _memo(req: GenerationRequest) -> str:
    what = f"{req.n_images} image{'' if req.n_images == 1 else 's'}, {req.width}×{req.height}, {req.steps} steps"
    if req.mode == Mode.TXT2IMG:
        return what
    return f"{MODES[req.mode]}: {what} at strength {req.strength:g}"


def _job_by_request(settings: Settings, user_id: int, client_request_id: str) -> Job | None:
    with transaction(settings) as session:
        return session.scalar(select(Job).where(Job.user_id == user_id, Job.client_request_id == client_request_id))


def enqueue(settings: Settings, job: Job) -> None:
    """Send the committed job to its model's queue. A crash before this leaves the job
    unsent, and the janitor sends it; a broker that refuses fails it at once, refunded."""
    try:
        job.sent_at = send(settings, job.id, job.model)
    except Exception as exc:  # the broker is down: the user must not pay for a job that never runs
        fail(settings, job.id, "The job could not be queued; no credits were charged. Please try again.")
        raise ServiceUnavailable(
            "The generation queue is unavailable right now; nothing was charged. Please try again."
        ) from exc


def send(settings: Settings, job_id: str, model: str) -> datetime:
    """Put the job's message on its model's queue (which only workers serving that model
    consume), then record that it went out; when. Raises if the broker is unreachable."""
    queue = get_catalog(settings).get(model).queue(settings.queue)
    send_generate(settings, job_id, queue)
    sent = utcnow()
    with transaction(settings) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED, Job.sent_at.is_(None))
            .values(sent_at=sent)
        )
    return sent


def recent_jobs(settings: Settings, user_id: int, limit: int) -> list[tuple[Job, list[Image]]]:
    """The user's latest jobs, newest first, each with its images."""
    with reading(settings) as session:
        jobs = session.scalars(
            select(Job).where(Job.user_id == user_id).order_by(Job.created_at.desc()).limit(limit)
        ).all()
        return [(job, job_images(session, job)) for job in jobs]


def recent_prompts(settings: Settings, user_id: int, limit: int = 20) -> list[str]:
    """The user's own prompts, each once, the most recently used first (never another user's)."""
    last_used = func.max(Job.created_at)
    with reading(settings) as session:
        rows = session.execute(
            select(Job.prompt)
            .where(Job.user_id == user_id, Job.prompt != "")
            .group_by(Job.prompt)
            .order_by(last_used.desc())
            .limit(limit)
        )
        return [prompt for (prompt,) in rows]


JOBS_PAGE = 20


@dataclass(frozen=True)
class JobPage:
    jobs: list[tuple[Job, list[Image]]]
    next_cursor: str | None


def list_jobs(
    settings: Settings, user_id: int, statuses: Sequence[str] = (), after: str | None = None, limit: int = JOBS_PAGE
) -> JobPage:
    """One keyset page of the user's jobs, newest first (``statuses``: only those), each with
    its images; ``after`` is the previous page's ``next_cursor``."""
    for status in statuses:
        if status not in JobStatus.__members__.values():
            choices = ", ".join(JobStatus)
            raise UserError(f"Unknown status {status[:20]!r}; choose from {choices}.", field="status")
    cursor = Cursor.decode(after) if after else None
    query = select(Job).where(Job.user_id == user_id)
    if statuses:
        query = query.where(Job.status.in_(statuses))
    if cursor is not None:
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(cursor.created_at, cursor.id))
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    with reading(settings) as session:
        jobs = list(session.scalars(query))
        more = len(jobs) > limit
        jobs = jobs[:limit]
        found: dict[str, list[Image]] = {job.id: [] for job in jobs}
        for image in session.scalars(
            select(Image).where(Image.job_id.in_(list(found))).order_by(Image.job_id, Image.index)
        ):
            found[image.job_id].append(image)
    next_cursor = Cursor(jobs[-1].created_at, jobs[-1].id).encode() if more else None
    return JobPage([(job, found[job.id]) for job in jobs], next_cursor)


def jobs_with_first_image(
    session: Session, user_id: int, job_ids: Sequence[str]
) -> dict[str, tuple[Job, Image | None]]:
    """The user's jobs among ``job_ids`` (never another user's), each with its first image
    still in the gallery (None: it made none, or they were deleted); for the billing history."""
    jobs = {job.id: job for job in session.scalars(select(Job).where(Job.user_id == user_id, Job.id.in_(job_ids)))}
    first: dict[str, Image] = {}
    for image in session.scalars(select(Image).where(Image.job_id.in_(list(jobs))).order_by(Image.index.desc())):
        first[image.job_id] = image  # the lowest index is seen last
    return {job_id: (job, first.get(job_id)) for job_id, job in jobs.items()}


@dataclass(frozen=True)
class Progress:
    """What a job's event stream watches: a few columns of its row."""

    status: str
    step: int
    steps: int
    has_preview: bool
    cancel_requested: bool

    @property
    def done(self) -> bool:
        return JobStatus(self.status).finished


def job_progress(settings: Settings, user_id: int, job_id: str) -> Progress:
    """The user's job's status and progress (one short read), or NotFound."""
    with reading(settings) as session:
        row = session.execute(
            select(Job.status, Job.progress_step, Job.steps, Job.preview_key, Job.cancel_requested).where(
                Job.id == job_id, Job.user_id == user_id
            )
        ).first()
    if row is None:
        raise NotFound("No such job.")
    status, step, steps, preview_key, cancel = row
    return Progress(status, step, steps, bool(preview_key), bool(cancel))


def source_image(settings: Settings, user_id: int, image_id: str) -> SourceImage | None:
    """The user's gallery image the form starts from; None if it is not theirs (or gone)."""
    with reading(settings) as session:
        try:
            row = gallery.get_image(session, user_id, image_id)
        except NotFound:
            return None
        return SourceImage(row.id, row.width, row.height, row.job.prompt)


def get_job(settings: Settings, user_id: int, job_id: str) -> tuple[Job, list[Image]]:
    """The user's own job and its images, or NotFound (never another user's). (A job
    whose worker died is the janitor's: :mod:`app.generation.janitor`.)"""
    with reading(settings) as session:
        job = session.get(Job, job_id)
        if job is None or job.user_id != user_id:
            raise NotFound("No such job.")
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


# ---- the janitor's transitions (app/generation/janitor.py runs them) ---------------


@dataclass(frozen=True)
class Expired:
    """A running job whose lease ran out: its worker died, froze or lost the database."""

    id: str
    attempt: int
    cancel_requested: bool


def expired_leases(settings: Settings, now: datetime, limit: int = 500) -> list[Expired]:
    """Running jobs whose lease expired before ``now``."""
    with transaction(settings) as session:
        rows = session.execute(
            select(Job.id, Job.attempts, Job.cancel_requested)
            .where(Job.status == JobStatus.RUNNING, or_(Job.lease_expires_at < now, Job.lease_expires_at.is_(None)))
            .limit(limit)
        ).all()
    return [Expired(*row) for row in rows]


def _lease_lost(job_id: str, attempt: int, now: datetime) -> list[ColumnElement[bool]]:
    """This attempt is still the job's and its lease has run out (its worker did not renew)."""
    return [
        Job.id == job_id,
        Job.status == JobStatus.RUNNING,
        Job.attempts == attempt,
        or_(Job.lease_expires_at < now, Job.lease_expires_at.is_(None)),
    ]


def requeue(settings: Settings, job_id: str, attempt: int, now: datetime) -> str | None:
    """running → queued (unsent) for the next attempt, if ``attempt`` still holds the
    expired lease; the job's model (to send it to), or None if something else won."""
    with transaction(settings) as session:
        done = _updated(
            session,
            update(Job)
            .where(*_lease_lost(job_id, attempt, now))
            .values(status=JobStatus.QUEUED, sent_at=None, lease_expires_at=None, progress_step=0),
        )
        return session.scalar(select(Job.model).where(Job.id == job_id)) if done else None


def give_up(settings: Settings, job_id: str, attempt: int, now: datetime, *, cancelled: bool) -> bool:
    """End a job whose last allowed attempt lost its lease (or whose owner cancelled it
    meanwhile), releasing its hold."""
    if cancelled:
        return _end(settings, job_id, _lease_lost(job_id, attempt, now), JobStatus.CANCELLED, "Cancelled.")
    reason = f"The job stopped {attempt} times without finishing; no credits were charged. Please try again."
    if attempt <= 1:
        reason = STALE_RUNNING
    return _end(settings, job_id, _lease_lost(job_id, attempt, now), JobStatus.FAILED, reason)


def unsent_jobs(settings: Settings, now: datetime, limit: int = 500) -> list[tuple[str, str]]:
    """(id, model) of queued jobs whose message never went out: requeued ones at once,
    new ones once their own request had time to send them."""
    young = now - timedelta(seconds=UNSENT_GRACE_S)
    with transaction(settings) as session:
        rows = session.execute(
            select(Job.id, Job.model)
            .where(
                Job.status == JobStatus.QUEUED,
                Job.sent_at.is_(None),
                or_(Job.created_at < young, Job.attempts > 0),
            )
            .limit(limit)
        ).all()
    return [(job_id, model) for job_id, model in rows]


def time_out_queued(settings: Settings, now: datetime) -> int:
    """Fail and refund queued jobs no worker took within the queue timeout (no worker
    serves their model); how many."""
    cutoff = now - timedelta(seconds=settings.job_queue_timeout_s)
    waiting_since = func.coalesce(Job.sent_at, Job.created_at)
    with transaction(settings) as session:
        ids = session.scalars(select(Job.id).where(Job.status == JobStatus.QUEUED, waiting_since < cutoff)).all()
    stale = [Job.status == JobStatus.QUEUED, waiting_since < cutoff]
    return sum(_end(settings, job_id, [Job.id == job_id, *stale], JobStatus.FAILED, STALE_QUEUED) for job_id in ids)


def status_of(settings: Settings, job_id: str) -> str | None:
    with transaction(settings) as session:
        return session.scalar(select(Job.status).where(Job.id == job_id))


def job_images(session: Session, job: Job) -> list[Image]:
    """The job's images, in the order it made them."""
    return list(session.scalars(select(Image).where(Image.job_id == job.id).order_by(Image.index)))


# ---- worker side ---------------------------------------------------------------


def _new_attempt(settings: Settings, now: datetime) -> dict[str, Any]:
    """The columns a claim sets: the job runs its next attempt, under a fresh lease."""
    return {
        "status": JobStatus.RUNNING,
        "attempts": Job.attempts + 1,
        "started_at": now,
        "heartbeat_at": now,
        "lease_expires_at": now + timedelta(seconds=settings.job_lease_s),
        "progress_step": 0,
    }


def claim(settings: Settings, job_id: str) -> Job | None:
    """Start an attempt: queued → running, or take over a running job whose lease expired
    (its worker died and the broker redelivered before the janitor requeued it), within
    the attempts allowed. The returned job's ``attempts`` is this attempt, which every
    later write names. None if another delivery holds it, or it is over."""
    now = utcnow()
    claimable = or_(
        Job.status == JobStatus.QUEUED,
        and_(Job.status == JobStatus.RUNNING, or_(Job.lease_expires_at < now, Job.lease_expires_at.is_(None))),
    )
    with transaction(settings) as session:
        taken = _updated(
            session,
            update(Job)
            .where(Job.id == job_id, claimable, Job.attempts < settings.job_max_attempts)
            .values(**_new_attempt(settings, now)),
        )
        return session.get(Job, job_id) if taken else None


def claim_compatible(settings: Settings, job: Job, max_images: int) -> list[Job]:
    """Start attempts of queued jobs that can share ``job``'s pipeline call (same model,
    mode, size, steps, sampler, guidance and strength, and a negative prompt if and only
    if ``job`` has one: SDXL encodes no negative prompt as zeros, an empty one as text; the
    oldest first), up to ``max_images`` images in all; each claimed exactly as
    :func:`claim` claims one (its own attempt and lease), so their own deliveries later
    find them taken. A job whose owner asked to cancel is left for its Cancel to settle."""
    if max_images <= 0:
        return []
    same = [
        Job.negative_prompt != "" if job.negative_prompt else Job.negative_prompt == "",
        Job.status == JobStatus.QUEUED,
        Job.id != job.id,
        Job.model == job.model,
        Job.mode == job.mode,
        Job.width == job.width,
        Job.height == job.height,
        Job.steps == job.steps,
        Job.sampler == job.sampler,
        Job.guidance == job.guidance,
        Job.strength.is_(None) if job.strength is None else Job.strength == job.strength,
        Job.n_images <= max_images,
        Job.cancel_requested.is_(False),
        Job.attempts < settings.job_max_attempts,
    ]
    oldest = select(Job.id, Job.n_images).where(*same).order_by(Job.created_at, Job.id).limit(max_images)
    with reading(settings) as session:  # the worker looks often while it gathers: no write lock to look
        if not session.execute(oldest).first():
            return []
    now = utcnow()
    with transaction(settings) as session:
        candidates = session.execute(oldest).all()
        taken: list[str] = []
        for job_id, n_images in candidates:
            if n_images > max_images:
                continue
            won = _updated(
                session,
                update(Job).where(Job.id == job_id, *same).values(**_new_attempt(settings, now)),
            )
            if won:
                taken.append(job_id)
                max_images -= n_images
        return [session.get_one(Job, job_id) for job_id in taken]


@dataclass(frozen=True)
class Lease:
    """What a renewal found: whether this attempt still holds the job, and whether its
    owner asked to cancel."""

    held: bool
    cancel_requested: bool


def renew(
    settings: Settings,
    job_id: str,
    attempt: int,
    *,
    step: int | None = None,
    preview_key: str | None = None,
    extend: bool = True,
) -> Lease:
    """Record the attempt's progress (and its latest preview) and extend its lease, in one
    short transaction; ``extend=False`` records without extending (a stuck pipeline lets
    its lease run out). Nothing changes for an attempt that no longer holds the job."""
    now = utcnow()
    values: dict[str, Any] = {"heartbeat_at": now}
    if extend:
        values["lease_expires_at"] = now + timedelta(seconds=settings.job_lease_s)
    if step is not None:
        values["progress_step"] = step
    if preview_key:
        values["preview_key"] = preview_key
    with transaction(settings) as session:
        held = _updated(
            session,
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.attempts == attempt)
            .values(**values),
        )
        cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return Lease(held=bool(held), cancel_requested=bool(cancel))


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


def settle_cancelled(settings: Settings, job_id: str, attempt: int | None = None) -> bool:
    """queued/running → cancelled, releasing the hold: a cancelled job produced no images.
    With ``attempt``, only while that attempt still holds the job."""
    return _end(settings, job_id, _current(job_id, attempt), JobStatus.CANCELLED, "Cancelled.")


def succeed(settings: Settings, job: Job, stored: list[StoredImage]) -> bool:
    """Record the stored images and capture the charge.

    Returns False (and records nothing) if ``job``'s attempt no longer holds it: the
    janitor requeued or failed it meanwhile (another attempt records the images, or the
    credits already went back), or its owner cancelled it.
    """
    with transaction(settings) as session:
        done = _updated(
            session,
            update(Job)
            .where(*_current(job.id, job.attempts))
            .values(status=JobStatus.SUCCEEDED, progress_step=job.steps, finished_at=utcnow(), lease_expires_at=None),
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


def fail(settings: Settings, job_id: str, reason: str, attempt: int | None = None) -> bool:
    """Mark the job failed and give its held credits back (once). With ``attempt`` (a
    worker's), only while that attempt still holds the job."""
    return _end(settings, job_id, _current(job_id, attempt), JobStatus.FAILED, reason)


def _current(job_id: str, attempt: int | None) -> list[ColumnElement[bool]]:
    """Not finished; with ``attempt``, running as that attempt."""
    if attempt is None:
        return [Job.id == job_id, Job.status.in_(ACTIVE)]
    return [Job.id == job_id, Job.status == JobStatus.RUNNING, Job.attempts == attempt]


def _end(settings: Settings, job_id: str, where: list[ColumnElement[bool]], status: JobStatus, reason: str) -> bool:
    """Finish the job as ``status`` if ``where`` still holds, releasing its hold; whether it did."""
    with transaction(settings) as session:
        done = _updated(
            session,
            update(Job)
            .where(*where)
            .values(status=status, error=reason[:2000], finished_at=utcnow(), lease_expires_at=None),
        )
        if done:
            job = session.get_one(Job, job_id)
            memo = "Released: cancelled" if status == JobStatus.CANCELLED else "Released: the job failed"
            ledger.release(session, job.user_id, job.price, job_id=job.id, memo=memo)
        return bool(done)


def _updated(session: Session, statement: Update) -> int:
    """How many rows a conditional UPDATE changed: whether this caller won the race."""
    # an UPDATE's result is a CursorResult; Session.execute is typed for any statement
    return cast(CursorResult[Any], session.execute(statement)).rowcount


def forget_user(session: Session, user_id: int) -> list[str]:
    """Delete every job of the user (a deleted account) and, through the gallery, their
    images and collections, in the caller's transaction. A queued or running job's hold is
    released first (its worker finds the job gone, stops, and discards what it made).
    Returns every storage key the jobs may have used (images, thumbnails, inputs,
    previews), to delete after the commit."""
    keys = gallery.forget_user(session, user_id)
    jobs = session.execute(
        select(Job.id, Job.status, Job.price, Job.n_images, Job.source_key, Job.mask_key, Job.preview_key).where(
            Job.user_id == user_id
        )
    ).all()
    for job_id, status, price, n_images, *recorded in jobs:
        if status in ACTIVE:
            ledger.release(session, user_id, price, job_id=job_id, memo="Released: the account was deleted")
        keys += [key for key in recorded if key]
        # the keys a job's objects may have even where its row no longer names them
        keys += [input_key(user_id, job_id, "source"), input_key(user_id, job_id, "mask")]
        keys.append(object_keys.preview_key(user_id, job_id))
        for i in range(n_images):
            keys += [object_keys.image_key(user_id, job_id, i), object_keys.thumbnail_key(user_id, job_id, i)]
    session.execute(delete(Job).where(Job.user_id == user_id).execution_options(synchronize_session=False))
    return list(dict.fromkeys(keys))
