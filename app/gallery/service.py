"""The user's own images: one query per page, always filtered by owner."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import NotFound
from app.gallery.models import Image

PAGE_SIZE = 24


@dataclass(frozen=True)
class Page:
    images: list[Image]
    number: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // PAGE_SIZE))

    @property
    def has_next(self) -> bool:
        return self.number < self.pages

    @property
    def has_prev(self) -> bool:
        return self.number > 1


def list_images(session: Session, user_id: int, page: int = 1) -> Page:
    """Newest first."""
    page = max(1, page)
    total = session.scalar(select(func.count()).select_from(Image).where(Image.user_id == user_id)) or 0
    images = session.scalars(
        select(Image)
        .where(Image.user_id == user_id)
        .order_by(Image.created_at.desc(), Image.index)
        .limit(PAGE_SIZE)
        .offset((page - 1) * PAGE_SIZE)
    ).all()
    return Page(images=list(images), number=page, total=total)


def get_image(session: Session, user_id: int, image_id: str) -> Image:
    """The user's own image, or NotFound (the same answer whether it exists or not)."""
    image = session.get(Image, image_id)
    if image is None or image.user_id != user_id:
        raise NotFound("No such image.")
    return image
