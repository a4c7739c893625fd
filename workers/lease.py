"""The one background writer of a running attempt: its lease, progress and live preview.

The pipeline never waits for the database. Its step callback hands the latest step (and,
now and then, a way to render a preview) to :meth:`AttemptWriter.step`, which only stores
them, and :meth:`AttemptWriter.check` raises on what the writer last read: the owner's
Cancel, or the attempt having lost the job. The writer thread writes at most
:data:`PROGRESS_EVERY_S` apart, the latest values winning, and renews the lease at least
every few seconds even when nothing moves (while a model loads, while images upload).

No torch here: a preview arrives as a callable that renders its JPEG (on this thread).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from app.config import Settings
from app.generation import service
from app.generation.models import Job
from app.storage import Storage, preview_key

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.25  # at most ~4 progress writes a second per job
RENEW_EVERY_MAX_S = 5.0

RenderPreview = Callable[[], bytes]


class JobCancelled(Exception):
    """Raised between steps when the job's owner pressed Cancel; stops the pipeline."""


class JobLost(Exception):
    """Raised between steps when this attempt no longer holds the job: its lease ran out
    and the janitor requeued or failed it (another attempt may be running it)."""


class AttemptWriter:
    """Writes one attempt's progress, preview and lease renewals from its own thread."""

    def __init__(self, settings: Settings, job: Job, storage: Storage):
        self.settings = settings
        self.job_id, self.user_id, self.attempt = job.id, job.user_id, job.attempts
        self.storage = storage
        self.renew_every = min(RENEW_EVERY_MAX_S, settings.job_lease_s / 3)
        # What the writer last read (the pipeline thread only looks at them).
        self.cancel_requested = bool(job.cancel_requested)
        self.held = True
        self.writes = 0
        # The latest unwritten values (the pipeline thread only stores them).
        self._step: int | None = None
        self._written_step: int | None = None
        self._preview: RenderPreview | None = None
        self._moved_at = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"job-{job.id[:8]}-writer", daemon=True)

    # ---- the pipeline's side: store and check, never wait ---------------------------

    def step(self, step: int, preview: RenderPreview | None = None) -> None:
        if step != self._step:
            self._moved_at = time.monotonic()
        self._step = step
        if preview is not None:
            self._preview = preview

    def check(self) -> None:
        if not self.held:
            raise JobLost(self.job_id)
        if self.cancel_requested:
            raise JobCancelled(self.job_id)

    # ---- the writer thread -------------------------------------------------------------

    def start(self) -> AttemptWriter:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop writing (the attempt is settled); an unwritten step is dropped."""
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        last_write = time.monotonic()  # the claim started the lease
        while not self._stop.wait(PROGRESS_EVERY_S):
            moved = self._step != self._written_step or self._preview is not None
            if not moved and time.monotonic() - last_write < self.renew_every:
                continue
            last_write = time.monotonic()
            try:
                self._write()
            except Exception:  # the database or storage hiccupped: the next tick retries
                log.warning("job %s: could not record progress", self.job_id, exc_info=True)
            if not self.held:
                return

    def _write(self) -> None:
        step, preview = self._step, self._preview
        self._preview = None
        key = None
        if preview is not None and not self._stop.is_set():
            key = preview_key(self.user_id, self.job_id)
            try:
                self.storage.put(key, preview(), "image/jpeg")
            except Exception:  # no preview this time; the lease must still be renewed
                log.warning("job %s: could not store the preview", self.job_id, exc_info=True)
                key = None
        # A pipeline that has not moved for this long is stuck: let the lease run out, so
        # the janitor gives the job to another worker.
        stuck = time.monotonic() - self._moved_at > self.settings.job_stale_after_s
        lease = service.renew(
            self.settings,
            self.job_id,
            self.attempt,
            step=step if step != self._written_step else None,
            preview_key=key,
            extend=not stuck,
        )
        self.writes += 1
        self._written_step = step
        self.cancel_requested = lease.cancel_requested
        if not lease.held:
            self.held = False
            finished = service.status_of(self.settings, self.job_id) in service.FINISHED
            if not finished:  # requeued by the janitor: worth an operator's attention
                log.warning("job %s: attempt %d no longer holds the job", self.job_id, self.attempt)
            # (finished: this attempt just recorded it, or its owner cancelled it; nothing to say)
            if key and finished:
                self.storage.delete(key)  # a late preview of a job that ended meanwhile
