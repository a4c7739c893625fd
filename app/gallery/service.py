"""The user's own images: filters -> one query, keyset pages, favourites, collections,
deletion (rows and storage objects), zip downloads. Every function takes the owner's
id and answers NotFound for anything that is not theirs."""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import re
import uuid
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlencode

from sqlalchemy import Select, delete, func, literal_column, select, table, true, tuple_, update
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import UnaryExpression

from app.config import Settings
from app.db import transaction
from app.enums import MODES
from app.errors import NotFound, UserError
from app.gallery import thumbnails
from app.gallery.models import ASPECTS, Collection, CollectionImage, Image, aspect_of
from app.generation.models import Job
from app.storage import ObjectNotFound, get_storage, thumbnail_key

log = logging.getLogger(__name__)

PAGE_SIZE = 30
MAX_BULK = 500  # images one bulk action may name
MAX_SEARCH_WORDS = 8
SORTS = ("newest", "oldest")

# ---- filters ---------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """What the gallery shows; all of it lives in the URL's query string."""

    q: str = ""
    model: str = ""
    mode: str = ""
    date_from: date | None = None
    date_to: date | None = None
    aspect: str = ""
    favourites: bool = False
    collection: str = ""
    sort: str = "newest"

    @property
    def active(self) -> bool:
        return self != Filters(sort=self.sort)

    def params(self, **changes) -> dict[str, str]:
        """The non-default filters as query parameters (with ``changes`` applied)."""
        values = asdict(replace(self, **changes))
        out = {}
        for name, value in values.items():
            if name == "sort" and value == "newest":
                continue
            if value in ("", None, False):
                continue
            out[name] = "1" if value is True else value.isoformat() if isinstance(value, date) else str(value)
        return out

    def query(self, **changes) -> str:
        return urlencode(self.params(**changes))


FILTER_FIELDS = tuple(Filters.__dataclass_fields__)


def _date(params, name: str, label: str) -> date | None:
    raw = (params.get(name) or "").strip()
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise UserError(f"The {label} date must look like 2024-05-31.", field=name) from None


def parse_filters(params) -> Filters:
    """The filters in a query string, checked once; bad values are a UserError naming the field."""

    def text(name: str, limit: int) -> str:
        return str(params.get(name) or "").strip()[:limit]

    mode, aspect, sort = text("mode", 16), text("aspect", 16), text("sort", 16) or "newest"
    if mode and mode not in MODES:
        raise UserError(f"Unknown mode {mode!r}; choose one of {', '.join(MODES)}.", field="mode")
    if aspect and aspect not in ASPECTS:
        raise UserError(f"Unknown aspect {aspect!r}; choose square, portrait or landscape.", field="aspect")
    if sort not in SORTS:
        raise UserError("Sort by newest or oldest.", field="sort")
    date_from, date_to = _date(params, "date_from", "from"), _date(params, "date_to", "to")
    if date_from and date_to and date_to < date_from:
        raise UserError("The “to” date is before the “from” date.", field="date_to")
    favourites = text("favourites", 8).lower()
    if favourites not in ("", "0", "1", "true", "false", "on", "off"):
        raise UserError("favourites must be 1 or 0.", field="favourites")
    return Filters(
        q=text("q", 200),
        model=text("model", 255),
        mode=mode,
        date_from=date_from,
        date_to=date_to,
        aspect=aspect,
        favourites=favourites in ("1", "true", "on"),
        collection=text("collection", 36),
        sort=sort,
    )


def search_words(q: str) -> list[str]:
    """The words of a search box, lower-cased (punctuation and search syntax dropped)."""
    return re.findall(r"[^\W_]+", q.lower())[:MAX_SEARCH_WORDS]


_fts = table("image_search", literal_column("rowid"))


def _fts_match(words: list[str]):
    """FTS5: the implicit AND of the words as quoted prefix terms."""
    return literal_column("image_search").op("MATCH")(" ".join(f'"{w}"*' for w in words))


def _search_clause(dialect: str, words: list[str]):
    """Images whose prompt has every word (each as a prefix: "ligh" finds "lighthouse")."""
    if dialect == "sqlite":
        matches = _fts_match(words)
        matching = select(literal_column("rowid")).select_from(_fts).where(matches)
        return literal_column("images.rowid").in_(matching)
    # (SQLite pages walk windows of the gallery and check each against this: _window_ids.)
    # PostgreSQL: images.search, the prompt's 'simple' tsvector stored on the image
    # (migration 0005), so the planner may walk the user's newest images and filter.
    tsquery = func.to_tsquery(literal_column("'simple'::regconfig"), " & ".join(f"{w}:*" for w in words))
    return literal_column("images.search").op("@@")(tsquery)


