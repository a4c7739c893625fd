"""Finding the user's images: the filters in a URL -> one query, keyset pages, the
neighbours of an image, and the prompt search (SQLite FTS5, PostgreSQL tsvector), stemmed
on both: "stars" finds "star", "painting" finds "paint" (migration 0014)."""

from __future__ import annotations

import base64
import binascii
import functools
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, Select, func, literal_column, select, table, true, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session, selectinload
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import ColumnClause, UnaryExpression

from app.enums import MODES
from app.errors import UserError
from app.gallery.collections import get_collection
from app.gallery.models import ASPECTS, CollectionImage, Image

PAGE_SIZE = 30
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

    def params(self, **changes: Any) -> dict[str, str]:
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

    def query(self, **changes: Any) -> str:
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


# ---- the prompt search ---------------------------------------------------------------


def search_words(q: str) -> list[str]:
    """The words of a search box, lower-cased (punctuation and search syntax dropped)."""
    return re.findall(r"[^\W_]+", q.lower())[:MAX_SEARCH_WORDS]


_fts = table("image_search", literal_column("rowid"))
_image_rowid: ColumnClause[int] = literal_column("images.rowid")
_fts_rowid: ColumnClause[int] = literal_column("image_search.rowid")


def _fts_match(words: list[str]) -> ColumnElement[Any]:
    """FTS5: the implicit AND of the words as quoted prefix terms. The table's porter
    tokenizer stems each term as it stems the prompts ("stars"* -> "star"*), so a word
    matches the prompt words that share its stem, or whose stem starts with it ("ligh"*
    finds "lighthous"). A word typed past its stem ("paintin") finds nothing until it is
    whole: the table holds only stems (PostgreSQL also holds the words as written)."""
    return literal_column("image_search").op("MATCH")(" ".join(f'"{w}"*' for w in words))


def _search_clause(dialect: str, words: list[str]) -> ColumnElement[Any]:
    """Images whose prompt has every word (each as a prefix: "ligh" finds "lighthouse")."""
    if dialect == "sqlite":
        rowid: ColumnClause[int] = literal_column("rowid")
        return _image_rowid.in_(select(rowid).select_from(_fts).where(_fts_match(words)))
    # (SQLite pages walk windows of the gallery and check each against this: _window_ids.)
    # PostgreSQL: images.search, stored on the image (migration 0005), so the planner may
    # walk the user's newest images and filter; it holds the prompt's 'english' stems and
    # its 'simple' words (0014), and each word may match either: its stem as a prefix
    # ("stars" -> 'star':*), or itself as written (stop words such as "in", and words
    # still being typed, "paintin", which stem to no prefix of their word's stem).
    each = [_tsquery("english", w).op("||")(_tsquery("simple", w)) for w in words]
    tsquery = functools.reduce(lambda every, either: every.op("&&")(either), each)
    return literal_column("images.search").op("@@")(tsquery)


def _tsquery(config: str, word: str) -> ColumnElement[Any]:
    return func.to_tsquery(literal_column(f"'{config}'::regconfig"), f"{word}:*")


# ---- one query -------------------------------------------------------------------


def _unindexed(column: ColumnElement[Any] | InstrumentedAttribute[Any]) -> UnaryExpression[Any]:
    """``+column``: the same value, which SQLite will not look up or order by an index."""
    return UnaryExpression(column.expression, operator=operators.custom_op("+"))


def _filtered(session: Session, user_id: int, filters: Filters, *, from_search: bool = False) -> tuple[Select, tuple]:
    """One SELECT of the user's images matching every filter (not yet ordered), and the
    two columns that order it: the image's (created_at, id), or their copies in the
    collection's membership rows when showing a collection (so its index serves the order).
    ``from_search`` (SQLite): drive the query from the search's match list, not the
    user's indexes (for few matches)."""
    owner = _unindexed(Image.user_id) if from_search else Image.user_id
    query = select(Image).where(owner == user_id)
    order: tuple = (Image.created_at, Image.id)
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
    if filters.date_to and filters.date_to < date.max:  # up to the last day there is: no end
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
            if created_at.tzinfo is None or not image_id or len(image_id) > 64:
                raise ValueError
            created_at = created_at.astimezone(UTC)  # OverflowError past year 9999 or before year 1
        except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
            raise UserError("That page link is broken; start again from the first page.", field="after") from None
        return cls(created_at, image_id)

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


# ---- SQLite: the search as a walk through windows of the gallery ---------------------

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


@dataclass(frozen=True)
class _Window:
    """What one window held: the ids FTS5 matched (in gallery order), how many
    candidates it walked, and the last of them (where the next window starts)."""

    hits: list[str]
    walked: int
    last: Cursor


