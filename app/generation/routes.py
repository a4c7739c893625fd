"""The generate page, its price and job fragments, and the JSON API.

Routes are plain ``def`` (run in FastAPI's thread pool: the services they call block
on the database, Pillow and storage); a request body is read by an ``async``
dependency before the route runs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile

from app.api import Page, api_router, errors, idempotency_key, request_body
from app.config import Settings
from app.enums import DEFAULT_SAMPLER, MODES, SAMPLERS, JobStatus
from app.errors import NotFound, UserError
from app.gallery.models import Image
from app.generation import events, quote, schemas, service
from app.generation.catalog import get_catalog
from app.generation.models import Job
from app.web import CurrentUser, get_app_settings, is_htmx, optional_user, render, require_user, verify_csrf

router = APIRouter(dependencies=[Depends(verify_csrf)])
api = api_router(tags=["generations"])

RECENT_JOBS = 6
RECENT_PROMPTS = 20


@dataclass(frozen=True)
class ResultActions:
    """What a finished job's card offers on each of its images: more like it (a subtle
    variation), an upscale and its settings back in the form, priced like the gallery's."""

    model: str | None  # the catalog id (None: a model no longer offered)
    variation_n: int
    variation_price: int | None  # None: not offered (e.g. past a size limit)
    upscale_price: int | None


def result_actions(settings: Settings, user_id: int, job: Job) -> ResultActions | None:
    if job.status != JobStatus.SUCCEEDED:
        return None
    model = get_catalog(settings).find(job.model)
    n = min(4, settings.max_images_per_job)
    # every image of a job has the job's size: priced from it, without reading each image
    base = {
        "source_width": job.width,
        "source_height": job.height,
        "steps": job.steps,
        "model": model.id if model else "",
    }
    prices: list[int | None] = []
    for fields in ({"mode": "variation", "variation": "subtle", "n": n}, {"mode": "upscale", "upscale": 2}):
        try:
            prices.append(quote.quote_form(settings, user_id, {**base, **fields}))
        except UserError:
            prices.append(None)
    return ResultActions(model.id if model else None, n, prices[0], prices[1])


def _card(settings: Settings, user_id: int, job: Job, images: list[Image]) -> dict[str, Any]:
    """The context of one job card (generation/_job_card.html)."""
    return {"job": job, "images": images, "actions": result_actions(settings, user_id, job)}


def _recent_jobs(request: Request, user: CurrentUser) -> list[dict[str, Any]]:
    settings = get_app_settings(request)
    jobs = service.recent_jobs(settings, user.id, RECENT_JOBS)
    return [_card(settings, user.id, job, images) for job, images in jobs]


OUTPAINT_SIDE = 128  # pixels the outpaint frame starts with on the left and on the right

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
    # what the fields show is what is priced: the frame grows by a quarter of the image's
    # width on each side (a fixed 128 pixels until an upload's size is known)
    side = max(8, round(source.width / 4 / 8) * 8) if source else OUTPAINT_SIDE
    for name, pixels in (("left", side), ("right", side), ("top", 0), ("bottom", 0)):
        form.setdefault(f"extend_{name}", pixels)
    priced = quote.form_quote(settings, user.id, form)
    if not source:
        priced = replace(priced, error=None)  # a problem is said once the user acts
    return {
        "form": form,
        "model": model,
        "catalog": catalog,
        "source": source,
        "presets": presets,
        "samplers": SAMPLERS,
        "modes": {k: v for k, v in MODES.items() if k in ("txt2img", "img2img", "inpaint", "outpaint")},
        "quote": priced,
        "recent_prompts": service.recent_prompts(settings, user.id, RECENT_PROMPTS),
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
    return render(request, "generation/_quote.html", quote=quote.form_quote(settings, user.id, request.query_params))


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
        response = render(request, "generation/_submitted.html", **_card(settings, user.id, job, []))
        # the form's next request id: its value is set by create.js, not swapped in (an
        # out-of-band swap of the input had htmx copy a style attribute, refused by the CSP)
        response.headers["HX-Trigger"] = json.dumps({"new-request-id": uuid.uuid4().hex})
        return response
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str, user: CurrentUser = Depends(require_user)):
    settings = get_app_settings(request)
    job, images = service.get_job(settings, user.id, job_id)
    return render(request, "generation/job.html", **_card(settings, user.id, job, images))


@router.get("/jobs/{job_id}/card")
def job_card(request: Request, job_id: str, user: CurrentUser = Depends(require_user)):
    settings = get_app_settings(request)
    job, images = service.get_job(settings, user.id, job_id)
    response = render(request, "generation/_job_card.html", **_card(settings, user.id, job, images))
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


def _preview_url(request: Request, job_id: str, step: int) -> str:
    # the step makes each new preview a new URL (the object is overwritten in place)
    return f"{request.url_for('api_job_preview', job_id=job_id)}?step={step}"


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
        preview_url=_preview_url(request, job.id, job.progress_step) if job.preview_key and not job.done else None,
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
                url=str(request.url_for("api_image_file", image_id=i.id)),
                thumbnail_url=str(request.url_for("api_image_thumbnail", image_id=i.id)),
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


class JobPage(Page[schemas.JobOut]):
    """A page of your jobs, newest first."""


