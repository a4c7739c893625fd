"""Collections: the user's named sets of images, and which images are in them. Every
function takes the owner's id and answers NotFound for anything that is not theirs."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.errors import NotFound, UserError
from app.gallery.models import Collection, CollectionImage
from app.gallery.service import owned_images


@dataclass(frozen=True)
class CollectionSummary:
    id: str
    name: str
    count: int | None
    cover_id: str | None


def _collection_name(name: str) -> str:
    name = " ".join(str(name or "").split())
    if not name:
        raise UserError("Give the collection a name.", field="name")
    if len(name) > 80:
        raise UserError("Collection names are at most 80 characters.", field="name")
    return name


def _check_name_free(session: Session, user_id: int, name: str, except_id: str | None = None) -> None:
    clash = session.scalar(
        select(Collection.id).where(Collection.user_id == user_id, func.lower(Collection.name) == name.lower())
    )
    if clash and clash != except_id:
        raise UserError(f"You already have a collection called “{name}”.", field="name")


def get_collection(session: Session, user_id: int, collection_id: str) -> Collection:
    """The user's own collection, or NotFound."""
    collection = session.get(Collection, str(collection_id))
    if collection is None or collection.user_id != user_id:
        raise NotFound("No such collection.")
    return collection


def create_collection(session: Session, user_id: int, name: str, request_id: str | None = None) -> Collection:
    """A new, empty collection; its name is tidied and must differ from the user's others.
    With ``request_id`` (the API's Idempotency-Key), a collection already created with it is
    returned instead (a retried request makes one collection)."""
    if request_id and (existing := collection_for_request(session, user_id, request_id)) is not None:
        return existing
    name = _collection_name(name)
    _check_name_free(session, user_id, name)
    collection = Collection(id=str(uuid.uuid4()), user_id=user_id, name=name, client_request_id=request_id)
    session.add(collection)
    session.flush()
    return collection


def collection_for_request(session: Session, user_id: int, request_id: str) -> Collection | None:
    """The user's collection created with this Idempotency-Key, if any."""
    return session.scalar(
        select(Collection).where(Collection.user_id == user_id, Collection.client_request_id == request_id)
    )


def rename_collection(session: Session, user_id: int, collection_id: str, name: str) -> Collection:
    collection = get_collection(session, user_id, collection_id)
    name = _collection_name(name)
    _check_name_free(session, user_id, name, except_id=collection.id)
    collection.name = name
    return collection


def delete_collection(session: Session, user_id: int, collection_id: str) -> None:
    """The collection goes; its images stay in the gallery (and in other collections)."""
    collection = get_collection(session, user_id, collection_id)
    session.execute(delete(CollectionImage).where(CollectionImage.collection_id == collection.id))
    session.delete(collection)


def add_to_collection(session: Session, user_id: int, collection_id: str, image_ids: Iterable[str]) -> int:
    """Add the user's images to the user's collection; returns how many were new to it."""
    collection = get_collection(session, user_id, collection_id)
    images = owned_images(session, user_id, image_ids)
    ids = [image.id for image in images]
    present = set(
        session.scalars(
            select(CollectionImage.image_id).where(
                CollectionImage.collection_id == collection.id, CollectionImage.image_id.in_(ids)
            )
        )
    )
    new = [image for image in images if image.id not in present]
    session.add_all(
        CollectionImage(collection_id=collection.id, image_id=image.id, image_created_at=image.created_at)
        for image in new
    )
    return len(new)


def collect(session: Session, user_id: int, image_ids: Iterable[str], collection_id: str, new_name: str = "") -> int:
    """Add the images to the chosen collection, or to a new one called ``new_name`` when
    none is chosen (what the gallery's "Add to collection" forms post). Returns how many
    were new to it."""
    if not collection_id and new_name.strip():
        collection_id = create_collection(session, user_id, new_name).id
    if not collection_id:
        raise UserError("Choose a collection, or name a new one.", field="collection")
    return add_to_collection(session, user_id, collection_id, image_ids)


def remove_from_collection(session: Session, user_id: int, collection_id: str, image_ids: Iterable[str]) -> None:
    collection = get_collection(session, user_id, collection_id)
    ids = [image.id for image in owned_images(session, user_id, image_ids)]
    session.execute(
        delete(CollectionImage).where(CollectionImage.collection_id == collection.id, CollectionImage.image_id.in_(ids))
    )


def collection_summary(session: Session, user_id: int, collection_id: str) -> CollectionSummary:
    """One of the user's collections with its size and newest image, or NotFound."""
    get_collection(session, user_id, collection_id)
    return list_collections(session, user_id, only=collection_id)[0]


def list_collections(
    session: Session, user_id: int, *, summaries: bool = True, only: str | None = None
) -> list[CollectionSummary]:
    """The user's collections by name, with how many images each holds and its newest image
    (``summaries=False``: names only, which costs nothing however full they are; ``only``:
    just that one)."""
    if not summaries:
        names = session.execute(
            select(Collection.id, Collection.name)
            .where(Collection.user_id == user_id)
            .order_by(func.lower(Collection.name))
        )
        return [CollectionSummary(id, name, None, None) for id, name in names]
    members = select(func.count()).where(CollectionImage.collection_id == Collection.id)
    count = members.correlate(Collection).scalar_subquery()
    cover = (
        select(CollectionImage.image_id)
        .where(CollectionImage.collection_id == Collection.id)
        .order_by(CollectionImage.image_created_at.desc(), CollectionImage.image_id.desc())
        .limit(1)
        .correlate(Collection)
        .scalar_subquery()
    )
    query = select(Collection.id, Collection.name, count, cover).where(Collection.user_id == user_id)
    if only is not None:
        query = query.where(Collection.id == only)
    rows = session.execute(query.order_by(func.lower(Collection.name)))
    return [CollectionSummary(id, name, size, cover_id) for id, name, size, cover_id in rows]


def collection_size(session: Session, user_id: int, collection_id: str) -> int:
    collection = get_collection(session, user_id, collection_id)
    return session.scalar(select(func.count()).where(CollectionImage.collection_id == collection.id)) or 0


def collections_of(session: Session, user_id: int, image_id: str) -> set[str]:
    """The ids of the user's collections that hold this image."""
    return set(
        session.scalars(
            select(CollectionImage.collection_id)
            .join(Collection, Collection.id == CollectionImage.collection_id)
            .where(CollectionImage.image_id == image_id, Collection.user_id == user_id)
        )
    )
