"""Billing histories for tests, made without a model or a worker: jobs held, claimed and settled
through the same service functions a worker calls, purchases through the test checkout's
fulfilment, grants and adjustments through the ledger."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select, update

from app.credits import ledger
from app.credits import service as credits
from app.credits.models import LedgerEntry, Purchase
from app.db import transaction, utcnow
from app.enums import JobStatus
from app.gallery import thumbnails
from app.generation import service as generation
from app.generation.models import Job
from app.storage import get_storage, image_key, thumbnail_key
from tests.gallery_data import png


def add_job(
    settings,
    user_id: int,
    prompt: str,
    *,
    status: str = JobStatus.SUCCEEDED,
    price: int = 4,
    n_images: int = 1,
    size: tuple[int, int] = (64, 64),
    mode: str = "txt2img",
    colour: tuple[int, int, int] = (200, 80, 40),
) -> str:
    """A job submitted (its price held) and brought to ``status`` as a worker would: succeeded
    (images stored, charge captured), failed or cancelled (hold released), running (claimed,
    still held) or queued. Returns its id."""
    job_id = str(uuid.uuid4())
    width, height = size
    with transaction(settings) as session:
        session.add(
            Job(
                id=job_id,
                user_id=user_id,
                client_request_id=job_id,
                status=JobStatus.QUEUED,
                mode=mode,
                model="demo",
                prompt=prompt,
                width=width,
                height=height,
                steps=4,
                guidance=5.0,
                seed=7,
                n_images=n_images,
                price=price,
                strength=None if mode == "txt2img" else 0.5,
            )  # fmt: skip
        )
        session.flush()
        ledger.hold(session, user_id, price, job_id=job_id, memo=f"{n_images} image(s), {width}×{height}, 4 steps")
    if status == JobStatus.QUEUED:
        return job_id
    if status == JobStatus.CANCELLED:
        generation.settle_cancelled(settings, job_id)
        return job_id
    claimed = generation.claim(settings, job_id)
    assert claimed is not None
    if status == JobStatus.FAILED:
        assert generation.fail(settings, job_id, "The model ran out of memory.", claimed.attempts)
    elif status == JobStatus.SUCCEEDED:
        storage = get_storage(settings)
        stored = []
        for index in range(n_images):
            data = png(size, colour)
            key, thumb = image_key(user_id, job_id, index), thumbnail_key(user_id, job_id, index)
            storage.put(key, data, "image/png")
            storage.put(thumb, thumbnails.webp_from_png(data), "image/webp")
            stored.append(generation.StoredImage(key, thumb, index, 7 + index, width, height))
        assert generation.succeed(settings, claimed, stored)
    return job_id


def buy(settings, user_id: int, pack_id: str = "starter") -> str:
    """A pack bought through the local test checkout; returns the purchase's id."""
    pack = settings.pack(pack_id)
    purchase = Purchase(
        id=str(uuid.uuid4()), user_id=user_id, pack_id=pack.id, credits=pack.credits, amount=pack.amount,
        currency=pack.currency, provider=credits.TEST_PROVIDER,
    )  # fmt: skip
    with transaction(settings) as session:
        session.add(purchase)
    credits._fulfil(settings, purchase.id, payment_intent_id=None)
    return purchase.id


def grant(settings, user_id: int, amount: int, memo: str, key: str | None = None) -> None:
    with transaction(settings) as session:
        ledger.grant(session, user_id, amount, key=key or f"test:{uuid.uuid4()}", memo=memo, reference="admin:test")


def adjust(settings, user_id: int, delta: int, memo: str) -> None:
    with transaction(settings) as session:
        ledger.adjust(session, user_id, delta, key=f"test:{uuid.uuid4()}", memo=memo, reference="admin:test")


def ledger_balances(settings, user_id: int) -> dict[int, int]:
    """Each of the user's ledger entries' id -> the balance right after it (the ledger's own sums)."""
    with transaction(settings) as session:
        entries = session.execute(
            select(LedgerEntry.id, LedgerEntry.amount).where(LedgerEntry.user_id == user_id).order_by(LedgerEntry.id)
        ).all()
    running, after = 0, {}
    for entry_id, amount in entries:
        running += amount
        after[entry_id] = running
    return after


def age_entries(settings, user_id: int, days: int) -> None:
    """Move the user's ledger entries ``days`` back, oldest first, one minute apart (for pages that show times)."""
    start = utcnow() - timedelta(days=days)
    with transaction(settings) as session:
        ids = session.scalars(select(LedgerEntry.id).where(LedgerEntry.user_id == user_id).order_by(LedgerEntry.id))
        for i, entry_id in enumerate(list(ids)):
            session.execute(
                update(LedgerEntry)
                .where(LedgerEntry.id == entry_id)
                .values(created_at=start + timedelta(minutes=7 * i))
            )