def _unindexed(column):
    """``+column``: the same value, which SQLite will not look up or order by an index."""
    return UnaryExpression(column, operator=operators.custom_op("+"))


def _filtered(session: Session, user_id: int, filters: Filters, *, from_search: bool = False) -> tuple[Select, tuple]:
    """One SELECT of the user's images matching every filter (not yet ordered), and the
    two columns that order it: the image's (created_at, id), or their copies in the
    collection's membership rows when showing a collection (so its index serves the order).
    ``from_search`` (SQLite): drive the query from the search's match list, not the
    user's indexes (for few matches)."""
    owner = _unindexed(Image.user_id) if from_search else Image.user_id
    query = select(Image).where(owner == user_id)
    order = (Image.created_at, Image.id)
    if words := search_words(filters.q):
        query = query.where(_search_clause(session.get_bind().dialect.name, words))
    if filters.model:
        query = query.where(Image.model == filters.model)
    if filters.mode:
        query = query.where(Image.mode == filters.mode)
    if filters.aspect:
        query = query.where(Image.aspect == filters.aspect)
    if filters.favourites:
        query = query.where(Image.favourite == true())
    if filters.date_from:
        query = query.where(Image.created_at >= datetime.combine(filters.date_from, datetime.min.time(), UTC))
    if filters.date_to:
        end = datetime.combine(filters.date_to + timedelta(days=1), datetime.min.time(), UTC)
        query = query.where(Image.created_at < end)
    if filters.collection:
        get_collection(session, user_id, filters.collection)  # someone else's: 404
        query = query.join(
            CollectionImage,
            (CollectionImage.image_id == Image.id) & (CollectionImage.collection_id == filters.collection),
        )
        order = (CollectionImage.image_created_at, CollectionImage.image_id)
    return query, order


# ---- keyset pages ----------------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    """A position in the gallery's order: the last image shown (created_at, id)."""

    created_at: datetime
    id: str

    def encode(self) -> str:
        raw = f"{self.created_at.isoformat()}|{self.id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            when, image_id = raw.split("|", 1)
            created_at = datetime.fromisoformat(when)
            if created_at.tzinfo is None or not image_id:
                raise ValueError
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise UserError("That page link is broken; start again from the first page.", field="after") from None
        return cls(created_at.astimezone(UTC), image_id)

    @classmethod
    def of(cls, image: Image) -> Cursor:
        return cls(image.created_at, image.id)


@dataclass(frozen=True)
class Page:
    images: list[Image]
    filters: Filters
    next_cursor: str | None = None
    collections: list = field(default_factory=list)

    @property
    def has_next(self) -> bool:
        return self.next_cursor is not None


def _ordered(filtered: tuple[Select, tuple], sort: str, after: Cursor | None, *, backwards: bool = False) -> Select:
    query, (created_at, image_id) = filtered
    newest = (sort == "newest") != backwards
    key = tuple_(created_at, image_id)
    if after is not None:
        position = tuple_(after.created_at, after.id)
        query = query.where(key < position if newest else key > position)
    if newest:
        return query.order_by(created_at.desc(), image_id.desc())
    return query.order_by(created_at, image_id)


# SQLite search: FTS5 yields its matches in rowid order only, and building the whole
# match list of a common word costs more the more images match. So a page walks the
# user's images in gallery order (every other filter and the cursor applied by their
# index) a window at a time, and keeps the candidates that FTS5 matches within the
# window's rowid range, a bound FTS5 applies natively. The result never depends on how
# rowids relate to created_at; only the cost does. When the words turn out rare, the
# rest comes from the plain query, whose match list is then short.
WINDOW_FIRST = 4  # the first window: this many candidates per image wanted
WINDOW_WALK_LIMIT = 256  # candidates walked before the plain query does the rest


def _windowed(session: Session, filters: Filters) -> bool:
    return bool(search_words(filters.q)) and session.get_bind().dialect.name == "sqlite"


