"""The OpenAI-compatible Images API at ``/v1``: existing OpenAI clients work unchanged with
``base_url=…/v1`` and a Gouache API key.

- ``POST /v1/images/generations`` (JSON), ``POST /v1/images/edits`` (multipart: image, mask;
  inpainting), ``POST /v1/images/variations`` (multipart: image), ``GET /v1/models``.
- Every call goes through the form's path: OpenAI's fields become the form's fields,
  :func:`app.generation.schemas.parse_request` checks them and
  :func:`app.generation.service.submit` prices, holds and queues the job, so a call costs
  what the form quotes and its images land in the gallery.
- The answer waits for the job. The routes are ``async``: the blocking steps (parsing
  uploads, submitting, reading the job, reading the PNGs) each run in the thread pool, and
  between polls the request holds no thread at all (``await asyncio.sleep``). A plain ``def``
  route would keep one of the pool's 40 threads for the whole wait: 40 slow generations
  would stall every page of the site. ``GOUACHE_OPENAI_WAIT_S`` bounds the wait; a job not
  done by then is cancelled.
- Errors have OpenAI's shape and statuses (:func:`error_response`), so the client raises its
  typed exceptions: 400 ``BadRequestError``, 401 ``AuthenticationError``, 429
  ``RateLimitError`` both for a key's rate limit and for a balance too low
  (``insufficient_quota``, as OpenAI answers).
- ``url`` answers are signed links (:mod:`app.signing`) to the owner's PNG that work without
  a cookie for ``GOUACHE_OPENAI_URL_TTL_S``.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from app import signing
from app.config import Settings
from app.db import reading
from app.enums import JobStatus
from app.errors import AccountSuspended, InsufficientCredits, NotFound, UserError
from app.gallery import service as gallery
from app.gallery.models import Image
from app.generation import images, metadata, schemas, service
from app.generation.catalog import ModelSpec, get_catalog
from app.generation.models import Job
from app.web import CurrentUser, get_app_settings, require_user

PREFIX = "/v1"
router = APIRouter(prefix=PREFIX, tags=["openai"])

# OpenAI's own model names: a client written for them gets the default model of this server.
OPENAI_MODELS = ("dall-e-2", "dall-e-3", "gpt-image-1")
# A variation of an uploaded image is image-to-image at Midjourney-style variation strength,
# guided by the prompt in the image's own metadata (a Gouache or AUTOMATIC1111 PNG), the
# request's ``prompt`` (an extension), or else this.
VARIATION_PROMPT = "a variation of this image"
# Gouache's own fields a client may add (the openai client's ``extra_body``).
EXTRA_FIELDS = ("negative_prompt", "steps", "guidance", "seed", "sampler")
_STARTED = int(time.time())


# ---- errors in OpenAI's shape ----------------------------------------------------------------


def is_openai_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    retry: bool = True,
) -> JSONResponse:
    """``{"error": {"message", "type", "param", "code"}}``. ``retry=False`` sets the header
    OpenAI's clients read before retrying a 429 or 5xx on their own (``x-should-retry``)."""
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    response = JSONResponse(body, status_code=status)
    if not retry:
        response.headers["x-should-retry"] = "false"
    return response


class JobDidNotFinish(UserError):
    """The job failed, was cancelled, or was not done in time: no images to answer with."""

    def __init__(self, message: str, *, status_code: int, code: str):
        super().__init__(message)
        self.status_code = status_code
        self.code = code


def user_error_response(exc: UserError) -> JSONResponse:
    """A :class:`UserError` on a /v1 path, as OpenAI would answer it."""
    status, message, param = exc.status_code, exc.message, exc.field
    if isinstance(exc, JobDidNotFinish):
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return error_response(status, message, type=kind, code=exc.code, retry=False)
    if isinstance(exc, InsufficientCredits):  # OpenAI: 429 insufficient_quota, not to be retried
        return error_response(429, message, type="insufficient_quota", code="insufficient_quota", retry=False)
    if status == 401:
        return error_response(401, message, code="invalid_api_key")
    if isinstance(exc, AccountSuspended):
        return error_response(403, message, code="account_suspended")
    if status == 404:
        return error_response(404, message, code="not_found", param=param)
    if status == 429:
        return error_response(429, message, type="requests", code="rate_limit_exceeded")
    if status >= 500:
        return error_response(status, message, type="server_error", code="service_unavailable")
    if status == 403:
        return error_response(403, message, code="forbidden")
    return error_response(400, message, param=param)  # bad input: 400, whatever the form's status


