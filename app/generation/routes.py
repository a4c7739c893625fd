from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Body, Depends, Header, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select

from app.db import transaction
from app.errors import UserError
from app.generation import schemas, service
from app.generation.models import Job
from app.web import CurrentUser, get_app_settings, is_htmx, optional_user, render, require_user, verify_csrf

router = APIRouter(dependencies=[Depends(verify_csrf)])
api = APIRouter(prefix="/api/v1", dependencies=[Depends(verify_csrf)], tags=["generation"])

RECENT_JOBS = 6


def _recent_jobs(request: Request, user: CurrentUser) -> list[tuple[Job, list]]:
    with transaction(get_app_settings(request)) as session:
        jobs = session.scalars(
            select(Job).where(Job.user_id == user.id).order_by(Job.created_at.desc()).limit(RECENT_JOBS)
        ).all()
        return [(job, service.job_images(session, job)) for job in jobs]


def _form_context(request: Request, form: dict[str, Any]) -> dict[str, Any]:
    settings = get_app_settings(request)
    presets = service.size_presets(settings)
    form.setdefault("size", presets[0].value)
    form.setdefault("steps", settings.model_default_steps)
    form.setdefault("guidance", 7.5)
    form.setdefault("n", 1)
    try:
        price = service.quote(settings, schemas.parse_quote(form, settings))
    except UserError:
        price = None
    return {"form": form, "presets": presets, "price": price, "request_id": uuid.uuid4().hex}


@router.get("/")
def home(request: Request, user: CurrentUser | None = Depends(optional_user)):
    if user is None:
        return render(request, "landing.html")
    form = {
        k: v
        for k, v in request.query_params.items()
        if k in ("prompt", "negative_prompt", "size", "steps", "guidance", "seed", "n")
    }
    return render(
        request,
        "generation/generate.html",
        error=None,
        jobs=_recent_jobs(request, user),
        **_form_context(request, form),
    )


@router.get("/generate/quote")
def quote_fragment(request: Request, user: CurrentUser = Depends(require_user)):
    settings = get_app_settings(request)
    try:
        price = service.quote(settings, schemas.parse_quote(request.query_params, settings))
        error = None
    except UserError as e:
        price, error = None, e
    return render(request, "generation/_quote.html", price=price, error=error)


@router.post("/generate")
async def generate(request: Request, user: CurrentUser = Depends(require_user)):
    settings = get_app_settings(request)
    form = dict(await request.form())
    form.pop("csrf_token", None)
    try:
        req = schemas.parse_request(form, settings)
        job = service.submit(settings, user.id, req, str(form.get("request_id", "")))
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
            **_form_context(request, form),
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


@router.get("/balance")
def balance_fragment(request: Request, user: CurrentUser = Depends(require_user)):
    return render(request, "_balance.html")


# ---- JSON API -------------------------------------------------------------------


def job_out(request: Request, job: Job, images) -> schemas.JobOut:
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
        model=job.model,
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


@api.get("/quote")
def api_quote(request: Request) -> dict[str, int]:
    """The price in credits of a request; the same function prices the charge."""
    settings = get_app_settings(request)
    return {"credits": service.quote(settings, schemas.parse_quote(request.query_params, settings))}


@api.post("/generations", status_code=202)
def api_generate(
    request: Request,
    body: dict[str, Any] = Body(...),
    idempotency_key: str | None = Header(default=None),
    user: CurrentUser = Depends(require_user),
) -> schemas.JobOut:
    settings = get_app_settings(request)
    req = schemas.parse_request(body, settings)
    job = service.submit(settings, user.id, req, idempotency_key or str(body.get("request_id") or ""))
    return job_out(request, job, [])


@api.get("/generations/{job_id}")
def api_job(request: Request, job_id: str, user: CurrentUser = Depends(require_user)) -> schemas.JobOut:
    job, images = service.get_job(get_app_settings(request), user.id, job_id)
    return job_out(request, job, images)
