from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from app.db import transaction
from app.enums import MODES, SAMPLERS
from app.errors import NotFound, UserError
from app.gallery import service
from app.gallery.models import ASPECTS
from app.generation.catalog import get_catalog
from app.generation.quote import quote_form
from app.storage import ObjectNotFound, get_storage
from app.web import CurrentUser, get_app_settings, is_htmx, render, require_user, verify_csrf

router = APIRouter(dependencies=[Depends(verify_csrf)])


def _filters(request: Request) -> service.Filters:
    return service.parse_filters(request.query_params)


def _gallery_context(request: Request, user: CurrentUser, filters: service.Filters, after: str | None) -> dict:
    settings = get_app_settings(request)
    with transaction(settings) as session:
        page = service.list_images(session, user.id, filters, after)
        collections = service.list_collections(session, user.id, summaries=False)
        models = service.model_options(session, user.id)
        current = next((c for c in collections if c.id == filters.collection), None)
        if current is not None and not after:  # the heading says how many it holds
            current = dataclasses.replace(current, count=service.collection_size(session, user.id, current.id))
    return dict(
        page=page,
        filters=filters,
        collections=collections,
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
        context = _gallery_context(request, user, service.Filters(), None)
        return render(request, "gallery/index.html", status_code=error.status_code, error=error, **context)
    context = _gallery_context(request, user, filters, after)
    if after and is_htmx(request):
        return render(request, "gallery/_tiles.html", **context)
    return render(request, "gallery/index.html", error=None, **context)


@router.get("/gallery/{image_id}")
def image_detail(request: Request, image_id: str, user: CurrentUser = Depends(require_user)):
    settings = get_app_settings(request)
    filters = _filters(request)
    with transaction(settings) as session:
        image = service.get_image(session, user.id, image_id)
        before, after = service.neighbours(session, user.id, image, filters)
        collections = service.list_collections(session, user.id, summaries=False)
        member_of = service.collections_of(session, user.id, image.id)
    model = get_catalog(settings).find(image.job.model)  # None: a model no longer offered
    n = min(4, settings.max_images_per_job)
    prices = {}
    for key, fields in (
        ("subtle", {"mode": "variation", "variation": "subtle", "n": n}),
        ("strong", {"mode": "variation", "variation": "strong", "n": n}),
        ("up2", {"mode": "upscale", "upscale": 2}),
        ("up4", {"mode": "upscale", "upscale": 4}),
    ):
        try:  # the price on each button, from the same function that charges it
            fields = {**fields, "source_image": image.id, "steps": image.job.steps, "model": model.id if model else ""}
            prices[key] = quote_form(settings, user.id, fields)
        except UserError:
            prices[key] = None  # e.g. an upscale past the size limit: the button is disabled
    return render(
        request,
        "gallery/detail.html",
        image=image,
        job=image.job,
        model=model,
        prices=prices,
        variation_n=n,
        samplers=SAMPLERS,
        modes=MODES,
        filters=filters,
        before=before,
        after=after,
        collections=collections,
        member_of=member_of,
        model_name=get_catalog(settings).display_name,
        now_token=uuid.uuid4().hex[:12],  # a fresh request id per view: a double click makes one job
    )


@router.get("/images/{image_id}.png", name="image_file")
def image_file(request: Request, image_id: str, download: bool = False, user: CurrentUser = Depends(require_user)):
    settings = get_app_settings(request)
    with transaction(settings) as session:
        image = service.get_image(session, user.id, image_id)
    try:
        data = get_storage(settings).get(image.storage_key)
    except ObjectNotFound:
        raise NotFound("This image's file is missing.") from None
    headers = {"Cache-Control": "private, max-age=86400"}
    if download:
        headers["Content-Disposition"] = f'attachment; filename="gouache-{image.id}.png"'
    return Response(data, media_type="image/png", headers=headers)


@router.get("/images/{image_id}.webp", name="image_thumbnail")
def image_thumbnail(request: Request, image_id: str, user: CurrentUser = Depends(require_user)):
    data = service.thumbnail(get_app_settings(request), user.id, image_id)
    return Response(data, media_type="image/webp", headers={"Cache-Control": "private, max-age=604800"})


# ---- organising ------------------------------------------------------------------


async def _form(request: Request) -> tuple[dict[str, str], list[str]]:
    """The posted fields, and the image ids it names (``ids``, repeated)."""
    form = await request.form()
    return {k: str(v) for k, v in form.items() if k != "ids"}, [str(v) for v in form.getlist("ids")]


def _back(request: Request, fields: dict[str, str], default: str = "/gallery") -> RedirectResponse:
    """Back to the page the form was on (only ever a path on this site)."""
    target = fields.get("next") or default
    if not target.startswith("/") or target.startswith("//") or "\\" in target:  # browsers read "/\x" as "//x"
        target = default
    return RedirectResponse(target, status_code=303)


@router.post("/gallery/{image_id}/favourite")
async def favourite(request: Request, image_id: str, user: CurrentUser = Depends(require_user)):
    fields, _ = await _form(request)
    value = fields.get("favourite", "1") not in ("0", "false", "off")
    with transaction(get_app_settings(request)) as session:
        image = service.set_favourite(session, user.id, image_id, value)
        state = image.favourite
    if is_htmx(request):
        return render(request, "gallery/_heart.html", image_id=image_id, favourite=state)
    return _back(request, fields, f"/gallery/{image_id}")


@router.post("/gallery/{image_id}/delete")
async def delete_image(request: Request, image_id: str, user: CurrentUser = Depends(require_user)):
    fields, _ = await _form(request)
    service.delete_images(get_app_settings(request), user.id, [image_id])
    if is_htmx(request):
        return Response("")
    return _back(request, fields)


@router.post("/gallery/{image_id}/collections")
async def image_collections(request: Request, image_id: str, user: CurrentUser = Depends(require_user)):
    """Add the image to, or remove it from, one collection (``collection``, ``action``)."""
    fields, _ = await _form(request)
    with transaction(get_app_settings(request)) as session:
        if fields.get("action") == "remove":
            service.remove_from_collection(session, user.id, fields.get("collection", ""), [image_id])
        else:
            collection_id = fields.get("collection", "")
            if not collection_id and fields.get("name", "").strip():
                collection_id = service.create_collection(session, user.id, fields["name"]).id
            if not collection_id:
                raise UserError("Choose a collection, or name a new one.", field="collection")
            service.add_to_collection(session, user.id, collection_id, [image_id])
    return _back(request, fields, f"/gallery/{image_id}")


@router.post("/gallery/bulk")
async def bulk(request: Request, user: CurrentUser = Depends(require_user)):
    """Act on the selected images: ``action`` = collect | uncollect | favourite | delete."""
    settings = get_app_settings(request)
    fields, ids = await _form(request)
    action = fields.get("action", "")
    if action == "delete":
        service.delete_images(settings, user.id, ids)
    elif action in ("collect", "uncollect", "favourite", "unfavourite"):
        with transaction(settings) as session:
            if action == "collect":
                collection_id = fields.get("collection", "")
                if not collection_id and fields.get("name", "").strip():
                    collection_id = service.create_collection(session, user.id, fields["name"]).id
                if not collection_id:
                    raise UserError("Choose a collection, or name a new one.", field="collection")
                service.add_to_collection(session, user.id, collection_id, ids)
            elif action == "uncollect":
                service.remove_from_collection(session, user.id, fields.get("collection", ""), ids)
            else:
                for image in service.owned_images(session, user.id, ids):
                    image.favourite = action == "favourite"
    else:
        raise UserError("Unknown action.", field="action")
    return _back(request, fields)


@router.post("/gallery/download")
async def bulk_download(request: Request, user: CurrentUser = Depends(require_user)):
    """The selected originals (with their metadata) as one zip, streamed."""
    settings = get_app_settings(request)
    _, ids = await _form(request)
    with transaction(settings) as session:
        entries = service.zip_entries(session, user.id, ids, get_catalog(settings).display_name)
    name = f"gouache-{datetime.now(UTC):%Y%m%d-%H%M%S}.zip"
    return StreamingResponse(
        service.zip_stream(settings, entries),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# ---- collections -------------------------------------------------------------------


@router.get("/collections")
def collections_page(request: Request, user: CurrentUser = Depends(require_user)):
    with transaction(get_app_settings(request)) as session:
        collections = service.list_collections(session, user.id)
    return render(request, "gallery/collections.html", collections=collections, error=None)


@router.post("/collections")
async def create_collection(request: Request, user: CurrentUser = Depends(require_user)):
    fields, ids = await _form(request)
    with transaction(get_app_settings(request)) as session:
        collection = service.create_collection(session, user.id, fields.get("name", ""))
        if ids:
            service.add_to_collection(session, user.id, collection.id, ids)
        target = f"/gallery?collection={collection.id}"
    return _back(request, {"next": fields.get("next") or target})


@router.post("/collections/{collection_id}/rename")
async def rename_collection(request: Request, collection_id: str, user: CurrentUser = Depends(require_user)):
    fields, _ = await _form(request)
    with transaction(get_app_settings(request)) as session:
        service.rename_collection(session, user.id, collection_id, fields.get("name", ""))
    return _back(request, fields, f"/gallery?collection={collection_id}")


@router.post("/collections/{collection_id}/delete")
async def delete_collection(request: Request, collection_id: str, user: CurrentUser = Depends(require_user)):
    fields, _ = await _form(request)
    with transaction(get_app_settings(request)) as session:
        service.delete_collection(session, user.id, collection_id)
    return _back(request, {"next": "/collections"})
