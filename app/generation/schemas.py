"""A generation request, validated once at the edge into one typed object.

The page's form and the JSON API both go through :func:`parse_request`, so
they accept and refuse exactly the same things with the same messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from app.config import Settings
from app.errors import UserError

MAX_SEED = 2**32 - 1
MIN_SIZE = 64
MAX_GUIDANCE = 30.0


@dataclass(frozen=True)
class QuoteRequest:
    width: int
    height: int
    steps: int
    n_images: int


@dataclass(frozen=True)
class GenerationRequest(QuoteRequest):
    prompt: str
    negative_prompt: str
    guidance: float
    seed: int | None


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _int(data: Mapping[str, Any], field: str, label: str, default: int | None = None) -> int | None:
    value = data.get(field)
    if _blank(value):
        return default
    try:
        if isinstance(value, float) and not value.is_integer():
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


def _size(data: Mapping[str, Any], settings: Settings) -> tuple[int, int]:
    size = data.get("size")
    if not _blank(size):
        w, sep, h = str(size).lower().partition("x")
        if not sep or not w.strip() or not h.strip():
            raise UserError("Size must look like 512x512.", field="size")
        data = {"width": w, "height": h}
    width = _int(data, "width", "Width", settings.model_default_size)
    height = _int(data, "height", "Height", settings.model_default_size)
    for value, field, label in ((width, "width", "Width"), (height, "height", "Height")):
        _in_range(value, MIN_SIZE, settings.model_max_size, field, label)
        if value % 8:
            raise UserError(f"{label} must be a multiple of 8 (got {value}).", field=field)
    return width, height


def parse_quote(data: Mapping[str, Any], settings: Settings) -> QuoteRequest:
    width, height = _size(data, settings)
    steps = _int(data, "steps", "Steps", settings.model_default_steps)
    _in_range(steps, 1, settings.model_max_steps, "steps", "Steps")
    n = _int(data, "n", "Number of images", 1)
    _in_range(n, 1, settings.max_images_per_job, "n", "Number of images")
    return QuoteRequest(width=width, height=height, steps=steps, n_images=n)


def parse_request(data: Mapping[str, Any], settings: Settings) -> GenerationRequest:
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
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
    raw_guidance = data.get("guidance")
    try:
        guidance = 7.5 if _blank(raw_guidance) else float(raw_guidance)
    except (TypeError, ValueError):
        raise UserError("Guidance must be a number.", field="guidance") from None
    if guidance != guidance:  # NaN
        raise UserError("Guidance must be a number.", field="guidance")
    _in_range(guidance, 0, MAX_GUIDANCE, "guidance", "Guidance")
    seed = _int(data, "seed", "Seed")
    if seed is not None:
        _in_range(seed, 0, MAX_SEED, "seed", "Seed")
    return GenerationRequest(
        width=quote.width,
        height=quote.height,
        steps=quote.steps,
        n_images=quote.n_images,
        prompt=prompt,
        negative_prompt=negative,
        guidance=guidance,
        seed=seed,
    )


class ImageOut(BaseModel):
    id: str
    index: int
    seed: int
    width: int
    height: int
    url: str


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
    model: str
    price: int
    error: str
    created_at: datetime
    images: list[ImageOut]
