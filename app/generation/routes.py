"""The generate page, its price and job fragments, and the JSON API.

Routes are plain ``def`` (run in FastAPI's thread pool: the services they call block
on the database, Pillow and storage); a request body is read by an ``async``
dependency before the route runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import UploadFile as StarletteUploadFile

from app.enums import DEFAULT_SAMPLER, MODES, SAMPLERS
from app.errors import NotFound, UserError
from app.gallery.models import Image
from app.generation import quote, schemas, service
from app.generation.catalog import get_catalog
from app.generation.models import Job
from app.web import CurrentUser, get_app_settings, is_htmx, optional_user, render, require_user, verify_csrf

router = APIRouter(dependencies=[Depends(verify_csrf)])
api = APIRouter(prefix="/api/v1", dependencies=[Depends(verify_csrf)], tags=["generation"])

RECENT_JOBS = 6


def _recent_jobs(request: Request, user: CurrentUser) -> list[tuple[Job, list[Image]]]:
    return service.recent_jobs(get_app_settings(request), user.id, RECENT_JOBS)


FORM_FIELDS = (
    "model", "prompt", "negative_prompt", "size", "steps", "guidance", "seed", "n", "sampler",
    "mode", "strength", "source_image", "variation", "upscale",
    "extend_left", "extend_right", "extend_top", "extend_bottom",
)  # fmt: skip


def _form_context(request: Request, form: dict[str, Any], user: CurrentUser) -> dict[str, Any]:
    settings = get_app_settings(request)
    catalog = get_catalog(settings)
    try:
        model = catalog.get(form.get("model"))
    except UserError:  # a stale link to a model no longer offered: show the default
        model = catalog.default
    form["model"] = model.id
    presets = quote.size_presets(model)
    form.setdefault("size", presets[0].value)
    form.setdefault("steps", model.default_steps)
    form.setdefault("guidance", model.default_guidance)
    form.setdefault("n", 1)
    form.setdefault("sampler", DEFAULT_SAMPLER)
    form.setdefault("mode", "txt2img")
    if form["mode"] not in MODES:
        form["mode"] = "txt2img"
    form.setdefault("strength", schemas.DEFAULT_STRENGTH.get(form["mode"], 0.6))
    source = None
    if form.get("source_image"):
        source = service.source_image(settings, user.id, str(form["source_image"]))
        if source is None:
            form.pop("source_image")
    try:
        price = quote.quote_form(settings, user.id, form)
    except (UserError, NotFound):
        price = None
    return {
        "form": form,
        "model": model,
        "catalog": catalog,
        "source": source,
        "presets": presets,
        "samplers": SAMPLERS,
        "modes": {k: v for k, v in MODES.items() if k in ("txt2img", "img2img", "inpaint", "outpaint")},
        "price": price,
        "request_id": uuid.uuid4().hex,
    }


@router.get("/")
def home(request: Request, user: CurrentUser | None = Depends(optional_user)):
    if user is None:
        return render(request, "landing.html")
    form = {k: v for k, v in request.query_params.items() if k in FORM_FIELDS}
    return render(
        request,
        "generation/generate.html",
        error=None,
        jobs=_recent_jobs(request, user),
        **_form_context(request, form, user),
    )


@router.get("/generate/quote")
def quote_fragment(request: Request, user: CurrentUser = Depends(require_user)):
    settings = get_app_settings(request)
    try:
        price = quote.quote_form(settings, user.id, request.query_params)
        error = None
    except (UserError, NotFound) as e:
        price, error = None, e
    return render(request, "generation/_quote.html", price=price, error=error)


UPLOAD_FIELDS = ("image", "mask")


@dataclass(frozen=True)
class RequestBody:
    """A request's fields, and the bytes of its uploaded ``image`` and ``mask``."""

    fields: dict[str, Any]
    uploads: dict[str, bytes] = field(default_factory=dict)


async def form_body(request: Request) -> RequestBody:
    """The form, read (uploads included) before the route runs, so the route can be a
    plain ``def`` that blocks on the database and Pillow off the event loop."""
    fields: dict[str, Any] = {}
    uploads: dict[str, bytes] = {}
    limit = get_app_settings(request).max_upload_bytes
    for key, value in (await request.form()).multi_items():
        if isinstance(value, StarletteUploadFile):
            if key in UPLOAD_FIELDS and value.filename:
                # one byte past the limit is enough to refuse it with the right message
                uploads[key] = await value.read(limit + 1)
        elif key != "csrf_token":
            fields[key] = value
    return RequestBody(fields, uploads)


async def api_body(request: Request) -> RequestBody:
    """The API's body: a JSON object, or form data with ``image`` / ``mask`` files."""
    if request.headers.get("content-type", "").startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        return await form_body(request)
    try:
        data = await request.json()
    except ValueError:
        raise UserError("The request body must be JSON or form data.") from None
    if not isinstance(data, dict):
        raise UserError("The request body must be a JSON object.")
    return RequestBody(data)


