from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, utcnow

if TYPE_CHECKING:  # generation imports the gallery, never the other way round at runtime
    from app.generation.models import Job

ASPECTS = ("square", "portrait", "landscape")


def aspect_of(width: int, height: int) -> str:
    """The aspect filter's bucket for an image of this size."""
    if width == height:
        return "square"
    return "portrait" if height > width else "landscape"


def _newest_first(name: str, *columns: str) -> Index:
    # Every filter's first page is one range scan: the user's rows with that value,
    # already in (created_at, id) order, so it costs the same at 1k or 100k images.
    return Index(name, "user_id", *columns, "created_at", "id")


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        _newest_first("ix_images_user_created_id"),
        _newest_first("ix_images_user_mode", "mode"),
        _newest_first("ix_images_user_model", "model"),
        _newest_first("ix_images_user_aspect", "aspect"),
        _newest_first("ix_images_user_favourite", "favourite"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(512))
    # A small WebP made by the worker next to the PNG; None for images made before thumbnails.
    thumbnail_key: Mapped[str | None] = mapped_column(String(512))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    # Copied from the job (and the size) so each gallery filter has its own index.
    mode: Mapped[str] = mapped_column(String(16), default="txt2img", server_default="txt2img")
    model: Mapped[str] = mapped_column(String(255), default="", server_default="")
    aspect: Mapped[str] = mapped_column(String(9), default="square", server_default="square")
    favourite: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    # "Job" is found in the mapper registry: whoever uses Image imports app.generation.models too
    job: Mapped[Job] = relationship("Job", lazy="joined")


class Collection(Base):
    """A user's named set of images (a board); an image may be in several."""

    __tablename__ = "collections"
    __table_args__ = (
        UniqueConstraint("user_id", "name"),
        Index("ix_collections_user_request", "user_id", "client_request_id", unique=True),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The API's Idempotency-Key it was created with: a retried create finds this collection.
    client_request_id: Mapped[str | None] = mapped_column(String(64))


class CollectionImage(Base):
    __tablename__ = "collection_images"
    # A collection's first page is a range scan of its members in the gallery's order
    # (the image's created_at is copied here; it never changes).
    __table_args__ = (Index("ix_collection_images_order", "collection_id", "image_created_at", "image_id"),)

    collection_id: Mapped[str] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True, index=True)
    image_created_at: Mapped[datetime]
    added_at: Mapped[datetime] = mapped_column(default=utcnow)