def http_error_response(status: int, detail: str) -> JSONResponse:
    """Starlette's own errors (an unknown path, a method the path does not take)."""
    if status == 404:
        return error_response(404, "Unknown request URL. See /v1/models and /v1/images/….", code="unknown_url")
    if status == 405:
        return error_response(405, f"{detail}.", code="method_not_allowed")
    return error_response(status, detail, type="server_error" if status >= 500 else "invalid_request_error")


def validation_error_response(errors: list[dict[str, Any]]) -> JSONResponse:
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header"))
    message = first.get("msg", "Invalid request.")
    return error_response(400, f"{where}: {message}" if where else message, param=where or None)


# ---- requests and answers ------------------------------------------------------------------------


class ImageGenerationRequest(BaseModel):
    """OpenAI's ``images.generate`` body. Unknown fields (quality, style, background,
    moderation, output_format …) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(description="What to draw (Midjourney-style `--ar 16:9` parameters work too).")
    model: str | None = Field(
        default=None, description="A model id of GET /v1/models; OpenAI's names mean the default model."
    )
    n: int | None = Field(default=None, description="How many images (1 to the server's limit).")
    size: str | None = Field(default=None, description='"WIDTHxHEIGHT" or "auto" (the model\'s default).')
    response_format: Literal["url", "b64_json"] | None = "url"
    user: str | None = Field(default=None, description="Accepted and ignored.")
    # Gouache's own, for clients that add them (extra_body)
    negative_prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    sampler: str | None = None


class ImageData(BaseModel):
    url: str | None = Field(default=None, description="A signed link to the PNG, working without a key for a while.")
    b64_json: str | None = Field(default=None, description="The PNG, base64-encoded.")
    revised_prompt: str | None = Field(default=None, description="The prompt used, where it differs from the one sent.")


class ImagesResponse(BaseModel):
    created: int = Field(description="Unix time the job was made.")
    data: list[ImageData]


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gouache"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, insufficient_quota, requests (rate limit), server_error")
    param: str | None = Field(description="The request field at fault, if one is.")
    code: str | None = Field(description="invalid_api_key, insufficient_quota, rate_limit_exceeded, not_found …")


class ErrorResponse(BaseModel):
    error: ErrorDetail


def _model_id(name: str | None) -> str | None:
    """The catalog id a request's ``model`` names: OpenAI's own names (and none) mean the
    default model; anything else goes to the catalog as it is (unknown: 400)."""
    if not name or name in OPENAI_MODELS or name.startswith("gpt-image"):
        return None
    return name


def _size(value: str | None) -> str | None:
    return None if value is None or value.strip().lower() in ("", "auto") else value


def _fields(*, model: str | None, n: int | None, extras: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {"model": _model_id(model), "n": n}
    fields.update({k: v for k, v in extras.items() if k in EXTRA_FIELDS})
    return {k: v for k, v in fields.items() if v is not None}


async def _read_upload(upload: UploadFile | None, limit: int) -> bytes | None:
    if upload is None or not upload.filename:
        return None
    return await upload.read(limit + 1)  # one byte past the limit is enough to refuse it


# ---- the edit's mask, and a requested size for an uploaded image ---------------------------------


def _open(settings: Settings, data: bytes, field: str, label: str):
    limits = images.UploadLimits(settings.max_upload_bytes, settings.max_upload_pixels)
    return images.open_upload(data, field=field, label=label, limits=limits)


def _requested_size(settings: Settings, model: str | None, size: str | None) -> tuple[int, int] | None:
    """A ``size`` for an image mode, checked against the model as the form checks a size."""
    if size is None:
        return None
    quote = schemas.parse_quote({"size": size, "model": model}, settings)
    return quote.width, quote.height


def _resized(image, size: tuple[int, int] | None, field: str = "size"):
    from PIL import Image as PILImage

    if size is None or image.size == size:
        return image
    w, h = image.size
    if abs((w / h) / (size[0] / size[1]) - 1) > 0.01:
        raise UserError(
            f"The image is {w}×{h}; a size of {size[0]}x{size[1]} would change its shape. "
            "Ask for a size with the image's aspect ratio, or leave size out.",
            field=field,
        )
    return image.resize(size, PILImage.Resampling.LANCZOS)


def edit_uploads(
    settings: Settings, image: bytes | None, mask: bytes | None, size: tuple[int, int] | None
) -> dict[str, bytes]:
    """OpenAI's edit inputs as the form's inpainting inputs. OpenAI marks the area to edit
    with fully transparent pixels (alpha 0) of the mask, or of the image itself when there
    is no mask; Gouache's mask is white where the model repaints, black elsewhere."""
    if not image:
        raise UserError("Upload the image to edit (the image field).", field="image")
    source = _open(settings, image, "image", "the image")
    layer = _open(settings, mask, "mask", "the mask") if mask else source
    if mask and layer.size != source.size:
        raise UserError(
            f"The mask is {layer.width}×{layer.height} but the image is {source.width}×{source.height}; "
            "they must be the same size.",
            field="mask",
        )
    if not (layer.mode in ("RGBA", "LA", "PA") or (layer.mode == "P" and "transparency" in layer.info)):
        field = "mask" if mask else "image"
        raise UserError(
            "The mask must be a PNG with an alpha channel: fully transparent pixels mark where to edit"
            + ("" if mask else " (without a mask, the image's own transparent pixels do)")
            + ".",
            field=field,
        )
    repaint = layer.convert("RGBA").getchannel("A").point(lambda a: 255 if a == 0 else 0)
    if repaint.getbbox() is None:
        raise UserError("The mask has no fully transparent pixels: nothing to edit.", field="mask" if mask else "image")
    source, repaint = _resized(source.convert("RGB"), size), _resized(repaint, size)
    return {"image": images.png(source), "mask": images.png(repaint)}