@router.post("/generate")
def generate(request: Request, user: CurrentUser = Depends(require_user), body: RequestBody = Depends(form_body)):
    settings = get_app_settings(request)
    form, uploads = body.fields, body.uploads
    try:
        req = schemas.parse_request(form, settings)
        job = service.submit(settings, user.id, req, str(form.get("request_id", "")), uploads)
    except UserError as e:
        if is_htmx(request):
            response = render(request, "generation/_form_error.html", status_code=e.status_code, error=e)
            response.headers["HX-Retarget"] = "#form-error"
            response.headers["HX-Reswap"] = "outerHTML"
            return response
        return render(
            request,
            "generation/generate.html",
            status_code=e.status_code,
            error=e,
            jobs=_recent_jobs(request, user),
            **_form_context(request, form, user),
        )
    if is_htmx(request):
        request.state._state.pop("user", None)  # re-read the balance after the hold
        return render(request, "generation/_submitted.html", job=job, images=[], new_request_id=uuid.uuid4().hex)
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str, user: CurrentUser = Depends(require_user)):
    job, images = service.get_job(get_app_settings(request), user.id, job_id)
    return render(request, "generation/job.html", job=job, images=images)


@router.get("/jobs/{job_id}/card")
def job_card(request: Request, job_id: str, user: CurrentUser = Depends(require_user)):
    job, images = service.get_job(get_app_settings(request), user.id, job_id)
    response = render(request, "generation/_job_card.html", job=job, images=images)
    if job.done:
        # Tell the page the balance may have changed (a failed job gives credits back).
        response.headers["HX-Trigger"] = "balance-changed"
    return response


@router.post("/jobs/{job_id}/cancel")
def cancel_job(request: Request, job_id: str, user: CurrentUser = Depends(require_user)):
    service.request_cancel(get_app_settings(request), user.id, job_id)
    if is_htmx(request):
        return job_card(request, job_id, user)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.get("/jobs/{job_id}/preview.jpg")
def job_preview(request: Request, job_id: str, user: CurrentUser = Depends(require_user)):
    """The running job's latest live preview (owner only)."""
    settings = get_app_settings(request)
    data = service.job_preview(settings, user.id, job_id)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


@router.get("/balance")
def balance_fragment(request: Request, user: CurrentUser = Depends(require_user)):
    return render(request, "_balance.html")


# ---- JSON API -------------------------------------------------------------------


def job_out(request: Request, job: Job, images: Sequence[Image]) -> schemas.JobOut:
    return schemas.JobOut(
        id=job.id,
        status=job.status,
        progress=job.progress,
        step=job.progress_step,
        steps=job.steps,
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        width=job.width,
        height=job.height,
        guidance=job.guidance,
        seed=job.seed,
        n_images=job.n_images,
        sampler=job.sampler,
        mode=job.mode,
        strength=job.strength,
        preview_url=str(request.url_for("job_preview", job_id=job.id)) if job.preview_key and not job.done else None,
        model=job.model,
        licence=job.licence,
        licence_url=job.licence_url,
        licence_commercial_use=job.licence_commercial,
        price=job.price,
        error=job.error,
        created_at=job.created_at,
        images=[
            schemas.ImageOut(
                id=i.id,
                index=i.index,
                seed=i.seed,
                width=i.width,
                height=i.height,
                url=str(request.url_for("image_file", image_id=i.id)),
            )
            for i in images
        ],
    )


@api.get("/models")
def api_models(request: Request) -> list[schemas.ModelOut]:
    """The models on offer (the first is the default), with their limits and licences."""
    return [schemas.ModelOut.from_spec(m) for m in get_catalog(get_app_settings(request))]


@api.get("/quote")
def api_quote(request: Request) -> dict[str, int]:
    """The price in credits of a request; the same function prices the charge."""
    settings = get_app_settings(request)
    return {"credits": quote.quote(settings, schemas.parse_quote(request.query_params, settings))}


@api.post("/generations", status_code=202)
def api_generate(
    request: Request,
    idempotency_key: str | None = Header(default=None),
    user: CurrentUser = Depends(require_user),
    body: RequestBody = Depends(api_body),
) -> schemas.JobOut:
    """JSON (text-to-image, or an image mode from a gallery image's ``source_image``),
    or multipart form data with ``image`` / ``mask`` files for uploads."""
    settings = get_app_settings(request)
    req = schemas.parse_request(body.fields, settings)
    request_id = idempotency_key or str(body.fields.get("request_id") or "")
    job = service.submit(settings, user.id, req, request_id, body.uploads)
    return job_out(request, job, [])


@api.post("/generations/{job_id}/cancel")
def api_cancel(request: Request, job_id: str, user: CurrentUser = Depends(require_user)) -> schemas.JobOut:
    settings = get_app_settings(request)
    service.request_cancel(settings, user.id, job_id)
    job, images = service.get_job(settings, user.id, job_id)
    return job_out(request, job, images)


@api.get("/generations/{job_id}")
def api_job(request: Request, job_id: str, user: CurrentUser = Depends(require_user)) -> schemas.JobOut:
    job, images = service.get_job(get_app_settings(request), user.id, job_id)
    return job_out(request, job, images)
