from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow
from app.enums import JobStatus


class Job(Base):
    """A generation request. The row, not the broker message, is the record: a worker
    claims it with a conditional update that counts the attempt and starts a lease, and
    every later write names that attempt, so a redelivered task runs once and a worker
    that lost its lease changes nothing."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("user_id", "client_request_id"),
        # Active jobs (few) by status: the janitor, and the per-user cap. Leftover previews and
        # inputs by their keys (NULL once cleaned, so a sweep finds only the work).
        Index("ix_jobs_status", "status", "user_id"),
        Index("ix_jobs_preview_key", "preview_key"),
        Index("ix_jobs_source_key", "source_key"),
        # The API's list of a user's jobs, newest first: each keyset page is one range scan.
        Index("ix_jobs_user_created_id", "user_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    # Sent by the form (and the API's Idempotency-Key): a double submit finds the first job.
    client_request_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    mode: Mapped[str] = mapped_column(String(16), default="txt2img")
    model: Mapped[str] = mapped_column(String(255))
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)
    guidance: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(BigInteger)
    n_images: Mapped[int] = mapped_column(Integer)
    sampler: Mapped[str] = mapped_column(String(32), default="euler", server_default="euler")
    # Image modes: how much of the source to repaint (0..1), the source and mask in
    # object storage, and the gallery image it came from (variations, upscales ...).
    strength: Mapped[float | None] = mapped_column(Float)
    source_key: Mapped[str | None] = mapped_column(String(512))
    mask_key: Mapped[str | None] = mapped_column(String(512))
    source_image_id: Mapped[str | None] = mapped_column(String(36))
    # Set by the owner's Cancel; the worker stops between steps and settles what was made.
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The latest live preview (a small JPEG in object storage), while running.
    preview_key: Mapped[str | None] = mapped_column(String(512))
    # The model's licence when the job ran ("CreativeML Open RAIL-M"), kept with its images.
    licence: Mapped[str] = mapped_column(String(255), default="", server_default="")
    licence_url: Mapped[str] = mapped_column(String(512), default="", server_default="")
    licence_commercial: Mapped[bool | None] = mapped_column(Boolean)  # None: the catalog did not say

    @property
    def commercial_label(self) -> str:
        """What the licence recorded with this job says of commercial use, for people."""
        if self.licence_commercial is None:
            return "check the licence before commercial use"
        return "commercial use allowed" if self.licence_commercial else "commercial use not allowed"

    price: Mapped[int] = mapped_column(Integer)
    progress_step: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    # Last sign of life from the worker (claim, each renewal).
    heartbeat_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None] = mapped_column(index=True)  # the operator's reads by time
    # Transactional enqueue: NULL until the broker accepted the job's message (the row
    # and its hold commit first); the janitor sends a queued job still NULL.
    sent_at: Mapped[datetime | None]
    # The running attempt's lease, renewed by its worker; expired, the janitor requeues it.
    lease_expires_at: Mapped[datetime | None]
    # Claims so far; the running one is the attempt every worker-side write names.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    @property
    def done(self) -> bool:
        return JobStatus(self.status).finished

    @property
    def progress(self) -> float:
        if self.status == JobStatus.SUCCEEDED:
            return 1.0
        return min(1.0, self.progress_step / self.steps) if self.steps else 0.0
