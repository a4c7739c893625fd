"""The janitor: recovers jobs from the database when processes die, and cleans up.

The job row is the record; broker messages are only wake-ups. Each sweep, in order:

1. a running job whose lease expired (its worker died, froze or lost the database) is
   requeued and re-sent, up to ``GOUACHE_JOB_MAX_ATTEMPTS`` claims; after the last one it
   fails (cancelled instead, if its owner asked), and its hold is released;
2. a queued job whose message never went out (the web process died between committing the
   job and sending it) is sent;
3. a queued job no worker took within ``GOUACHE_JOB_QUEUE_TIMEOUT_S`` fails, refunded.

Housekeeping (each sweep by default; :func:`run` does it once a minute): the live previews
of finished jobs, the inputs of jobs finished over ``GOUACHE_INPUT_RETENTION_S`` ago, expired
login sessions, and the embedded broker's delivered messages.

Every change is a conditional update, so two janitors (or a janitor and a worker) racing
each other change a job once. ``gouache janitor`` runs :func:`run` on its own (scale-out);
``gouache dev`` runs it on a thread.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, fields
from datetime import timedelta

from sqlalchemy import delete, select, update

from app.accounts.models import LoginSession
from app.config import Settings
from app.db import transaction, utcnow
from app.generation import service
from app.generation.models import Job
from app.queue import prune_broker
from app.storage import get_storage

log = logging.getLogger(__name__)

HOUSEKEEPING_EVERY_S = 60.0
BATCH = 500  # rows per housekeeping step and sweep: transactions stay short


@dataclass
class Report:
    """What one sweep did, by kind (counts)."""

    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    sent: int = 0
    timed_out: int = 0
    previews: int = 0
    inputs: int = 0
    sessions: int = 0
    broker_messages: int = 0

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def __str__(self) -> str:
        done = [f"{f.name.replace('_', ' ')} {getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name)]
        return ", ".join(done) or "nothing to do"


def sweep(settings: Settings, *, housekeeping: bool = True) -> Report:
    """One pass over the jobs (and, with ``housekeeping``, the leftovers); what it did."""
    report = Report()
    _recover_expired(settings, report)
    _send_unsent(settings, report)
    report.timed_out = service.time_out_queued(settings, utcnow())
    if housekeeping:
        report.previews = _clean_previews(settings)
        report.inputs = _clean_inputs(settings)
        report.sessions = _clean_sessions(settings)
        report.broker_messages = prune_broker(settings)
    return report


def run(settings: Settings, stop: threading.Event, interval_s: float | None = None) -> None:
    """Sweep every ``interval_s`` seconds (default ``GOUACHE_JANITOR_INTERVAL_S``) until
    ``stop`` is set; housekeeping once a minute. A failed sweep is logged and retried."""
    interval = interval_s or settings.janitor_interval_s
    last_housekeeping = float("-inf")
    log.info("janitor: sweeping every %gs", interval)
    while not stop.is_set():
        housekeeping = time.monotonic() - last_housekeeping >= HOUSEKEEPING_EVERY_S
        try:
            report = sweep(settings, housekeeping=housekeeping)
        except Exception:
            log.exception("janitor: the sweep failed; retrying in %gs", interval)
        else:
            if housekeeping:
                last_housekeeping = time.monotonic()
            if report:
                log.info("janitor: %s", report)
        stop.wait(interval)


def _recover_expired(settings: Settings, report: Report) -> None:
    now = utcnow()
    for job in service.expired_leases(settings, now, BATCH):
        if job.cancel_requested or job.attempt >= settings.job_max_attempts:
            if service.give_up(settings, job.id, job.attempt, now, cancelled=job.cancel_requested):
                if job.cancel_requested:
                    report.cancelled += 1
                else:
                    report.failed += 1
                    log.warning("janitor: job %s lost its worker %d time(s); failed", job.id, job.attempt)
            continue
        model = service.requeue(settings, job.id, job.attempt, now)
        if model is None:
            continue  # its worker renewed after all, or another janitor took it
        report.requeued += 1
        log.warning("janitor: job %s lost its worker (attempt %d); requeued", job.id, job.attempt)
        report.sent += _send(settings, job.id, model)


def _send_unsent(settings: Settings, report: Report) -> None:
    for job_id, model in service.unsent_jobs(settings, utcnow(), BATCH):
        report.sent += _send(settings, job_id, model)


def _send(settings: Settings, job_id: str, model: str) -> int:
    try:
        service.send(settings, job_id, model)
    except Exception:  # the broker is down (or the model left the catalog): next sweep
        log.warning("janitor: could not send job %s", job_id, exc_info=True)
        return 0
    return 1


def _clean_previews(settings: Settings) -> int:
    """Delete the live preview of each finished job (a worker deletes its own; one killed
    first, or a stale attempt's late write, leaves one)."""
    with transaction(settings) as session:
        rows = session.execute(
            select(Job.id, Job.preview_key)
            .where(Job.preview_key.is_not(None), Job.status.in_(service.FINISHED))
            .limit(BATCH)
        ).all()
    storage = get_storage(settings)
    for job_id, key in rows:
        if key:
            storage.delete(key)
        with transaction(settings) as session:
            session.execute(update(Job).where(Job.id == job_id, Job.preview_key == key).values(preview_key=None))
    return len(rows)


def _clean_inputs(settings: Settings) -> int:
    """Delete the uploaded source and mask of jobs finished over the retention ago."""
    cutoff = utcnow() - timedelta(seconds=settings.input_retention_s)
    with transaction(settings) as session:
        rows = session.execute(
            select(Job.id, Job.source_key, Job.mask_key)
            .where(Job.source_key.is_not(None), Job.status.in_(service.FINISHED), Job.finished_at < cutoff)
            .limit(BATCH)
        ).all()
    storage = get_storage(settings)
    for job_id, source_key, mask_key in rows:
        for key in (source_key, mask_key):
            if key:
                storage.delete(key)
        with transaction(settings) as session:
            session.execute(update(Job).where(Job.id == job_id).values(source_key=None, mask_key=None))
    return len(rows)


def _clean_sessions(settings: Settings) -> int:
    """Delete expired login sessions (they already log nobody in)."""
    with transaction(settings) as session:
        expired = session.scalars(select(LoginSession.id).where(LoginSession.expires_at < utcnow()).limit(BATCH)).all()
        if expired:
            session.execute(delete(LoginSession).where(LoginSession.id.in_(expired)))
        return len(expired)
