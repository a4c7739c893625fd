from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from app.config import Settings
from app.db import reading, transaction
from app.enums import MODES, SAMPLERS
from app.errors import UserError
from app.gallery import collections, export, search, service
from app.gallery.models import ASPECTS, Image
from app.generation.catalog import ModelSpec, get_catalog
from app.generation.quote import quote_form
from app.web import CurrentUser, get_app_settings, is_htmx, render, require_user, verify_csrf

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
    return _back(request, form.fields)


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
        service.delete_images(settings, user.id, ids)
    elif action in ("collect", "uncollect", "favourite", "unfavourite"):
        with transaction(settings) as session:
            if action == "collect":
                collections.collect(session, user.id, ids, fields.get("collection", ""), fields.get("name", ""))
            elif action == "uncollect":
                collections.remove_from_collection(session, user.id, fields.get("collection", ""), ids)
            else:
                service.set_favourites(session, user.id, ids, action == "favourite")
    else:
        raise UserError("Unknown action.", field="action")
    return _back(request, fields)


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
        collections.delete_collection(session, user.id, collection_id)
    return _back(request, {"next": "/collections"})
