"""The model catalog: which models users can pick, their limits, prices and licences.

A TOML file named by ``GOUACHE_MODEL_CATALOG`` (see ``docs/catalog.example.toml``)::

    [[models]]
    id = "sd15"
    name = "Stable Diffusion 1.5"
    source = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # a hub id, a local diffusers folder,
                                                            # builtin:demo or builtin:tiny
    family = "sd1"                       # sd1, sd2, sdxl, turbo, demo, test
    default_size = 512
    max_size = 768
    default_steps = 30
    default_guidance = 7.5
    price_multiplier = 1.0
    licence = { name = "CreativeML OpenRAIL-M", url = "https://…", commercial_use = true }

The first entry is the default. Without a catalog file the catalog is one model,
described by the ``GOUACHE_MODEL*`` settings (the embedded default: the demo model),
so an install that never heard of catalogs behaves as before.

Each model has its own Celery queue, ``<GOUACHE_QUEUE>.<id>``; a worker consumes the
queues of the models it serves (``gouache worker --models sd15,sdxl``).

Plain data and pydantic only: the web process imports this, and never torch.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.config import REPO_ROOT, Settings
from app.errors import UserError

# The demo model trained by `gouache train-demo` and committed under models/: the default.
BUILTIN_DEMO_MODEL = "builtin:demo"
# An untrained pipeline built from configs on first use (for tests and debugging).
BUILTIN_TINY_MODEL = "builtin:tiny-random"
DEMO_MODEL_DIR = REPO_ROOT / "models" / "gouache-demo"
DEMO_GUIDANCE = 5.0  # the guidance scale the demo model's bench scores best at
DEMO_EXAMPLE_PROMPTS = (
    "a red circle on a blue background",
    "two yellow stars on a black background",
    "a green triangle in the top left on a white background",
    "three pink squares on a purple background",
)
DEMO_PLACEHOLDER = "a yellow star in the top left on a blue background"
# Every word of the demo model's captions (tools/demo/scenes.py; a unit test keeps the two
# in step): the form warns about any other word of a prompt before it is charged.
DEMO_VOCABULARY = (
    "a", "an", "one", "two", "three",
    "circle", "circles", "square", "squares", "triangle", "triangles", "star", "stars",
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "white", "black", "grey",
    "in", "the", "top", "bottom", "left", "right", "center", "on", "background",
)  # fmt: skip

Family = Literal["sd1", "sd2", "sdxl", "turbo", "demo", "test"]

PROJECT_LICENCE_NAME = "AGPL-3.0"
PROJECT_LICENCE_URL = "https://www.gnu.org/licenses/agpl-3.0.html"
DEMO_DESCRIPTION = (
    "A small model trained by Gouache on drawn scenes: circles, squares, triangles and stars (one, two or "
    "three, or one in a corner) in red, orange, yellow, green, blue, purple, pink, white, black or grey, on "
    "a plain background of another of those colours. Choose or configure a real model for anything else."
)
TINY_DESCRIPTION = "It has random weights and makes coloured noise: configure a real model for pictures."


class Licence(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=255)  # what jobs.licence records
    url: str = Field(default="", max_length=512, pattern=r"^(https?://\S+)?$")  # shown as a link
    # None only for a model configured by GOUACHE_MODEL alone, whose licence we do not know.
    commercial_use: bool | None

    @property
    def commercial_label(self) -> str:
        if self.commercial_use is None:
            return "check the licence before commercial use"
        return "commercial use allowed" if self.commercial_use else "commercial use not allowed"


class ModelSpec(BaseModel):
    """One catalog entry: what the form offers, the parser accepts and the price uses for a model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,47}$")
    name: str = Field(min_length=1, max_length=120)
    source: str = Field(min_length=1)
    family: Family = "sd1"
    description: str = ""
    default_size: int = Field(default=512, ge=64)
    max_size: int = Field(default=768, ge=64)
    size_multiple: int = Field(default=8, ge=8)
    default_steps: int = Field(default=30, ge=1)
    max_steps: int = Field(default=100, ge=1)
    default_guidance: float = Field(default=7.5, ge=0, le=30)
    price_multiplier: float = Field(default=1.0, gt=0)
    licence: Licence
    # "examples" is accepted too: the prompts offered as chips under the prompt box
    example_prompts: tuple[str, ...] = Field(default=(), validation_alias=AliasChoices("example_prompts", "examples"))
    # The prompt box's placeholder ("": a general one), and the words the model knows: when
    # given, the form warns (before anything is charged) about a prompt's other words.
    placeholder: str = Field(default="", max_length=300)
    vocabulary: tuple[str, ...] = ()
    # Loading (workers/pipelines.py): a replacement VAE's hub id or folder ("": the model's
    # own), and whether to run the model's own safety checker (off unless asked for).
    vae: str = ""
    safety_checker: bool = False

    @field_validator("source")
    @classmethod
    def _builtin_alias(cls, source: str) -> str:
        return BUILTIN_TINY_MODEL if source == "builtin:tiny" else source

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        for name in ("default_size", "max_size"):
            value = getattr(self, name)
            if value % self.size_multiple:
                raise ValueError(f"{name} ({value}) must be a multiple of size_multiple ({self.size_multiple})")
        if self.default_size > self.max_size:
            raise ValueError(f"default_size ({self.default_size}) is larger than max_size ({self.max_size})")
        if self.default_steps > self.max_steps:
            raise ValueError(f"default_steps ({self.default_steps}) is larger than max_steps ({self.max_steps})")
        if self.source.startswith("builtin:") and self.source not in (BUILTIN_DEMO_MODEL, BUILTIN_TINY_MODEL):
            raise ValueError(f"unknown built-in model {self.source!r}; use builtin:demo or builtin:tiny")
        return self

    @field_validator("vocabulary")
    @classmethod
    def _lowercase_words(cls, words: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(w.strip().lower() for w in words if w.strip()))

    @property
    def untrained(self) -> bool:
        return self.source == BUILTIN_TINY_MODEL

    def queue(self, prefix: str) -> str:
        """The Celery queue of this model's jobs."""
        return f"{prefix}.{self.id}"


