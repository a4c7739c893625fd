"""Jobs and purchases for the admin and metrics tests, made without a worker or Stripe:
the rows and ledger entries the services leave behind."""

from __future__ import annotations

import uuid
from datetime import timedelta

from app.credits import ledger
from app.credits.models import PAID, Purchase
from app.db import transaction, utcnow
from app.enums import JobStatus
from app.generation.models import Job


def make_job(
    settings,
    owner: int,
    status: JobStatus,
    *,
    model: str = "tiny",
    price: int = 10,
    n_images: int = 1,
    seconds: float | None = None,
    error: str = "",
    prompt: str = "a lighthouse at dusk",
    created_ago: timedelta = timedelta(minutes=5),
) -> str:
    """A job row as the services leave it in ``status``: held, then captured (succeeded) or
    released (failed, cancelled)."""
    job_id = str(uuid.uuid4())
    created = utcnow() - created_ago
    started = created + timedelta(seconds=1) if status != JobStatus.QUEUED else None
    finished = started + timedelta(seconds=seconds or 2) if status.finished and started else None
    with transaction(settings) as session:
        session.add(
            Job(
                id=job_id,
                user_id=owner,
                client_request_id=uuid.uuid4().hex,
                status=status,
                model=model,
                prompt=prompt,
                width=64,
                height=64,
                steps=4,
                guidance=7.5,
                seed=1,
                n_images=n_images,
                price=price,
                error=error,
                created_at=created,
                started_at=started,
                finished_at=finished,
                attempts=0 if status == JobStatus.QUEUED else 1,
            )
        )
        session.flush()
        ledger.hold(session, owner, price, job_id=job_id, memo="test job")
        if status == JobStatus.SUCCEEDED:
            ledger.capture(session, owner, job_id=job_id)
        elif status in (JobStatus.FAILED, JobStatus.CANCELLED):
            ledger.release(session, owner, price, job_id=job_id, memo="released")
    return job_id


def paid_purchase(settings, owner: int, *, credits: int, amount: int, provider: str = "stripe") -> str:
    purchase_id = str(uuid.uuid4())
    with transaction(settings) as session:
        session.add(
            Purchase(
                id=purchase_id,
                user_id=owner,
                pack_id="starter",
                credits=credits,
                amount=amount,
                currency="usd",
                provider=provider,
                status=PAID,
                paid_at=utcnow(),
            )
        )
        session.flush()
        ledger.credit_purchase(session, owner, credits, purchase_id=purchase_id, memo="bought")
    return purchase_id
