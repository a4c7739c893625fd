"""A generation request, validated once at the edge into one typed object.

The page's form and the JSON API both go through :func:`parse_request`, so
they accept and refuse exactly the same things with the same messages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, overload

from pydantic import BaseModel, Field

from app.config import Settings
from app.enums import DEFAULT_SAMPLER, MODES, SAMPLERS
from app.errors import NotFound, UserError
from app.generation import blocklist, prompt_params
from app.generation.catalog import ModelSpec, get_catalog

MAX_SEED = 2**32 - 1
MIN_SIZE = 64
MAX_GUIDANCE = 30.0
MAX_ID_CHARS = 36  # a gallery image's id is a UUID
MAX_ASPECT = 4.0  # wider or taller than 4:1 is refused: models make repeated subjects there

_SAMPLER_ALIASES = {
    "".join(ch for ch in name.lower() if ch.isalnum()): sampler_id
    for sampler_id, label in SAMPLERS.items()
    for name in (sampler_id, label, label.replace("++", "pp"))
}


# The strength each image mode starts at (the share of the source that is repainted).
DEFAULT_STRENGTH = {"img2img": 0.6, "inpaint": 1.0, "outpaint": 1.0, "variation": 0.35, "upscale": 0.3}
VARIATION_STRENGTH = {"subtle": 0.35, "strong": 0.7}  # Midjourney's "vary (subtle / strong)"
MIN_STRENGTH = 0.05
UPSCALE_FACTORS = (2, 4)
MAX_EXTEND = 1024  # pixels added to one side when outpainting


@dataclass(frozen=True)
class Extend:
    """Pixels to add on each side of the source (outpainting)."""

    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0

    @property
    def any(self) -> bool:
        return any((self.left, self.right, self.top, self.bottom))

    def scaled(self, scale: float) -> Extend:
        """The same margins for a source resized by ``scale``."""
        return Extend(*(round(v * scale) for v in (self.left, self.right, self.top, self.bottom)))


@dataclass(frozen=True, kw_only=True)
class QuoteRequest:
    model: str  # a catalog id
    width: int
    height: int
    steps: int
    n_images: int
    mode: str = "txt2img"
    strength: float | None = None  # image modes only
    upscale: int | None = None  # upscale only: 2 or 4
    extend: Extend | None = None  # outpaint only

    @property
    def denoising_steps(self) -> int:
        """The steps the model really runs: image modes run ``steps × strength``."""
        if self.strength is None:
            return self.steps
        return max(1, round(self.steps * self.strength))


@dataclass(frozen=True, kw_only=True)
class GenerationRequest(QuoteRequest):
    prompt: str
    negative_prompt: str
    guidance: float
    seed: int | None
    sampler: str = DEFAULT_SAMPLER
    source_image_id: str | None = None  # a gallery image to start from (image modes)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


@overload
def _int(data: Mapping[str, Any], field: str, label: str, default: int) -> int: ...
@overload
def _int(data: Mapping[str, Any], field: str, label: str, default: None = None) -> int | None: ...
def _int(data: Mapping[str, Any], field: str, label: str, default: int | None = None) -> int | None:
    value = data.get(field)
    if _blank(value):
        return default
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(str(value).strip()) if not isinstance(value, (int, float)) else int(value)
    except (TypeError, ValueError):
        raise UserError(f"{label} must be a whole number.", field=field) from None


def _number(x: int | float) -> str:
    # "30" for 30.0, but whole numbers in full: :g would print 2**32-1 as 4.29497e+09.
    return str(x) if isinstance(x, int) else f"{x:g}"


def _in_range(value: int | float, lo: int | float, hi: int | float, field: str, label: str) -> None:
    if not lo <= value <= hi:
        raise UserError(f"{label} must be between {_number(lo)} and {_number(hi)}.", field=field)


def size_for_aspect(model: ModelSpec, aw: int, ah: int) -> tuple[int, int]:
    """A width and height of ratio ``aw:ah`` with about the model's native pixel count,
    in the model's size multiple and within its limits."""
    base, m = model.default_size, model.size_multiple
    scale = (base * base / (aw * ah)) ** 0.5
    scale = max(scale, MIN_SIZE / min(aw, ah))  # the short side at least MIN_SIZE ...
    scale = min(scale, model.max_size / max(aw, ah))  # ... and the long one within the limit
    w = max(MIN_SIZE, min(model.max_size // m * m, round(aw * scale / m) * m))
    h = max(MIN_SIZE, min(model.max_size // m * m, round(ah * scale / m) * m))
    return w, h


def _aspect(value: Any, model: ModelSpec) -> tuple[int, int]:
    text = str(value).strip()
    a, sep, b = text.partition(":")
    try:
        aw, ah = int(a), int(b)
    except ValueError:
        aw = ah = 0
    if not sep or aw <= 0 or ah <= 0:
        raise UserError(f"Aspect ratio must look like 16:9 (got {text!r}).", field="aspect")
    if max(aw / ah, ah / aw) > MAX_ASPECT:
        raise UserError(f"This model can't make {aw}:{ah} images; choose a ratio between 1:4 and 4:1.", field="aspect")
    w, h = size_for_aspect(model, aw, ah)
    if abs((w / h) / (aw / ah) - 1) > 0.1:  # clamped to the model's limits: the ratio is lost
        raise UserError(
            f"This model can't make {aw}:{ah} images within its {model.max_size}-pixel limit.",
            field="aspect",
        )
    return w, h


def _size(data: Mapping[str, Any], model: ModelSpec) -> tuple[int, int]:
    if not _blank(data.get("aspect")):
        return _aspect(data["aspect"], model)
    size = data.get("size")
    if not _blank(size):
        w, sep, h = str(size).lower().partition("x")
        if not sep or not w.strip() or not h.strip():
            raise UserError("Size must look like 512x512.", field="size")
        data = {"width": w, "height": h}
    width = _int(data, "width", "Width", model.default_size)
    height = _int(data, "height", "Height", model.default_size)
    for value, field, label in ((width, "width", "Width"), (height, "height", "Height")):
        _in_range(value, MIN_SIZE, model.max_size, field, label)
        if value % model.size_multiple:
            raise UserError(
                f"{label} must be a multiple of {model.size_multiple} for this model (got {value}).",
                field=field,
            )
    return width, height


def _float(data: Mapping[str, Any], field: str, label: str) -> float | None:
    value: Any = data.get(field)
    if _blank(value):
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{label} must be a number.", field=field) from None
    except OverflowError:  # a whole number too large for a float (JSON's 1 and 400 zeros)
        number = math.inf if value > 0 else -math.inf
    if number != number:  # NaN
        raise UserError(f"{label} must be a number.", field=field)
    return number  # ±inf stays: the caller's range check names the limits


def _mode_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    mode = str(data.get("mode") or "txt2img").strip().lower()
    if mode not in MODES:
        raise UserError(f"Unknown mode {mode[:30]!r}; choose one of: {', '.join(MODES)}.", field="mode")
    if mode == "txt2img":
        return {"mode": mode}
    strength = _float(data, "strength", "Strength")
    if mode == "variation" and strength is None and not _blank(data.get("variation")):
        variation = str(data["variation"]).strip().lower()
        if variation not in VARIATION_STRENGTH:
            raise UserError("Variation must be subtle or strong.", field="variation")
        strength = VARIATION_STRENGTH[variation]
    if strength is None:
        strength = DEFAULT_STRENGTH[mode]
    _in_range(strength, MIN_STRENGTH, 1.0, "strength", "Strength")
    fields: dict[str, Any] = {"mode": mode, "strength": strength}
    if mode == "upscale":
        factor = _int(data, "upscale", "Upscale factor", 2)
        if factor not in UPSCALE_FACTORS:
            raise UserError("Upscale by 2× or 4×.", field="upscale")
        fields["upscale"] = factor
    if mode == "outpaint":
        sides: dict[str, int] = {}
        for side in ("left", "right", "top", "bottom"):
            value = _int(data, f"extend_{side}", f"Extend {side}", 0)
            _in_range(value, 0, MAX_EXTEND, f"extend_{side}", f"Extend {side}")
            sides[side] = value
        extend = Extend(**sides)
        if not extend.any:
            raise UserError("Choose how far to extend the image on at least one side.", field="extend_left")
        fields["extend"] = extend
    return fields


def parse_quote(data: Mapping[str, Any], settings: Settings) -> QuoteRequest:
    """The fields that decide the price. For image modes, ``width``/``height`` are the
    output's size, which the caller derives from the source image
    (:func:`app.generation.service.output_size`)."""
    data = prompt_params.apply(dict(data))  # "--n 4" in the prompt is priced like the form's 4
    if isinstance(data.get("prompt"), str):
        blocklist.check_prompt(data["prompt"], settings)  # refused before anything is priced or held
    model = model_for(data, settings)
    modes = _mode_fields(data)
    width, height = _size(data, model) if modes["mode"] == "txt2img" else (MIN_SIZE, MIN_SIZE)
    steps = _int(data, "steps", "Steps", model.default_steps)
    _in_range(steps, 1, model.max_steps, "steps", "Steps")
    n = _int(data, "n", "Number of images", 1)
    _in_range(n, 1, settings.max_images_per_job, "n", "Number of images")
    if modes["mode"] == "upscale":
        n = 1  # an upscale makes one image
    return QuoteRequest(model=model.id, width=width, height=height, steps=steps, n_images=n, **modes)


def model_for(data: Mapping[str, Any], settings: Settings) -> ModelSpec:
    """The catalog model the request names in ``model`` (the default when it names none)."""
    value = data.get("model")
    if value is not None and not isinstance(value, str):
        raise UserError("Model must be a model id, as text.", field="model")
    return get_catalog(settings).get(value)


def parse_sampler(value: Any) -> str:
    if _blank(value):
        return DEFAULT_SAMPLER
    key = "".join(ch for ch in str(value).lower() if ch.isalnum())
    if key not in _SAMPLER_ALIASES:
        raise UserError(
            f"Unknown sampler {str(value)[:40]!r}; choose one of: {', '.join(SAMPLERS.values())}.", field="sampler"
        )
    return _SAMPLER_ALIASES[key]


def parse_request(data: Mapping[str, Any], settings: Settings) -> GenerationRequest:
    data = prompt_params.apply(dict(data))
    prompt = data.get("prompt")
    if _blank(prompt) and str(data.get("mode") or "").strip().lower() in ("variation", "upscale"):
        prompt = ""  # the source image's own prompt is used (filled in by the service)
    elif not isinstance(prompt, str) or not prompt.strip():
        raise UserError("Describe the image you want in the prompt.", field="prompt")
    prompt = prompt.strip()
    if len(prompt) > settings.max_prompt_chars:
        raise UserError(
            f"The prompt is {len(prompt)} characters long; the limit is {settings.max_prompt_chars}.", field="prompt"
        )
    negative = data.get("negative_prompt") or ""
    if not isinstance(negative, str):
        raise UserError("The negative prompt must be text.", field="negative_prompt")
    negative = negative.strip()
    if len(negative) > settings.max_prompt_chars:
        raise UserError(
            f"The negative prompt is longer than {settings.max_prompt_chars} characters.", field="negative_prompt"
        )
    quote = parse_quote(data, settings)
    guidance = _float(data, "guidance", "Guidance")
    if guidance is None:
        guidance = get_catalog(settings).get(quote.model).default_guidance
    _in_range(guidance, 0, MAX_GUIDANCE, "guidance", "Guidance")
    seed = _int(data, "seed", "Seed")
    if seed is not None:
        _in_range(seed, 0, MAX_SEED, "seed", "Seed")
    source_image_id = str(data.get("source_image") or "").strip() or None
    if quote.mode == "txt2img":
        source_image_id = None  # text to image starts from nothing
    elif source_image_id is not None and len(source_image_id) > MAX_ID_CHARS:
        raise NotFound("No such image.")
    if quote.mode in ("variation", "upscale") and source_image_id is None:
        raise UserError("Choose an image from your gallery.", field="source_image")
    return GenerationRequest(
        model=quote.model,
        width=quote.width,
        height=quote.height,
        steps=quote.steps,
        n_images=quote.n_images,
        mode=quote.mode,
        strength=quote.strength,
        upscale=quote.upscale,
        extend=quote.extend,
        source_image_id=source_image_id,
        prompt=prompt,
        negative_prompt=negative,
        guidance=guidance,
        seed=seed,
        sampler=parse_sampler(data.get("sampler")),
    )


class LicenceOut(BaseModel):
    name: str
    url: str
    commercial_use: bool | None


class ModelOut(BaseModel):
    id: str
    name: str
    family: str
    description: str
    default_size: int
    max_size: int
    size_multiple: int
    default_steps: int
    max_steps: int
    default_guidance: float
    price_multiplier: float
    licence: LicenceOut

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ModelOut:
        data = spec.model_dump(include=set(cls.model_fields) - {"licence"})
        return cls(**data, licence=LicenceOut(**spec.licence.model_dump()))


class ImageOut(BaseModel):
    id: str
    index: int
    seed: int
    width: int
    height: int
    url: str  # the PNG
    thumbnail_url: str | None = None  # a small WebP


class JobOut(BaseModel):
    id: str
    status: str
    progress: float
    step: int
    steps: int
    prompt: str
    negative_prompt: str
    width: int
    height: int
    guidance: float
    seed: int
    n_images: int
    sampler: str
    mode: str
    strength: float | None
    preview_url: str | None = None
    model: str
    licence: str
    licence_url: str
    licence_commercial_use: bool | None  # None: the model's licence did not say
    price: int
    error: str
    created_at: datetime
    images: list[ImageOut]


# ---- the API's documented shapes ----------------------------------------------------
# A generation's body is read by hand and checked by parse_request (one parser, one set of
# messages and limits for the form and the API); GenerationIn only documents it in the
# OpenAPI schema. The limits that depend on the model or the settings are in its text.


class GenerationIn(BaseModel):
    """A generation request. Only ``prompt`` is needed for text to image; every other field
    has the model's default. Image modes start from ``source_image`` (a gallery image's id)
    or, as form data, an uploaded ``image`` (and, for ``inpaint``, a ``mask``)."""

    prompt: str | None = Field(
        default=None, description="What to paint. Midjourney-style parameters work (`--ar 16:9 --n 4`)."
    )
    negative_prompt: str | None = None
    model: str | None = Field(default=None, description="A model id from `GET /api/v1/models`.")
    size: str | None = Field(default=None, description="`WIDTHxHEIGHT`, e.g. `512x512` (or width and height).")
    width: int | None = Field(default=None, ge=MIN_SIZE, description="A multiple of the model's size multiple.")
    height: int | None = Field(default=None, ge=MIN_SIZE)
    aspect: str | None = Field(default=None, description="An aspect ratio such as `16:9`, instead of a size.")
    steps: int | None = Field(default=None, ge=1, description="At most the model's max_steps.")
    guidance: float | None = Field(default=None, ge=0, le=MAX_GUIDANCE)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Empty: a random seed.")
    n: int | None = Field(default=None, ge=1, description="How many images (at most the server's limit).")
    sampler: str | None = Field(default=None, description="One of: " + ", ".join(SAMPLERS) + ".")
    mode: Literal["txt2img", "img2img", "inpaint", "outpaint", "variation", "upscale"] | None = None
    strength: float | None = Field(default=None, ge=MIN_STRENGTH, le=1.0)
    variation: Literal["subtle", "strong"] | None = None
    upscale: Literal[2, 4] | None = None
    extend_left: int | None = Field(default=None, ge=0, le=MAX_EXTEND)
    extend_right: int | None = Field(default=None, ge=0, le=MAX_EXTEND)
    extend_top: int | None = Field(default=None, ge=0, le=MAX_EXTEND)
    extend_bottom: int | None = Field(default=None, ge=0, le=MAX_EXTEND)
    source_image: str | None = Field(default=None, description="A gallery image's id (image modes).")
    request_id: str | None = Field(
        default=None, max_length=64, description="Like the Idempotency-Key header: a retry makes no second job."
    )


class GenerationForm(GenerationIn):
    """The same fields as form data, with the uploads of the image modes."""

    image: bytes | None = Field(default=None, json_schema_extra={"format": "binary"})
    mask: bytes | None = Field(
        default=None, json_schema_extra={"format": "binary"}, description="Inpainting: white where to paint."
    )


class ProgressOut(BaseModel):
    """A job's ``progress`` event: where it is, and its latest live preview."""

    id: str
    status: str
    step: int
    steps: int
    progress: float
    preview_url: str | None
    cancel_requested: bool
