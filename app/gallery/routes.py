from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from app.db import transaction
from app.errors import NotFound, UserError
from app.gallery import service
from app.generation.schemas import MODES, SAMPLERS
from app.generation.service import quote_form
from app.storage import ObjectNotFound, get_storage
from app.web import CurrentUser, get_app_settings, render, require_user

router = APIRouter()


@router.get("/gallery")
def gallery(request: Request, page: int = 1, user: CurrentUser = Depends(require_user)):
    with transaction(get_app_settings(request)) as session:
        result = service.list_images(session, user.id, page)
    return render(request, "gallery/index.html", page=result)


@router.get("/gallery/{image_id}")
def image_detail(request: Request, image_id: str, user: CurrentUser = Depends(require_user)):
    with transaction(get_app_settings(request)) as session:
        image = service.get_image(session, user.id, image_id)
    settings = get_app_settings(request)
    model = settings.catalog.find(image.job.model)  # None: a model no longer offered
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