class CatalogError(ValueError):
    """The catalog file is missing, unreadable or invalid (raised at startup)."""


class UnknownModel(UserError):
    def __init__(self, model_id: str, catalog: Catalog):
        super().__init__(
            f"Unknown model {model_id[:60]!r}; choose one of: {', '.join(catalog.ids)}.",
            field="model",
        )


class Catalog:
    """The models on offer, in the catalog's order; the first is the default."""

    def __init__(self, models: list[ModelSpec]) -> None:
        if not models:
            raise CatalogError("the model catalog has no models")
        seen: set[str] = set()
        for model in models:
            if model.id in seen:
                raise CatalogError(f"the model id {model.id!r} appears twice; ids must be unique")
            seen.add(model.id)
        self.models = list(models)
        self._by_id = {m.id: m for m in models}

    @property
    def default(self) -> ModelSpec:
        return self.models[0]

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.models]

    def get(self, model_id: str | None) -> ModelSpec:
        """The model with this id (the default for none); :class:`UnknownModel` (a 4xx) otherwise."""
        model_id = (model_id or "").strip()
        if not model_id:
            return self.default
        model = self._by_id.get(model_id)
        if model is None:
            raise UnknownModel(model_id, self)
        return model

    def find(self, ref: str) -> ModelSpec | None:
        """The model a job row names: by id, or by source (jobs queued before the catalog
        recorded the model's reference, like ``builtin:demo``)."""
        return self._by_id.get(ref) or next((m for m in self.models if m.source == ref), None)

    def display_name(self, ref: str) -> str:
        """What people see for the model a job or image names: its catalog name, else the last
        part of its reference (a model no longer offered)."""
        model = self.find(ref)
        return model.name if model else ref.rsplit("/", 1)[-1]

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)


def _where(entries: list, loc: tuple) -> str:
    """'models[2] (id "sdxl")' for an error inside the third entry."""
    if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
        index = loc[1]
        entry = entries[index] if index < len(entries) and isinstance(entries[index], dict) else {}
        label = f"models[{index}]"
        if isinstance(entry.get("id"), str):
            label += f" (id {entry['id']!r})"
        field = ".".join(str(p) for p in loc[2:])
        return f"{label}{' ' + field if field else ''}"
    return ".".join(str(p) for p in loc) or "the file"


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelSpec] = Field(min_length=1)


