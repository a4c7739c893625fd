"""The user's own images one at a time: looking one up, recording a new one, favourites,
thumbnails made on first view, deletion (rows and storage objects). Every function
takes the owner's id and answers NotFound for anything that is not theirs.

Finding images is in ``search``, collections in ``collections``, the zip in ``export``."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import reading, transaction
from app.errors import NotFound, UserError
from app.gallery import thumbnails
from app.gallery.models import Collection, CollectionImage, Image, aspect_of
from app.storage import ObjectNotFound, get_storage, thumbnail_key

if TYPE_CHECKING:  # generation imports the gallery, not the other way round
    from app.generation.models import Job

log = logging.getLogger(__name__)

MAX_BULK = 500  # images one bulk action may name

# ---- one image ---------------------------------------------------------------------


def get_image(session: Session, user_id: int, image_id: str) -> Image:
    """The user's own image, or NotFound (the same answer whether it exists or not)."""
    image = session.get(Image, image_id)
    if image is None or image.user_id != user_id:
        raise NotFound("No such image.")
    return image


def image_row(job: Job, *, key: str, thumb_key: str | None, index: int, seed: int, width: int, height: int) -> Image:
    """A new gallery image of ``job`` (what the worker records after storing its files)."""
    return Image(
        id=str(uuid.uuid4()),
        user_id=job.user_id,
        job_id=job.id,
        index=index,
        storage_key=key,
        thumbnail_key=thumb_key,
        seed=seed,
        width=width,
        height=height,
        mode=job.mode,
        model=job.model,
        aspect=aspect_of(width, height),
    )


def set_favourite(session: Session, user_id: int, image_id: str, favourite: bool) -> Image:
    image = get_image(session, user_id, image_id)
    image.favourite = favourite
    return image


def set_favourites(session: Session, user_id: int, image_ids: Iterable[str], favourite: bool) -> None:
    """Mark (or unmark) all the named images, or none of them when one is not the user's."""
    for image in owned_images(session, user_id, image_ids):
        image.favourite = favourite


def owned_images(session: Session, user_id: int, image_ids: Iterable[str]) -> list[Image]:
    """The named images, all the user's own, or NotFound (nothing is done to any of them)."""
    ids = list(dict.fromkeys(str(i) for i in image_ids if i))
    if not ids:
        raise UserError("Select one or more images first.", field="ids")
    if len(ids) > MAX_BULK:
        raise UserError(f"Select at most {MAX_BULK} images at a time.", field="ids")
    images = list(session.scalars(select(Image).where(Image.id.in_(ids), Image.user_id == user_id)))
    if len(images) != len(ids):
        raise NotFound("No such image.")
    order = {image_id: i for i, image_id in enumerate(ids)}
    return sorted(images, key=lambda image: order[image.id])


def original(settings: Settings, user_id: int, image_id: str) -> bytes:
    """The image's PNG as stored (its generation parameters embedded)."""
    with reading(settings) as session:
        key = get_image(session, user_id, image_id).storage_key
    try:
        return get_storage(settings).get(key)
    except ObjectNotFound:
        raise NotFound("This image's file is missing.") from None


def thumbnail(settings: Settings, user_id: int, image_id: str) -> bytes:
    """The image's WebP thumbnail. Images made before thumbnails get one now, stored and
    recorded, so this happens once per image."""
    with reading(settings) as session:
        image = get_image(session, user_id, image_id)
        key, thumb_key = image.storage_key, image.thumbnail_key
        derived = thumbnail_key(image.user_id, image.job_id, image.index)
    storage = get_storage(settings)
    if thumb_key:
        try:
            return storage.get(thumb_key)
        except ObjectNotFound:
            pass
    try:
        data = thumbnails.webp_from_png(storage.get(key))
    except ObjectNotFound:
        raise NotFound("This image's file is missing.") from None
    storage.put(derived, data, "image/webp")
    with transaction(settings) as session:
        record = update(Image).where(Image.id == image_id).values(thumbnail_key=derived)
        # an UPDATE gives a CursorResult (rowcount); Session.execute is typed as any Result
        result = cast(CursorResult[Any], session.execute(record))
        recorded = result.rowcount
    if not recorded:  # deleted meanwhile: leave nothing behind
        storage.delete(derived)
    return data


# ---- deletion ------------------------------------------------------------------------


def _object_keys(image: Image) -> list[str]:
    # the derived thumbnail key too: a lazily made thumbnail may not be recorded yet
    keys = [image.storage_key, image.thumbnail_key, thumbnail_key(image.user_id, image.job_id, image.index)]
    return list(dict.fromkeys(k for k in keys if k))


def delete_images(settings: Settings, user_id: int, image_ids: Iterable[str]) -> int:
    """Remove the user's images from the gallery (rows, collection memberships), then
    their objects (PNG and thumbnail) from storage. Returns how many were deleted."""
    with transaction(settings) as session:
        images = owned_images(session, user_id, image_ids)
        ids = [image.id for image in images]
        keys = [key for image in images for key in _object_keys(image)]
        session.execute(delete(CollectionImage).where(CollectionImage.image_id.in_(ids)))
        gone = delete(Image).where(Image.id.in_(ids), Image.user_id == user_id)
        session.execute(gone.execution_options(synchronize_session=False))
    storage = get_storage(settings)
    for key in keys:
        try:
            storage.delete(key)
        except Exception:  # the rows are gone either way; a retry of the same delete is not possible
            log.exception("could not delete object %s of a deleted image", key)
    return len(ids)


def forget_user(session: Session, user_id: int) -> list[str]:
    """Delete every image and collection of the user (a deleted account), in the caller's
    transaction; returns the storage keys of the images' objects, to delete after the commit."""
    rows = session.execute(
        select(Image.storage_key, Image.thumbnail_key, Image.job_id, Image.index).where(Image.user_id == user_id)
    ).all()
    keys = [
        key
        for storage_key, thumb, job_id, index in rows
        for key in (storage_key, thumb, thumbnail_key(user_id, job_id, index))
        if key
    ]
    theirs = select(Image.id).where(Image.user_id == user_id)
    session.execute(delete(CollectionImage).where(CollectionImage.image_id.in_(theirs)))
    for model in (Image, Collection):
        session.execute(delete(model).where(model.user_id == user_id).execution_options(synchronize_session=False))
    return keys
