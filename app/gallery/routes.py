from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from sqlalchemy.exc import IntegrityError

from app.api import Page, api_router, idempotency_key
from app.config import Settings
from app.db import reading, transaction
from app.enums import MODES, SAMPLERS
from app.errors import UserError
from app.gallery import collections, export, schemas, search, service
from app.gallery.models import ASPECTS, Image
from app.generation.catalog import ModelSpec, get_catalog
from app.generation.quote import quote_form
from app.web import CurrentUser, get_app_settings, is_htmx, is_secure, render, require_user, verify_csrf

# Every route here is a plain ``def``: FastAPI runs it in a thread, so the sync session,
# storage and Pillow never block the event loop. Form bodies are read by ``posted_form``.
router = APIRouter(dependencies=[Depends(verify_csrf)])


def _filters(request: Request) -> search.Filters:
    return search.parse_filters(request.query_params)


def _gallery_context(request: Request, user: CurrentUser, filters: search.Filters, after: str | None) -> dict:
    settings = get_app_settings(request)
    with reading(settings) as session:
        page = search.list_images(session, user.id, filters, after)
        names = collections.list_collections(session, user.id, summaries=False)
        models = search.model_options(session, user.id)
        current = next((c for c in names if c.id == filters.collection), None)
        if current is not None and not after:  # the heading says how many it holds
            current = dataclasses.replace(current, count=collections.collection_size(session, user.id, current.id))
    return dict(
        page=page,
        filters=filters,
        collections=names,
        collection=current,
        models=models,
        model_name=get_catalog(settings).display_name,
        modes=MODES,
        aspects=ASPECTS,
    )


@router.get("/gallery")
def gallery(request: Request, after: str | None = None, user: CurrentUser = Depends(require_user)):
    """The grid, filtered by the query string. htmx asks for the next page's tiles only."""
    try:
        filters = _filters(request)
    except UserError as error:  # shown above an unfiltered gallery, with a way back
        context = _gallery_context(request, user, search.Filters(), None)
        return render(request, "gallery/index.html", status_code=error.status_code, error=error, **context)
    context = _gallery_context(request, user, filters, after)
    if after and is_htmx(request):
        return render(request, "gallery/_tiles.html", **context)
    return render(request, "gallery/index.html", error=None, **context)


def _button_prices(settings: Settings, user_id: int, image: Image, model: ModelSpec | None, n: int) -> dict:
    """The price on each variation/upscale button, from the same function that charges it;
    None where the button is disabled (e.g. an upscale past the size limit)."""
    prices: dict[str, int | None] = {}
    for key, fields in (
        ("subtle", {"mode": "variation", "variation": "subtle", "n": n}),
        ("strong", {"mode": "variation", "variation": "strong", "n": n}),
        ("up2", {"mode": "upscale", "upscale": 2}),
        ("up4", {"mode": "upscale", "upscale": 4}),
    ):
        try:
            fields = {**fields, "source_image": image.id, "steps": image.job.steps, "model": model.id if model else ""}
            prices[key] = quote_form(settings, user_id, fields)
        except UserError:
            prices[key] = None
    return prices


@router.get("/gallery/{image_id}")
def image_detail(request: Request, image_id: str, user: CurrentUser = Depends(require_user)):
    settings = get_app_settings(request)
    filters = _filters(request)
    with reading(settings) as session:
        image = service.get_image(session, user.id, image_id)
        before, after = search.neighbours(session, user.id, image, filters)
        names = collections.list_collections(session, user.id, summaries=False)
        member_of = collections.collections_of(session, user.id, image.id)
    catalog = get_catalog(settings)
    model = catalog.find(image.job.model)  # None: a model no longer offered
    n = min(4, settings.max_images_per_job)
    return render(
        request,
        "gallery/detail.html",
        image=image,
        job=image.job,
        model=model,
        prices=_button_prices(settings, user.id, image, model, n),
        variation_n=n,
        samplers=SAMPLERS,
        modes=MODES,
        filters=filters,
        before=before,
        after=after,
        collections=names,
        member_of=member_of,
        model_name=catalog.display_name,
        now_token=uuid.uuid4().hex[:12],  # a fresh request id per view: a double click makes one job
    )