def load_file(path: Path) -> Catalog:
    """Read and validate a catalog file; :class:`CatalogError` names the file and the entry."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise CatalogError(f"cannot read the model catalog {path}: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise CatalogError(f"the model catalog {path} is not valid TOML: {e}") from e
    models = data.get("models")
    entries: list[Any] = models if isinstance(models, list) else []
    try:
        parsed = _CatalogFile.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{_where(entries, err['loc'])}: {err['msg'].removeprefix('Value error, ')}" for err in e.errors()
        )
        raise CatalogError(f"invalid model catalog {path}: {problems}") from None
    try:
        return Catalog(parsed.models)
    except CatalogError as e:
        raise CatalogError(f"invalid model catalog {path}: {e}") from None


def _guess_family(source: str) -> Family:
    lowered = source.lower()
    if "turbo" in lowered:
        return "turbo"
    if "xl" in lowered:
        return "sdxl"
    if "stable-diffusion-2" in lowered:
        return "sd2"
    return "sd1"


def _model_defaults(settings: Settings) -> dict[str, Any]:
    """The ``GOUACHE_MODEL*`` settings with each unset one (0 or empty) filled from the model's
    own defaults: the demo model paints 256² in 20 steps, the tiny test model 128², a real
    Stable Diffusion model 512² in 30. :class:`CatalogError` names a setting that cannot work."""
    source = settings.model
    demo, tiny = source == BUILTIN_DEMO_MODEL, source == BUILTIN_TINY_MODEL
    default_size = settings.model_default_size or (256 if demo else 128 if tiny else 512)
    values: dict[str, Any] = {
        "name": settings.model_name
        or ("Gouache demo (shapes and colours)" if demo else "Tiny random test model (untrained)" if tiny else source),
        "default_size": default_size,
        "max_size": settings.model_max_size or (512 if demo else 256 if tiny else max(768, default_size)),
        "default_steps": settings.model_default_steps or (20 if demo or tiny else 30),
        "max_steps": settings.model_max_steps,
        "default_guidance": settings.model_default_guidance or (DEMO_GUIDANCE if demo else 7.5),
        "size_multiple": settings.model_size_multiple,
        "price_multiplier": settings.model_price_multiplier,
    }
    multiple = settings.model_size_multiple
    for name in ("default_size", "max_size"):
        if values[name] < 64 or values[name] % multiple:
            raise CatalogError(
                f"GOUACHE_MODEL_{name.upper()} must be a multiple of {multiple} and at least 64 (got {values[name]})"
            )
    if values["default_size"] > values["max_size"]:
        raise CatalogError(
            f"GOUACHE_MODEL_DEFAULT_SIZE ({values['default_size']}) is larger than "
            f"GOUACHE_MODEL_MAX_SIZE ({values['max_size']})"
        )
    if values["default_steps"] > values["max_steps"]:
        raise CatalogError("GOUACHE_MODEL_DEFAULT_STEPS is larger than GOUACHE_MODEL_MAX_STEPS")
    return values


def from_settings(settings: Settings) -> Catalog:
    """The one-model catalog described by the ``GOUACHE_MODEL*`` settings."""
    source = settings.model
    values = _model_defaults(settings)
    description: str
    examples: tuple[str, ...]
    family: Family
    words: dict[str, Any] = {}
    if source == BUILTIN_DEMO_MODEL:
        words = {"vocabulary": DEMO_VOCABULARY, "placeholder": DEMO_PLACEHOLDER}
        model_id, family, description, examples = "demo", "demo", DEMO_DESCRIPTION, DEMO_EXAMPLE_PROMPTS
    elif source == BUILTIN_TINY_MODEL:
        model_id, family, description, examples = "tiny", "test", TINY_DESCRIPTION, ()
    else:
        model_id, family, description, examples = "default", _guess_family(source), "", ()
    if source in (BUILTIN_DEMO_MODEL, BUILTIN_TINY_MODEL):
        # Gouache's own models: trained (or built) by this project, under its licence.
        licence = Licence(name=PROJECT_LICENCE_NAME, url=PROJECT_LICENCE_URL, commercial_use=True)
    else:
        hub = "/" in source and not Path(source).exists() and not source.startswith(("/", "."))
        licence = Licence(
            name="See the model's licence",
            url=f"https://huggingface.co/{source}" if hub else "",
            commercial_use=None,
        )
    return Catalog(
        [
            ModelSpec(
                id=model_id,
                source=source,
                family=family,
                description=description,
                licence=licence,
                example_prompts=examples,
                vae=settings.model_vae,
                **words,
                **values,
            )
        ]
    )


def load(settings: Settings) -> Catalog:
    """The catalog these settings name, or the one-model catalog of the ``GOUACHE_MODEL*`` settings."""
    if settings.model_catalog is not None:
        return load_file(settings.model_catalog)
    return from_settings(settings)


_CATALOG_SETTINGS = frozenset(
    {
        "model_catalog",
        "model",
        "model_name",
        "model_default_size",
        "model_max_size",
        "model_default_steps",
        "model_max_steps",
        "model_default_guidance",
        "model_size_multiple",
        "model_price_multiplier",
        "model_vae",
    }
)


_loaded: dict[str, Catalog] = {}


def get_catalog(settings: Settings) -> Catalog:
    """The models users can pick (the first is the default), read once per process for the
    settings that describe it. Every process calls it at start, so a broken catalog file stops
    the web process and workers with a message naming the file and the entry (:class:`CatalogError`),
    not the first user's request."""
    key = settings.model_dump_json(include=set(_CATALOG_SETTINGS))
    catalog = _loaded.get(key)
    if catalog is None:
        try:
            catalog = _loaded[key] = load(settings)
        except CatalogError as e:
            if settings.model_catalog is None:
                raise
            raise CatalogError(f"GOUACHE_MODEL_CATALOG: {e}") from None
    return catalog