def _candidates(session: Session, user_id: int, filters: Filters) -> tuple[Select, tuple]:
    """The user's images that pass every filter but the search words, as (rowid, created_at,
    id) rows with the columns that order them: what the windows walk through."""
    plain, order = _filtered(session, user_id, replace(filters, q=""))
    return plain.with_only_columns(_image_rowid.label("r"), order[0].label("ca"), order[1].label("id")), order


def _walk_window(
    session: Session,
    candidates: tuple[Select, tuple],
    filters: Filters,
    position: Cursor | None,
    size: int,
    *,
    backwards: bool,
) -> _Window | None:
    """The next ``size`` candidates after ``position`` and which of them FTS5 matches, in one
    statement; None when no candidate is left."""
    newest = (filters.sort == "newest") != backwards
    window = _ordered(candidates, filters.sort, position, backwards=backwards).limit(size)
    w = window.cte("w").prefix_with("MATERIALIZED")
    in_range = _fts_rowid.between(select(func.min(w.c.r)).scalar_subquery(), select(func.max(w.c.r)).scalar_subquery())
    # newest first seeks the doclists from their end (FTS5 seeks forward slowly); the
    # LIMIT keeps SQLite from dropping that ORDER BY inside IN (...)
    hits = (
        select(_fts_rowid)
        .select_from(_fts)
        .where(_fts_match(search_words(filters.q)), in_range)
        .order_by(_fts_rowid.desc() if newest else _fts_rowid)
        .limit(1 << 40)
    )
    edge = (w.c.ca, w.c.id) if newest else (w.c.ca.desc(), w.c.id.desc())
    count = select(func.count()).select_from(w).scalar_subquery()
    last = select(w.c.id, w.c.ca, count).order_by(*edge).limit(1).subquery()
    rows = session.execute(
        select(w.c.id, w.c.ca, literal_column("-1")).where(w.c.r.in_(hits)).union_all(select(last))
    ).all()
    if not rows:
        return None
    *hit_rows, (last_id, last_at, walked) = rows
    hit_rows.sort(key=lambda row: (row[1], row[0]), reverse=newest)
    return _Window([image_id for image_id, _, _ in hit_rows], walked, Cursor(last_at, last_id))


def _next_window_size(found: int, walked: int, want: int, size: int) -> int | None:
    """A window sized by the density of matches seen so far, or None when they are too
    sparse to walk on (the plain query does the rest)."""
    density = found / walked
    needed = int((want - found) / density * 1.25) + 1 if density else WINDOW_WALK_LIMIT + 1
    if walked + needed > WINDOW_WALK_LIMIT:
        return None
    return max(needed, size)


def _rest_by_query(
    session: Session, user_id: int, filters: Filters, position: Cursor | None, want: int, *, near: bool, backwards: bool
) -> list[str]:
    """The next ``want`` matching ids after ``position`` from the plain query, planned for
    matches ``near`` (some found in the windows) or for few matches overall."""
    if near:
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
    return list(session.scalars(rest.limit(want)))


def _window_ids(
    session: Session, user_id: int, filters: Filters, cursor: Cursor | None, want: int, *, backwards: bool = False
) -> list[str]:
    """The ids of the first ``want`` images after ``cursor`` that match ``filters`` (with
    search words, on SQLite), in gallery order: exactly what the plain query gives."""
    candidates = _candidates(session, user_id, filters)
    found: list[str] = []
    walked, size, position = 0, WINDOW_FIRST * want, cursor
    while True:
        window = _walk_window(session, candidates, filters, position, size, backwards=backwards)
        if window is None:
            return found  # nothing left to walk
        found += window.hits
        walked += window.walked
        if len(found) >= want or window.walked < size:
            return found[:want]
        position = window.last
        next_size = _next_window_size(len(found), walked, want, size)
        if next_size is None:
            break
        size = next_size
    rest = _rest_by_query(session, user_id, filters, position, want - len(found), near=bool(found), backwards=backwards)
    return found + rest


# ---- what the pages ask for --------------------------------------------------------


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
        return (before[0] if before else None), (after[0] if after else None)
    query, order = _filtered(session, user_id, filters)
    base = (query.with_only_columns(Image.id), order)
    return (
        session.scalar(_ordered(base, filters.sort, here, backwards=True).limit(1)),
        session.scalar(_ordered(base, filters.sort, here).limit(1)),
    )


def model_options(session: Session, user_id: int, limit: int = 50) -> list[str]:
    """The models the user's images were made with: one index seek per model (a skip scan),
    so it costs the same with 100 or 100,000 images."""
    models: list[str] = []
    last: str | None = None
    while len(models) < limit:
        query = select(func.min(Image.model)).where(Image.user_id == user_id)
        if last is not None:
            query = query.where(Image.model > last)
        last = session.scalar(query)
        if last is None:
            break
        models.append(last)
    return models
