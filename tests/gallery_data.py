"""Gallery images for tests, made without a model: a job row, an image row (through the
same `image_row` the worker uses) and, unless told otherwise, the PNG and its thumbnail."""

from __future__ import annotations

import io
import uuid
from datetime import datetime

from PIL import Image as PILImage
from sqlalchemy import select

from app.accounts.models import User
from app.db import transaction, utcnow
from app.enums import JobStatus
from app.gallery import service, thumbnails
from app.generation.models import Job
from app.storage import get_storage, image_key, thumbnail_key


def user_id(settings, email: str) -> int:
    with transaction(settings) as session:
        found = session.scalar(select(User.id).where(User.email == email))
        if found is None:
            user = User(email=email, password_hash="not a real hash", balance=0)
            session.add(user)
            session.flush()
            found = user.id
        return found


def png(size=(64, 64), colour=(200, 80, 40)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def add_image(
    settings,
    owner: int,
    prompt: str,
    *,
    mode: str = "txt2img",
    model: str = "models/alpha",
    size: tuple[int, int] = (64, 64),
    created_at: datetime | None = None,
    favourite: bool = False,
    files: bool = True,
    thumbnail: bool = True,
    colour: tuple[int, int, int] = (200, 80, 40),
) -> str:
    """A finished one-image job for ``owner``; returns the image's id."""
    job_id = str(uuid.uuid4())
    width, height = size
    key, thumb = image_key(owner, job_id, 0), thumbnail_key(owner, job_id, 0)
    if files:
        data = png(size, colour)
        storage = get_storage(settings)
        storage.put(key, data, "image/png")
        if thumbnail:
            storage.put(thumb, thumbnails.webp_from_png(data), "image/webp")
    with transaction(settings) as session:
        job = Job(
            id=job_id, user_id=owner, client_request_id=job_id, status=JobStatus.SUCCEEDED, mode=mode, model=model,
            prompt=prompt, width=width, height=height, steps=4, guidance=5.0, seed=1234, n_images=1, price=1,
        )  # fmt: skip
        session.add(job)
        session.flush()
        image = service.image_row(
            job, key=key, thumb_key=thumb if thumbnail else None, index=0, seed=1234, width=width, height=height
        )
        image.created_at = created_at or utcnow()
        image.favourite = favourite
        session.add(image)
        return image.id
