"""The gallery's shapes in the JSON API: an image's metadata, collections, and the bodies
that change them. The filters of a listing are parsed by ``search.parse_filters``, the
same as the gallery page's query string."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from app.gallery.service import MAX_BULK


class GalleryImageOut(BaseModel):
    """One image of the gallery and how it was made."""

    id: str
    job_id: str
    index: int
    width: int
    height: int
    seed: int
    prompt: str
    negative_prompt: str
    model: str
    mode: str
    aspect: str
    sampler: str
    steps: int
    guidance: float
    strength: float | None
    licence: str
    licence_url: str
    favourite: bool
    created_at: datetime
    url: str  # the PNG, its generation parameters embedded
    thumbnail_url: str  # a WebP, longest side 384
    collections: list[str] | None = None  # the ids of your collections that hold it (one image's read only)


class ImageUpdate(BaseModel):
    favourite: bool


class CollectionOut(BaseModel):
    id: str
    name: str
    count: int | None = None  # how many images it holds
    cover_image_id: str | None = None  # its newest image


class CollectionIn(BaseModel):
    name: str = Field(description="Unique among your collections (case-insensitively); at most 80 characters.")
    image_ids: list[str] = Field(default_factory=list, max_length=MAX_BULK, description="Images to put in it.")


class CollectionUpdate(BaseModel):
    name: str


class ImageIds(BaseModel):
    image_ids: list[str] = Field(min_length=1, max_length=MAX_BULK)


class Added(BaseModel):
    added: int  # how many were new to the collection