def _window_ids(
    session: Session, user_id: int, filters: Filters, cursor: Cursor | None, want: int, *, backwards: bool = False
) -> list[str]:
    """The ids of the first ``want`` images after ``cursor`` that match ``filters`` (with
    search words, on SQLite), in gallery order: exactly what the plain query gives."""
    plain, order = _filtered(session, user_id, replace(filters, q=""))
    matches = _fts_match(search_words(filters.q))
    rowid = literal_column("images.rowid")
    candidates = (plain.with_only_columns(rowid.label("r"), order[0].label("ca"), order[1].label("id")), order)
    newest = (filters.sort == "newest") != backwards
    found: list[str] = []
    walked, size, position = 0, WINDOW_FIRST * want, cursor
    while True:
        window = _ordered(candidates, filters.sort, position, backwards=backwards).limit(size)
        w = window.cte("w").prefix_with("MATERIALIZED")
        fts_rowid = literal_column("image_search.rowid")
        in_range = fts_rowid.between(
            select(func.min(w.c.r)).scalar_subquery(), select(func.max(w.c.r)).scalar_subquery()
        )
        # newest first seeks the doclists from their end (FTS5 seeks forward slowly); the
        # LIMIT keeps SQLite from dropping that ORDER BY inside IN (...)
        hits = (
            select(fts_rowid)
            .select_from(_fts)
            .where(matches, in_range)
            .order_by(fts_rowid.desc() if newest else fts_rowid)
            .limit(1 << 40)
        )
        edge = (w.c.ca, w.c.id) if newest else (w.c.ca.desc(), w.c.id.desc())
        last = (
            select(w.c.id, w.c.ca, select(func.count()).select_from(w).scalar_subquery())
            .order_by(*edge)
            .limit(1)
            .subquery()
        )
        rows = session.execute(
            select(w.c.id, w.c.ca, literal_column("-1")).where(w.c.r.in_(hits)).union_all(select(last))
        ).all()
        if not rows:
            return found  # nothing left to walk
        *hit_rows, (last_id, last_at, count) = rows
        hit_rows.sort(key=lambda row: (row[1], row[0]), reverse=newest)
        found += [image_id for image_id, _, _ in hit_rows]
        walked += count
        if len(found) >= want or count < size:
            return found[:want]
        position = Cursor(last_at, last_id)
        # size the next window by the density seen so far; too sparse: the plain query
        density = len(found) / walked
        needed = int((want - len(found)) / density * 1.25) + 1 if density else WINDOW_WALK_LIMIT + 1
        if walked + needed > WINDOW_WALK_LIMIT:
            break
        size = max(needed, size)
    if found:
        # Some matches nearby: walking on through the user's index finds the rest soon.
        searched, keys = _filtered(session, user_id, filters)
        keys_searched = (searched.with_only_columns(Image.id), keys)
    else:
        # None in the newest windows: the matches are few, so sort FTS5's short match list
        # rather than walk the user's whole index looking for them (the plan SQLite picks
        # for an ORDER BY ... LIMIT that an index can serve, hence the unindexed keys).
        searched, keys = _filtered(session, user_id, filters, from_search=True)
        keys_searched = (searched.with_only_columns(Image.id), tuple(map(_unindexed, keys)))
    rest = _ordered(keys_searched, filters.sort, position, backwards=backwards)
    return found + list(session.scalars(rest.limit(want - len(found))))


def list_images(
    session: Session, user_id: int, filters: Filters = Filters(), after: str | None = None, limit: int = PAGE_SIZE
) -> Page:
    """One page of the user's images that match ``filters``, after the ``after`` cursor.

    Keyset pagination on (created_at, id): each page is an index range scan, however
    deep, and images made meanwhile never shift a page.
    """
    cursor = Cursor.decode(after) if after else None
    if _windowed(session, filters):
        ids = _window_ids(session, user_id, filters, cursor, limit + 1)
        found = {image.id: image for image in session.scalars(select(Image).where(Image.id.in_(ids)))}
        rows = [found[image_id] for image_id in ids]
    else:
        query = _ordered(_filtered(session, user_id, filters), filters.sort, cursor)
        if filters.q:
            # a search's page loads its jobs (for their prompts) in a second query: joined to
            # every match, they would be read before the sort picks the page (PostgreSQL's GIN plan)
            query = query.options(selectinload(Image.job))
        rows = list(session.scalars(query.limit(limit + 1)))
    next_cursor = Cursor.of(rows[limit - 1]).encode() if len(rows) > limit else None
    return Page(images=rows[:limit], filters=filters, next_cursor=next_cursor)


def neighbours(session: Session, user_id: int, image: Image, filters: Filters) -> tuple[str | None, str | None]:
    """The ids of the images before and after ``image`` in the gallery as filtered (for ←/→)."""
    here = Cursor.of(image)
    if _windowed(session, filters):
        before = _window_ids(session, user_id, filters, here, 1, backwards=True)
        after = _window_ids(session, user_id, filters, here, 1)
        return (before or [None])[0], (after or [None])[0]
    query, order = _filtered(session, user_id, filters)
    base = (query.with_only_columns(Image.id), order)
    before = session.scalar(_ordered(base, filters.sort, here, backwards=True).limit(1))
    after = session.scalar(_ordered(base, filters.sort, here).limit(1))
    return before, after