def variation_upload(
    settings: Settings, image: bytes | None, size: tuple[int, int] | None
) -> tuple[dict[str, bytes], str, str]:
    """The image for a variation (resized to ``size`` if asked), and the prompts its own
    metadata carries (a Gouache or AUTOMATIC1111 PNG), if any."""
    if not image:
        raise UserError("Upload the image to make variations of (the image field).", field="image")
    source = _open(settings, image, "image", "the image")
    params = metadata.parse_a1111(source.info["parameters"]) if isinstance(source.info.get("parameters"), str) else {}
    if size is not None and source.size != size:
        image = images.png(_resized(source.convert("RGB"), size))
    return {"image": image}, params.get("prompt", ""), params.get("negative_prompt", "")


# ---- submitting, waiting, answering --------------------------------------------------------------


def _submit(
    settings: Settings, user_id: int, fields: dict[str, Any], uploads: dict[str, bytes], request_id: str | None
) -> Job:
    req = schemas.parse_request(fields, settings)
    return service.submit(settings, user_id, req, request_id or "", uploads)


async def _finished(request: Request, settings: Settings, user_id: int, job: Job) -> tuple[Job, list[Image]]:
    """The job once it is done, polled without holding a thread between reads; cancelled
    (and a :class:`JobDidNotFinish`) if it is not done within ``openai_wait_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.openai_wait_s
    delay = 0.05
    while True:
        job, made = await run_in_threadpool(service.get_job, settings, user_id, job.id)
        if job.done:
            break
        if loop.time() >= deadline:
            job = await run_in_threadpool(service.request_cancel, settings, user_id, job.id)
            if not job.done or job.status != JobStatus.SUCCEEDED:
                raise JobDidNotFinish(
                    f"The image was not ready within {settings.openai_wait_s:g} seconds, so the job was cancelled; "
                    "a cancelled job costs nothing. Try again later, or with fewer steps or images.",
                    status_code=504,
                    code="timeout",
                )
            continue
        if await request.is_disconnected():  # nobody to answer: the job goes on to the gallery
            raise JobDidNotFinish("The client went away.", status_code=499, code="client_closed_request")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 1.0)
    if job.status == JobStatus.FAILED:
        raise JobDidNotFinish(
            f"The generation failed: {job.error or 'unknown error'} No credits were charged.",
            status_code=500,
            code="generation_failed",
        )
    if job.status == JobStatus.CANCELLED:
        raise JobDidNotFinish(
            "The job was cancelled before it finished; no credits were charged.", status_code=409, code="cancelled"
        )
    return job, made


def _public_base(request: Request, settings: Settings) -> str:
    return settings.base_url.rstrip("/") or str(request.base_url).rstrip("/")


def signed_image_url(request: Request, settings: Settings, image: Image) -> str:
    expires, signature = signing.sign(settings, _signed_message(image.user_id, image.id), settings.openai_url_ttl_s)
    path = request.app.url_path_for("openai_image_file", image_id=image.id)
    return f"{_public_base(request, settings)}{path}?{urlencode({'expires': expires, 'signature': signature})}"


def _signed_message(user_id: int, image_id: str) -> str:
    return f"image:{user_id}:{image_id}"


def _b64(settings: Settings, user_id: int, made: list[Image]) -> list[str]:
    return [base64.b64encode(gallery.original(settings, user_id, i.id)).decode() for i in made]


async def _answer(
    request: Request, settings: Settings, user_id: int, job: Job, response_format: str | None, sent_prompt: str
) -> ImagesResponse:
    job, made = await _finished(request, settings, user_id, job)
    if response_format == "b64_json":
        encoded = await run_in_threadpool(_b64, settings, user_id, made)
        data: list[dict[str, Any]] = [{"b64_json": b} for b in encoded]
    else:
        data = [{"url": signed_image_url(request, settings, i)} for i in made]
    if job.prompt != sent_prompt.strip():  # e.g. "--ar 16:9" taken out, or a variation's own prompt
        for item in data:
            item["revised_prompt"] = job.prompt
    return ImagesResponse(created=int(job.created_at.timestamp()), data=[ImageData(**item) for item in data])


def _response_format(value: str | None) -> str:
    value = (value or "url").strip()
    if value not in ("url", "b64_json"):
        raise UserError("response_format must be url or b64_json.", field="response_format")
    return value


# ---- routes -----------------------------------------------------------------------------------


MASK_DOC = (
    "A PNG the image's size; its fully transparent pixels mark where to edit. "
    "Without one, the image's own transparent pixels do."
)
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No API key, or not a valid one (invalid_api_key)"},
    403: {"model": ErrorResponse, "description": "The account is suspended"},
    429: {"model": ErrorResponse, "description": "The key's rate limit (rate_limit_exceeded, with Retry-After)"},
}
ANSWER_DOC: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    400: {"model": ErrorResponse, "description": "Invalid input"},
    409: {"model": ErrorResponse, "description": "The job was cancelled before it finished (nothing charged)"},
    429: {
        "model": ErrorResponse,
        "description": "The key's rate limit or the cap on jobs at once (Retry-After), or credits too low "
        "(insufficient_quota; not to be retried)",
    },
    500: {"model": ErrorResponse, "description": "The job failed (generation_failed; nothing charged)"},
    503: {"model": ErrorResponse, "description": "The queue is unavailable (nothing charged)"},
    504: {"model": ErrorResponse, "description": "Not done within GOUACHE_OPENAI_WAIT_S: cancelled (nothing charged)"},
}


@router.post("/images/generations", responses=ANSWER_DOC, response_model_exclude_none=True)
async def create_image(
    request: Request,
    body: ImageGenerationRequest,
    idempotency_key: str | None = Header(default=None),
    user: CurrentUser = Depends(require_user),
) -> ImagesResponse:
    """Text to image; waits for the job and answers with its images."""
    settings = get_app_settings(request)
    extras = body.model_dump(include=set(EXTRA_FIELDS), exclude_none=True)
    fields = {"prompt": body.prompt, "size": _size(body.size), **_fields(model=body.model, n=body.n, extras=extras)}
    fields = {k: v for k, v in fields.items() if v is not None}
    job = await run_in_threadpool(_submit, settings, user.id, fields, {}, idempotency_key)
    return await _answer(request, settings, user.id, job, body.response_format, body.prompt)


@router.post("/images/edits", responses=ANSWER_DOC, response_model_exclude_none=True)
async def edit_image(
    request: Request,
    image: Annotated[UploadFile, File(description="The image to edit (PNG, JPEG or WebP).")],
    prompt: str = Form(description="What the edited area should show."),
    mask: Annotated[UploadFile | None, File(description=MASK_DOC)] = None,
    model: str | None = Form(default=None),
    n: int | None = Form(default=None),
    size: str | None = Form(default=None, description="Resize the image to this first (its aspect ratio)."),
    response_format: str | None = Form(default="url"),
    user_field: str | None = Form(default=None, alias="user", description="Accepted and ignored."),
    negative_prompt: str | None = Form(default=None),
    steps: int | None = Form(default=None),
    guidance: float | None = Form(default=None),
    seed: int | None = Form(default=None),
    sampler: str | None = Form(default=None),
    idempotency_key: str | None = Header(default=None),
    user: CurrentUser = Depends(require_user),
) -> ImagesResponse:
    """Inpainting: repaint the transparent part of the mask."""
    settings = get_app_settings(request)
    answer_format = _response_format(response_format)
    limit = settings.max_upload_bytes
    image_bytes, mask_bytes = await _read_upload(image, limit), await _read_upload(mask, limit)
    extras = dict(negative_prompt=negative_prompt, steps=steps, guidance=guidance, seed=seed, sampler=sampler)
    fields = {"prompt": prompt, "mode": "inpaint", **_fields(model=model, n=n, extras=extras)}
    fields = {k: v for k, v in fields.items() if v is not None}

    def submit() -> Job:
        wanted = _requested_size(settings, fields.get("model"), _size(size))
        uploads = edit_uploads(settings, image_bytes, mask_bytes, wanted)
        return _submit(settings, user.id, fields, uploads, idempotency_key)

    job = await run_in_threadpool(submit)
    return await _answer(request, settings, user.id, job, answer_format, prompt)


@router.post("/images/variations", responses=ANSWER_DOC, response_model_exclude_none=True)
async def image_variations(
    request: Request,
    image: Annotated[UploadFile, File(description="The image to vary (PNG, JPEG or WebP).")],
    model: str | None = Form(default=None),
    n: int | None = Form(default=None),
    size: str | None = Form(default=None, description="Resize the image to this first (its aspect ratio)."),
    response_format: str | None = Form(default="url"),
    user_field: str | None = Form(default=None, alias="user", description="Accepted and ignored."),
    prompt: str | None = Form(default=None, description="Gouache: guide the variation (default: the image's own)."),
    variation: Literal["subtle", "strong"] = Form(default="subtle", description="Gouache: how far to vary."),
    seed: int | None = Form(default=None),
    idempotency_key: str | None = Header(default=None),
    user: CurrentUser = Depends(require_user),
) -> ImagesResponse:
    """Variations of an uploaded image: image to image at the variation strength."""
    settings = get_app_settings(request)
    answer_format = _response_format(response_format)
    image_bytes = await _read_upload(image, settings.max_upload_bytes)
    fields = {
        "mode": "img2img",
        "strength": schemas.VARIATION_STRENGTH[variation],
        **_fields(model=model, n=n, extras={"seed": seed}),
    }

    def submit() -> Job:
        uploads, own_prompt, own_negative = variation_upload(
            settings, image_bytes, _requested_size(settings, fields.get("model"), _size(size))
        )
        chosen = {"prompt": (prompt or "").strip() or own_prompt or VARIATION_PROMPT, "negative_prompt": own_negative}
        return _submit(settings, user.id, {**fields, **chosen}, uploads, idempotency_key)

    job = await run_in_threadpool(submit)
    return await _answer(request, settings, user.id, job, answer_format, prompt or "")


def _model_object(model: ModelSpec) -> ModelObject:
    return ModelObject(id=model.id, created=_STARTED)


@router.get("/models", responses=ERRORS)
def list_models(request: Request, user: CurrentUser = Depends(require_user)) -> ModelList:
    """The catalog, in OpenAI's list shape (the first is the default)."""
    return ModelList(data=[_model_object(m) for m in get_catalog(get_app_settings(request))])


@router.get("/models/{model_id}", responses={**ERRORS, 404: {"model": ErrorResponse, "description": "No such model"}})
def get_model(request: Request, model_id: str, user: CurrentUser = Depends(require_user)) -> ModelObject:
    model = get_catalog(get_app_settings(request)).find(model_id)
    if model is None:
        raise NotFound(f"The model {model_id!r} does not exist.")
    return _model_object(model)


@router.get(
    "/files/images/{image_id}.png",
    name="openai_image_file",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "The PNG"},
        404: {"model": ErrorResponse, "description": "No such image, a wrong signature, or an expired link"},
    },
)
def image_file(
    request: Request,
    image_id: str,
    expires: int = Query(description="Unix time the link stops working."),
    signature: str = Query(max_length=100),
) -> Response:
    """An image of a /v1 answer's ``url``: the signed link opens the owner's PNG, no key needed."""
    settings = get_app_settings(request)
    with reading(settings) as session:
        row = session.get(Image, image_id)
        owner = row.user_id if row is not None else None
    if owner is None or not signing.verify(settings, _signed_message(owner, image_id), expires, signature):
        raise NotFound("This link is not valid, or it has expired.")
    data = gallery.original(settings, owner, image_id)
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