@router.get("/images/{image_id}.png", name="image_file")
def image_file(request: Request, image_id: str, download: bool = False, user: CurrentUser = Depends(require_user)):
    data = service.original(get_app_settings(request), user.id, image_id)
    headers = {"Cache-Control": "private, max-age=86400"}
    if download:
        headers["Content-Disposition"] = f'attachment; filename="gouache-{image_id}.png"'
    return Response(data, media_type="image/png", headers=headers)


@router.get("/images/{image_id}.webp", name="image_thumbnail")
def image_thumbnail(request: Request, image_id: str, user: CurrentUser = Depends(require_user)):
    data = service.thumbnail(get_app_settings(request), user.id, image_id)
    return Response(data, media_type="image/webp", headers={"Cache-Control": "private, max-age=604800"})


# ---- organising ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PostedForm:
    """A posted form's fields, and the image ids it names (``ids``, repeated)."""

    fields: dict[str, str]
    ids: list[str]


async def posted_form(request: Request) -> PostedForm:
    """The form body, awaited here so that the routes that use it stay plain ``def``."""
    form = await request.form()
    return PostedForm({k: str(v) for k, v in form.items() if k != "ids"}, [str(v) for v in form.getlist("ids")])


def _back(request: Request, fields: dict[str, str], default: str = "/gallery") -> RedirectResponse:
    """Back to the page the form was on (only ever a path on this site)."""
    target = fields.get("next") or default
    if not target.startswith("/") or target.startswith("//") or "\\" in target:  # browsers read "/\x" as "//x"
        target = default
    return RedirectResponse(target, status_code=303)


TOAST_COOKIE = "gouache_toast"  # read once and cleared by static/js/shell.js


def _toast(request: Request, response: Response, message: str) -> Response:
    """Say what the action did on the page the redirect leads to (a toast, read by script)."""
    response.set_cookie(
        TOAST_COOKIE, quote(message), max_age=60, path="/", samesite="lax", secure=is_secure(request), httponly=False
    )
    return response


def _images(n: int) -> str:
    return "1 image" if n == 1 else f"{n} images"


@router.post("/gallery/{image_id}/favourite")
def favourite(
    request: Request,
    image_id: str,
    user: CurrentUser = Depends(require_user),
    form: PostedForm = Depends(posted_form),
):
    value = form.fields.get("favourite", "1") not in ("0", "false", "off")
    with transaction(get_app_settings(request)) as session:
        image = service.set_favourite(session, user.id, image_id, value)
        state = image.favourite
    if is_htmx(request):
        return render(request, "gallery/_heart.html", image_id=image_id, favourite=state)
    return _back(request, form.fields, f"/gallery/{image_id}")


@router.post("/gallery/{image_id}/delete")
def delete_image(
    request: Request,
    image_id: str,
    user: CurrentUser = Depends(require_user),
    form: PostedForm = Depends(posted_form),
):
    service.delete_images(get_app_settings(request), user.id, [image_id])
    if is_htmx(request):
        return Response("")
    return _toast(request, _back(request, form.fields), "Image deleted.")


@router.post("/gallery/{image_id}/collections")
def image_collections(
    request: Request,
    image_id: str,
    user: CurrentUser = Depends(require_user),
    form: PostedForm = Depends(posted_form),
):
    """Add the image to, or remove it from, one collection (``collection``, ``action``);
    adding with no collection chosen and a ``name`` makes that collection."""
    fields = form.fields
    with transaction(get_app_settings(request)) as session:
        if fields.get("action") == "remove":
            collections.remove_from_collection(session, user.id, fields.get("collection", ""), [image_id])
        else:
            collections.collect(session, user.id, [image_id], fields.get("collection", ""), fields.get("name", ""))
    return _back(request, fields, f"/gallery/{image_id}")