def model_options(session: Session, user_id: int, limit: int = 50) -> list[str]:
    """The models the user's images were made with: one index seek per model (a skip scan),
    so it costs the same with 100 or 100,000 images."""
    models, last = [], None
    while len(models) < limit:
        query = select(func.min(Image.model)).where(Image.user_id == user_id)
        if last is not None:
            query = query.where(Image.model > last)
        last = session.scalar(query)
        if last is None:
            break
        models.append(last)
    return models


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


def thumbnail(settings: Settings, user_id: int, image_id: str) -> bytes:
    """The image's WebP thumbnail. Images made before thumbnails get one now, stored and
    recorded, so this happens once per image."""
    with transaction(settings) as session:
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
        recorded = session.execute(update(Image).where(Image.id == image_id).values(thumbnail_key=derived)).rowcount
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


# ---- collections ------------------------------------------------------------------------


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
    collection = session.get(Collection, str(collection_id))
    if collection is None or collection.user_id != user_id:
        raise NotFound("No such collection.")
    return collection


def create_collection(session: Session, user_id: int, name: str) -> Collection:
    name = _collection_name(name)
    _check_name_free(session, user_id, name)
    collection = Collection(id=str(uuid.uuid4()), user_id=user_id, name=name)
    session.add(collection)
    session.flush()
    return collection


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


def remove_from_collection(session: Session, user_id: int, collection_id: str, image_ids: Iterable[str]) -> None:
    collection = get_collection(session, user_id, collection_id)
    ids = [image.id for image in owned_images(session, user_id, image_ids)]
    session.execute(
        delete(CollectionImage).where(CollectionImage.collection_id == collection.id, CollectionImage.image_id.in_(ids))
    )


def list_collections(session: Session, user_id: int, *, summaries: bool = True) -> list[CollectionSummary]:
    """The user's collections by name, with how many images each holds and its newest image
    (``summaries=False``: names only, which costs nothing however full they are)."""
    if not summaries:
        rows = session.execute(
            select(Collection.id, Collection.name)
            .where(Collection.user_id == user_id)
            .order_by(func.lower(Collection.name))
        )
        return [CollectionSummary(id, name, None, None) for id, name in rows]
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
    rows = session.execute(
        select(Collection.id, Collection.name, count, cover)
        .where(Collection.user_id == user_id)
        .order_by(func.lower(Collection.name))
    )
    return [CollectionSummary(*row) for row in rows]


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


# ---- zip download ------------------------------------------------------------------------


@dataclass(frozen=True)
class ZipEntry:
    name: str
    key: str
    about: dict


def zip_entries(session: Session, user_id: int, image_ids: Iterable[str], model_name) -> list[ZipEntry]:
    """What a bulk download holds: each original PNG (its generation parameters embedded)
    and, in ``images.json``, the same facts for every file."""
    entries = []
    for image in owned_images(session, user_id, image_ids):
        job = image.job
        stamp = image.created_at.strftime("%Y%m%d-%H%M%S")
        entries.append(
            ZipEntry(
                name=f"gouache-{stamp}-{image.seed}-{image.id[:8]}.png",
                key=image.storage_key,
                about={
                    "id": image.id,
                    "prompt": job.prompt,
                    "negative_prompt": job.negative_prompt,
                    "mode": image.mode,
                    "model": model_name(image.model),
                    "width": image.width,
                    "height": image.height,
                    "steps": job.steps,
                    "guidance": job.guidance,
                    "sampler": job.sampler,
                    "seed": image.seed,
                    "strength": job.strength,
                    "created_at": image.created_at.isoformat(),
                    "favourite": image.favourite,
                },
            )
        )
    return entries


class _Sink(io.RawIOBase):
    """A write-only stream that hands back what was written since the last drain."""

    def __init__(self):
        self._chunks: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._chunks.append(bytes(data))
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def drain(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def zip_stream(settings: Settings, entries: list[ZipEntry]) -> Iterator[bytes]:
    """The zip, built and sent one file at a time (never the whole archive in memory)."""
    storage = get_storage(settings)
    sink = _Sink()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED) as archive:
        manifest = []
        for entry in entries:
            try:
                data = storage.get(entry.key)
            except ObjectNotFound:
                log.warning("zip: %s is missing from storage; skipped", entry.key)
                continue
            archive.writestr(entry.name, data)  # PNG is compressed already
            manifest.append({"file": entry.name, **entry.about})
            yield sink.drain()
        archive.writestr("images.json", json.dumps(manifest, indent=2), compress_type=zipfile.ZIP_DEFLATED)
    yield sink.drain()