@api.get("/generations")
def api_jobs(
    request: Request,
    status: list[str] = Query(default=[], description="Only jobs in these states (repeat the parameter)."),
    after: str | None = Query(default=None, description="The previous page's `next_cursor`."),
    limit: int = Query(default=service.JOBS_PAGE, ge=1, le=100),
    user: CurrentUser = Depends(require_user),
) -> JobPage:
    """Your jobs, newest first, a keyset page at a time."""
    page = service.list_jobs(get_app_settings(request), user.id, status, after, limit)
    return JobPage(items=[job_out(request, job, images) for job, images in page.jobs], next_cursor=page.next_cursor)


@api.post(
    "/generations",
    status_code=202,
    openapi_extra=request_body(schemas.GenerationIn, multipart=schemas.GenerationForm),
    responses=errors(402, 429, 503),
)
def api_generate(
    request: Request,
    request_id: str | None = Depends(idempotency_key),
    user: CurrentUser = Depends(require_user),
    body: RequestBody = Depends(api_body),
) -> schemas.JobOut:
    """Queue a generation and hold its price. JSON (text to image, or an image mode from a
    gallery image's ``source_image``), or form data with ``image`` / ``mask`` files. The
    same ``Idempotency-Key`` (or ``request_id``) again returns the first job, charged once."""
    settings = get_app_settings(request)
    req = schemas.parse_request(body.fields, settings)
    request_id = request_id or str(body.fields.get("request_id") or "")
    job = service.submit(settings, user.id, req, request_id, body.uploads)
    return job_out(request, job, [])


@api.post("/generations/{job_id}/cancel", dependencies=[Depends(idempotency_key)])
def api_cancel(request: Request, job_id: str, user: CurrentUser = Depends(require_user)) -> schemas.JobOut:
    """Cancel the job (idempotent): a queued one at once, a running one at its next step;
    its credits come back."""
    settings = get_app_settings(request)
    service.request_cancel(settings, user.id, job_id)
    job, images = service.get_job(settings, user.id, job_id)
    return job_out(request, job, images)


@api.get("/generations/{job_id}")
def api_job(request: Request, job_id: str, user: CurrentUser = Depends(require_user)) -> schemas.JobOut:
    job, images = service.get_job(get_app_settings(request), user.id, job_id)
    return job_out(request, job, images)


@api.get(
    "/generations/{job_id}/preview",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}},
)
def api_job_preview(request: Request, job_id: str, user: CurrentUser = Depends(require_user)) -> Response:
    """The running job's latest live preview, a small JPEG (404 before the first one and
    once the job is over)."""
    data = service.job_preview(get_app_settings(request), user.id, job_id)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


EVENTS_DOC = """A stream of server-sent events (`text/event-stream`) while the job runs:

- `progress` (data: `ProgressOut`): sent when the status, the step or the preview changes;
- `done` (data: `JobOut`, with the images): the job is over, and the stream ends.

Each event has an `id`; reconnecting with `Last-Event-ID` sends only what changed since (a
finished job whose `done` event the client already has answers 204, which tells EventSource
to stop). A comment line keeps an idle connection open."""


@api.get(
    "/generations/{job_id}/events",
    response_class=Response,
    description=EVENTS_DOC,
    responses={
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "The events."},
        204: {"description": "The job is over and its final event was already received."},
    },
)
async def api_job_events(
    request: Request,
    job_id: str,
    last_event_id: str | None = Header(default=None, description="The id of the last event received."),
    user: CurrentUser = Depends(require_user),
) -> Response:
    """The job's progress as server-sent events."""
    # async: it only awaits (each read of the job runs in the thread pool), so a stream
    # waiting for a job holds no thread and no database connection.
    settings = get_app_settings(request)
    first = await run_in_threadpool(_job_event, request, user.id, job_id)  # NotFound: a 404 before streaming
    if first.final and first.id == last_event_id:
        return Response(status_code=204)

    def snapshot() -> events.Event:
        try:
            return _job_event(request, user.id, job_id)
        except NotFound:  # deleted meanwhile (the account went): end the stream
            return events.Event("gone", "gone", {"error": "No such job.", "field": None}, final=True)

    body = events.stream(
        snapshot,
        poll_s=settings.api_events_poll_s,
        keepalive_s=settings.api_events_keepalive_s,
        max_s=settings.api_events_max_s,
        last_event_id=last_event_id,
        disconnected=request.is_disconnected,
    )
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}  # nginx: pass each event on at once
    return StreamingResponse(body, media_type="text/event-stream", headers=headers)


def _job_event(request: Request, user_id: int, job_id: str) -> events.Event:
    """The job's state as its next event (a blocking read: called in the thread pool)."""
    settings = get_app_settings(request)
    progress = service.job_progress(settings, user_id, job_id)
    if not progress.done:
        out = schemas.ProgressOut(
            id=job_id,
            status=progress.status,
            step=progress.step,
            steps=progress.steps,
            progress=min(1.0, progress.step / progress.steps) if progress.steps else 0.0,
            preview_url=_preview_url(request, job_id, progress.step) if progress.has_preview else None,
            cancel_requested=progress.cancel_requested,
        )
        event_id = f"{progress.status}.{progress.step}.{int(progress.has_preview)}.{int(progress.cancel_requested)}"
        return events.Event("progress", event_id, out.model_dump(mode="json"))
    job, images = service.get_job(settings, user_id, job_id)
    return events.Event(
        "done", JobStatus(job.status).value, job_out(request, job, images).model_dump(mode="json"), True
    )