@router.post("/gallery/bulk")
def bulk(request: Request, user: CurrentUser = Depends(require_user), form: PostedForm = Depends(posted_form)):
    """Act on the selected images: ``action`` = collect | uncollect | favourite | unfavourite | delete."""
    settings = get_app_settings(request)
    fields, ids = form.fields, form.ids
    action = fields.get("action", "")
    if action == "delete":
        message = f"Deleted {_images(service.delete_images(settings, user.id, ids))}."
    elif action in ("collect", "uncollect", "favourite", "unfavourite"):
        with transaction(settings) as session:
            chosen = fields.get("collection", "")
            if action == "collect":
                added = collections.collect(session, user.id, ids, chosen, fields.get("name", ""))
                name = collections.get_collection(session, user.id, chosen).name if chosen else fields["name"].strip()
                message = f"Added {_images(added)} to “{name}”."
            elif action == "uncollect":
                collections.remove_from_collection(session, user.id, chosen, ids)
                name = collections.get_collection(session, user.id, chosen).name
                message = f"Removed {_images(len(ids))} from “{name}”."
            else:
                service.set_favourites(session, user.id, ids, action == "favourite")
                message = f"{'Favourited' if action == 'favourite' else 'Unfavourited'} {_images(len(ids))}."
    else:
        raise UserError("Unknown action.", field="action")
    return _toast(request, _back(request, fields), message)


