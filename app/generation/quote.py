"""What a request costs: the size it makes, the tiles an upscale is cut into, and the
price of those through the one price function.

The worker runs the very boxes :func:`tiles` returns, so what was priced is what runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from app.config import Settings
from app.credits import pricing
from app.db import reading
from app.enums import SAMPLERS, Mode
from app.errors import NotFound, UserError
from app.gallery import service as gallery
from app.generation import images, prompt_params, vocabulary
from app.generation.catalog import ModelSpec, get_catalog
from app.generation.schemas import MIN_SIZE, Extend, QuoteRequest, parse_quote, parse_sampler, size_for_aspect

UPSCALE_OVERLAP = 64  # pixels shared by neighbouring upscale tiles, blended when stitched


def tiles(model: ModelSpec, mode: str, width: int, height: int) -> list[images.Box]:
    """How a ``width`` × ``height`` output is cut for the model: one box, except for
    upscales larger than the model's maximum size. Priced here, run by the worker."""
    if mode != Mode.UPSCALE:
        return [(0, 0, width, height)]
    return images.tile_grid(width, height, model.max_size, UPSCALE_OVERLAP)


def quote(settings: Settings, req: QuoteRequest) -> int:
    """The price: per tile, of the steps the model really runs (``steps × strength`` for
    image modes), at the model's price multiplier, through the one price function."""
    model = get_catalog(settings).get(req.model)
    boxes = tiles(model, req.mode, req.width, req.height)
    left, top, right, bottom = boxes[0]
    return len(boxes) * pricing.price(
        settings,
        width=right - left,
        height=bottom - top,
        steps=req.denoising_steps,
        n_images=req.n_images,
        multiplier=model.price_multiplier,
    )


def quote_form(settings: Settings, user_id: int, data: Mapping[str, Any]) -> int | None:
    """The price of what the form describes, or None while an image mode has no image
    yet. An image mode's size comes from its gallery image, or from ``source_width`` /
    ``source_height``, which the page sends once an upload is chosen."""
    req = parse_quote(data, settings)
    if req.mode == Mode.TXT2IMG:
        return quote(settings, req)
    source_size = _form_source_size(settings, user_id, data)
    if source_size is None:
        return None
    width, height = output_size(settings, req, source_size)
    return quote(settings, replace(req, width=width, height=height))


def _form_source_size(settings: Settings, user_id: int, data: Mapping[str, Any]) -> tuple[int, int] | None:
    if data.get("source_image"):
        with reading(settings) as session:
            row = gallery.get_image(session, user_id, str(data["source_image"]))
            return row.width, row.height
    if not (data.get("source_width") and data.get("source_height")):
        return None
    try:
        size = int(data["source_width"]), int(data["source_height"])
    except (TypeError, ValueError):
        return None
    if min(size) < 1:
        return None
    if size[0] * size[1] > settings.max_upload_pixels:  # the upload will be refused: say so now
        raise UserError(
            f"The image is {size[0]}×{size[1]} pixels; the limit is {settings.max_upload_pixels / 1e6:.0f} megapixels.",
            field="image",
        )
    return size


def output_size(
    settings: Settings, req: QuoteRequest, source_size: tuple[int, int], field: str = "image"
) -> tuple[int, int]:
    """The size an image-mode job makes from a source of ``source_size`` (checked like a
    requested size: :func:`images.check_sides`)."""
    images.check_sides(source_size, field=field)
    w, h = source_size
    model = get_catalog(settings).get(req.model)
    m = model.size_multiple
    if req.mode == Mode.UPSCALE:
        factor = req.upscale or 2  # parse_quote's default
        out_w, out_h = w * factor // m * m, h * factor // m * m
        if max(out_w, out_h) > settings.max_upscale_side:
            raise UserError(
                f"Upscaling this {w}×{h} image {factor}× would make it {w * factor}×{h * factor}; "
                f"the limit is {settings.max_upscale_side} pixels a side.",
                field="upscale",
            )
        return out_w, out_h
    fitted = work_size(model, (w, h))
    if req.mode == Mode.OUTPAINT:
        extend = (req.extend or Extend()).scaled(fitted[0] / w)
        frame = fitted[0] + extend.left + extend.right, fitted[1] + extend.top + extend.bottom
        images.check_sides(frame, field="extend_left", what="The extended frame")
        out = images.outpaint_size(fitted, extend, model.max_size, m)
        if min(out) < MIN_SIZE:
            raise UserError(
                f"The extended frame ({frame[0]}×{frame[1]}) would be shrunk to {out[0]}×{out[1]} to fit "
                f"this model's {model.max_size}-pixel limit; extend it less.",
                field="extend_left",
            )
        return out
    return fitted


