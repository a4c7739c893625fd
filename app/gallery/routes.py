from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from app.db import transaction
from app.errors import NotFound
from app.gallery import service
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
    return render(request, "gallery/detail.html", image=image, job=image.job)


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