@router.post("/gallery/download")
def bulk_download(request: Request, user: CurrentUser = Depends(require_user), form: PostedForm = Depends(posted_form)):
    """The selected originals (with their metadata) as one zip, streamed (from a thread:
    Starlette iterates a plain iterator in its thread pool)."""
    settings = get_app_settings(request)
    with reading(settings) as session:
        entries = export.zip_entries(session, user.id, form.ids, get_catalog(settings).display_name)
    name = f"gouache-{datetime.now(UTC):%Y%m%d-%H%M%S}.zip"
    return StreamingResponse(
        export.zip_stream(settings, entries),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# ---- collections -------------------------------------------------------------------


@router.get("/collections")
def collections_page(request: Request, user: CurrentUser = Depends(require_user)):
    with reading(get_app_settings(request)) as session:
        summaries = collections.list_collections(session, user.id)
    return render(request, "gallery/collections.html", collections=summaries, error=None)


@router.post("/collections")
def create_collection(
    request: Request, user: CurrentUser = Depends(require_user), form: PostedForm = Depends(posted_form)
):
    with transaction(get_app_settings(request)) as session:
        collection = collections.create_collection(session, user.id, form.fields.get("name", ""))
        if form.ids:
            collections.add_to_collection(session, user.id, collection.id, form.ids)
        target = f"/gallery?collection={collection.id}"
    return _back(request, {"next": form.fields.get("next") or target})


@router.post("/collections/{collection_id}/rename")
def rename_collection(
    request: Request,
    collection_id: str,
    user: CurrentUser = Depends(require_user),
    form: PostedForm = Depends(posted_form),
):
    with transaction(get_app_settings(request)) as session:
        collections.rename_collection(session, user.id, collection_id, form.fields.get("name", ""))
    return _back(request, form.fields, f"/gallery?collection={collection_id}")


@router.post("/collections/{collection_id}/delete")
def delete_collection(request: Request, collection_id: str, user: CurrentUser = Depends(require_user)):
    with transaction(get_app_settings(request)) as session:
        name = collections.get_collection(session, user.id, collection_id).name
        collections.delete_collection(session, user.id, collection_id)
    return _toast(request, _back(request, {"next": "/collections"}), f"Deleted the collection “{name}”.")


# ---- JSON API -----------------------------------------------------------------------------

api = api_router(tags=["gallery"])
BINARY = {"schema": {"type": "string", "format": "binary"}}


def image_out(request: Request, image: Image, member_of: set[str] | None = None) -> schemas.GalleryImageOut:
    job = image.job
    return schemas.GalleryImageOut(
        id=image.id,
        job_id=image.job_id,
        index=image.index,
        width=image.width,
        height=image.height,
        seed=image.seed,
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        model=image.model,
        mode=image.mode,
        aspect=image.aspect,
        sampler=job.sampler,
        steps=job.steps,
        guidance=job.guidance,
        strength=job.strength,
        licence=job.licence,
        licence_url=job.licence_url,
        favourite=image.favourite,
        created_at=image.created_at,
        url=str(request.url_for("api_image_file", image_id=image.id)),
        thumbnail_url=str(request.url_for("api_image_thumbnail", image_id=image.id)),
        collections=sorted(member_of) if member_of is not None else None,
    )


class ImagePage(Page[schemas.GalleryImageOut]):
    """A page of your gallery's images, in the order asked for."""


@api.get("/images")
def api_images(
    request: Request,
    q: str = Query(default="", description="Words of the prompt (each matches as a prefix)."),
    model: str = Query(default="", description="A model id."),
    mode: str = Query(default="", description="How it was made.", json_schema_extra={"enum": ["", *MODES]}),
    date_from: str = Query(default="", description="From this day (UTC).", json_schema_extra={"format": "date"}),
    date_to: str = Query(default="", description="Up to this day.", json_schema_extra={"format": "date"}),
    aspect: str = Query(default="", json_schema_extra={"enum": ["", *ASPECTS]}),
    favourites: str = Query(default="", description="1: only favourites.", json_schema_extra={"enum": ["", "0", "1"]}),
    collection: str = Query(default="", description="Only this collection's images."),
    sort: str = Query(default="newest", json_schema_extra={"enum": list(search.SORTS)}),
    after: str | None = Query(default=None, description="The previous page's `next_cursor`."),
    limit: int = Query(default=search.PAGE_SIZE, ge=1, le=100),
    user: CurrentUser = Depends(require_user),
) -> ImagePage:
    """Your gallery with its filters, a keyset page at a time (the filters are the gallery
    page's query string, checked by the same parser)."""
    filters = search.parse_filters(
        dict(
            q=q, model=model, mode=mode, date_from=date_from, date_to=date_to, aspect=aspect,
            favourites=favourites, collection=collection, sort=sort,
        )
    )  # fmt: skip
    with reading(get_app_settings(request)) as session:
        page = search.list_images(session, user.id, filters, after, limit)
        items = [image_out(request, image) for image in page.images]
    return ImagePage(items=items, next_cursor=page.next_cursor)


@api.get("/images/{image_id}")
def api_image(request: Request, image_id: str, user: CurrentUser = Depends(require_user)) -> schemas.GalleryImageOut:
    """One image's metadata, with the collections that hold it."""
    with reading(get_app_settings(request)) as session:
        image = service.get_image(session, user.id, image_id)
        return image_out(request, image, collections.collections_of(session, user.id, image.id))


@api.patch("/images/{image_id}")
def api_update_image(
    request: Request, image_id: str, body: schemas.ImageUpdate, user: CurrentUser = Depends(require_user)
) -> schemas.GalleryImageOut:
    """Mark or unmark the image as a favourite."""
    with transaction(get_app_settings(request)) as session:
        image = service.set_favourite(session, user.id, image_id, body.favourite)
        session.flush()
        return image_out(request, image, collections.collections_of(session, user.id, image.id))


@api.get("/images/{image_id}/file", response_class=Response, responses={200: {"content": {"image/png": BINARY}}})
def api_image_file(request: Request, image_id: str, user: CurrentUser = Depends(require_user)) -> Response:
    """The image's PNG, its generation parameters embedded."""
    data = service.original(get_app_settings(request), user.id, image_id)
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})


@api.get("/images/{image_id}/thumbnail", response_class=Response, responses={200: {"content": {"image/webp": BINARY}}})
def api_image_thumbnail(request: Request, image_id: str, user: CurrentUser = Depends(require_user)) -> Response:
    """The image's WebP thumbnail (longest side 384)."""
    data = service.thumbnail(get_app_settings(request), user.id, image_id)
    return Response(data, media_type="image/webp", headers={"Cache-Control": "private, max-age=604800"})