def work_size(model: ModelSpec, size: tuple[int, int]) -> tuple[int, int]:
    """The size the model works on a source image at: its own (to the size multiple) when
    the model can make it, else about the model's native pixel count."""
    w, h = size
    m = model.size_multiple
    if MIN_SIZE <= min(w, h) and max(w, h) <= model.max_size:
        return w // m * m, h // m * m
    return images.fitted_size((w, h), model.default_size, model.max_size, m)


@dataclass(frozen=True)
class SizePreset:
    label: str
    width: int
    height: int

    @property
    def value(self) -> str:
        return f"{self.width}x{self.height}"


_ASPECTS = (("Square", 1, 1), ("Landscape", 3, 2), ("Portrait", 2, 3), ("Wide", 16, 9), ("Tall", 9, 16))


def size_presets(model: ModelSpec) -> list[SizePreset]:
    """Aspect ratio presets with about the model's native pixel count, in the model's size multiple."""
    presets = []
    for name, aw, ah in _ASPECTS:
        w, h = size_for_aspect(model, aw, ah)
        presets.append(SizePreset(f"{name} {aw}:{ah} — {w}×{h}", w, h))
    m = model.size_multiple
    big = min(model.max_size, model.default_size * 2) // m * m
    if big > model.default_size:
        presets.append(SizePreset(f"Large square 1:1 — {big}×{big}", big, big))
    return presets


@dataclass(frozen=True)
class Typed:
    """A parameter typed in the prompt, as the form shows it: ``--n 4`` sets 4 images."""

    typed: str  # "--n 4"
    sets: str  # "4 images"


@dataclass(frozen=True)
class FormQuote:
    """What the form shows beside Generate: the price (or why there is none), the prompt's
    words the model has never seen, and what the prompt's typed parameters set, with the
    form fields they set (``overrides``: field name → value) so the page can show them."""

    model: ModelSpec
    price: int | None = None
    error: UserError | None = None
    unknown_words: list[str] = field(default_factory=list)
    typed: list[Typed] = field(default_factory=list)
    overrides: dict[str, str] = field(default_factory=dict)


def form_quote(settings: Settings, user_id: int, data: Mapping[str, Any]) -> FormQuote:
    """The price of what the form describes and what the form says about it."""
    catalog = get_catalog(settings)
    try:
        model = catalog.get(data.get("model") if isinstance(data.get("model"), str) else None)
    except UserError:
        model = catalog.default
    prompt = data.get("prompt")
    unknown = vocabulary.unknown_words(model, prompt) if isinstance(prompt, str) else []
    try:
        price = quote_form(settings, user_id, data)
        typed, overrides = _typed(settings, model, data)
    except (UserError, NotFound) as e:
        return FormQuote(model, error=e, unknown_words=unknown)
    return FormQuote(model, price, None, unknown, typed, overrides)


_SETS = {
    "seed": ("seed", "seed {}"),
    "steps": ("steps", "{} steps"),
    "guidance": ("guidance", "guidance {}"),
    "negative_prompt": ("negative_prompt", "leaves out {}"),
    "strength": ("strength", "strength {}"),
}


def _typed(settings: Settings, model: ModelSpec, data: Mapping[str, Any]) -> tuple[list[Typed], dict[str, str]]:
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        return [], {}
    _, fields = prompt_params.split(prompt)
    if not fields:
        return [], {}
    names = {m.group(0).strip(): m.group(1).lower() for m in prompt_params.PARAM.finditer(prompt)}
    typed_as = {prompt_params.FIELDS[name]: raw for raw, name in names.items()}
    typed: list[Typed] = []
    overrides: dict[str, str] = {}
    req = parse_quote(data, settings)
    for name, value in fields.items():
        label = f"{typed_as.get(name, '--' + name)} {value}"
        if name in ("aspect", "size"):
            if req.mode == Mode.TXT2IMG:
                typed.append(Typed(label, f"{req.width}×{req.height}"))
                overrides["size"] = f"{req.width}x{req.height}"
            else:
                typed.append(Typed(label, "nothing: the size comes from the image"))
        elif name == "n":
            typed.append(Typed(label, f"{req.n_images} image{'s' if req.n_images != 1 else ''}"))
            overrides["n"] = str(req.n_images)
        elif name == "sampler":
            sampler = parse_sampler(value)
            typed.append(Typed(label, f"the {SAMPLERS.get(sampler, sampler)} sampler"))
            overrides["sampler"] = sampler
        else:
            form_field, text = _SETS[name]
            typed.append(Typed(label, text.format(value)))
            overrides[form_field] = value
    return typed, overrides