@api.delete("/images/{image_id}", status_code=204, response_class=Response)
def api_delete_image(request: Request, image_id: str, user: CurrentUser = Depends(require_user)) -> Response:
    """Delete the image: it leaves the gallery and its collections, then storage."""
    service.delete_images(get_app_settings(request), user.id, [image_id])
    return Response(status_code=204)


def collection_out(summary: collections.CollectionSummary) -> schemas.CollectionOut:
    return schemas.CollectionOut(id=summary.id, name=summary.name, count=summary.count, cover_image_id=summary.cover_id)


@api.get("/collections")
def api_collections(request: Request, user: CurrentUser = Depends(require_user)) -> list[schemas.CollectionOut]:
    """Your collections by name, each with its size and newest image."""
    with reading(get_app_settings(request)) as session:
        return [collection_out(c) for c in collections.list_collections(session, user.id)]


@api.post("/collections", status_code=201)
def api_create_collection(
    request: Request,
    body: schemas.CollectionIn,
    request_id: str | None = Depends(idempotency_key),
    user: CurrentUser = Depends(require_user),
) -> schemas.CollectionOut:
    """A new collection (with ``image_ids`` in it). With an ``Idempotency-Key``, a retry
    answers the collection the first request made."""
    settings = get_app_settings(request)
    try:
        with transaction(settings) as session:
            collection = collections.create_collection(session, user.id, body.name, request_id)
            if body.image_ids:
                collections.add_to_collection(session, user.id, collection.id, body.image_ids)
            collection_id = collection.id
    except IntegrityError:  # a concurrent request with the same key (or name) won
        with reading(settings) as session:
            found = collections.collection_for_request(session, user.id, request_id) if request_id else None
            if found is None:
                raise UserError("That collection changed meanwhile; try again.", field="name") from None
            collection_id = found.id
    with reading(settings) as session:
        return collection_out(collections.collection_summary(session, user.id, collection_id))


@api.get("/collections/{collection_id}")
def api_collection(
    request: Request, collection_id: str, user: CurrentUser = Depends(require_user)
) -> schemas.CollectionOut:
    """One collection; its images are ``GET /api/v1/images?collection=<id>``."""
    with reading(get_app_settings(request)) as session:
        return collection_out(collections.collection_summary(session, user.id, collection_id))


@api.patch("/collections/{collection_id}")
def api_rename_collection(
    request: Request, collection_id: str, body: schemas.CollectionUpdate, user: CurrentUser = Depends(require_user)
) -> schemas.CollectionOut:
    settings = get_app_settings(request)
    with transaction(settings) as session:
        collections.rename_collection(session, user.id, collection_id, body.name)
    with reading(settings) as session:
        return collection_out(collections.collection_summary(session, user.id, collection_id))


@api.delete("/collections/{collection_id}", status_code=204, response_class=Response)
def api_delete_collection(request: Request, collection_id: str, user: CurrentUser = Depends(require_user)) -> Response:
    """Delete the collection; its images stay in the gallery."""
    with transaction(get_app_settings(request)) as session:
        collections.delete_collection(session, user.id, collection_id)
    return Response(status_code=204)


@api.post("/collections/{collection_id}/images", dependencies=[Depends(idempotency_key)])
def api_collect(
    request: Request, collection_id: str, body: schemas.ImageIds, user: CurrentUser = Depends(require_user)
) -> schemas.Added:
    """Add your images to the collection (idempotent: images already in it stay once)."""
    with transaction(get_app_settings(request)) as session:
        added = collections.add_to_collection(session, user.id, collection_id, body.image_ids)
    return schemas.Added(added=added)


@api.delete("/collections/{collection_id}/images/{image_id}", status_code=204, response_class=Response)
def api_uncollect(
    request: Request, collection_id: str, image_id: str, user: CurrentUser = Depends(require_user)
) -> Response:
    """Take the image out of the collection (it stays in the gallery)."""
    with transaction(get_app_settings(request)) as session:
        collections.remove_from_collection(session, user.id, collection_id, [image_id])
    return Response(status_code=204)
