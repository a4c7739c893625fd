"""Model references → loaded diffusers pipelines, once per worker process.

A reference is a hub id (``stabilityai/stable-diffusion-2-1``), a local
diffusers folder, or the built-in tiny test model, which is built from configs
on first use and then loaded through exactly the same code as a real model.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Callable

import torch

from app.config import BUILTIN_TINY_MODEL, Settings

log = logging.getLogger(__name__)
_loaded: dict[str, object] = {}
_lock = threading.Lock()


def pick_device(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve(settings: Settings, ref: str) -> str:
    """Turn a model reference into what ``from_pretrained`` accepts."""
    if ref != BUILTIN_TINY_MODEL:
        return ref
    path = settings.builtin_model_dir
    if not (path / "model_index.json").is_file():
        from workers.tiny_model import build_tiny_pipeline

        path.parent.mkdir(parents=True, exist_ok=True)
        # Several worker processes may start at once: one builds, the others wait.
        with open(path.parent / ".tiny-random.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (path / "model_index.json").is_file():
                log.info("building the tiny random test model in %s", path)
                tmp = path.with_name(path.name + ".partial")
                build_tiny_pipeline(tmp)
                tmp.rename(path)
    return str(path)


def load(settings: Settings, ref: str):
    """The text-to-image pipeline for ``ref``, loaded once and kept warm."""
    with _lock:
        pipe = _loaded.get(ref)
        if pipe is None:
            from diffusers import AutoPipelineForText2Image

            device = pick_device(settings.device)
            dtype = torch.float16 if device.startswith("cuda") else torch.float32
            source = resolve(settings, ref)
            log.info("loading model %s on %s", source, device)
            pipe = AutoPipelineForText2Image.from_pretrained(source, torch_dtype=dtype)
            pipe = pipe.to(device)
            pipe.set_progress_bar_config(disable=True)
            _loaded[ref] = pipe
        return pipe


def sample(
    pipe,
    *,
    prompt: str,
    negative_prompt: str = "",
    width: int,
    height: int,
    steps: int,
    guidance: float,
    seed: int,
    n_images: int = 1,
    on_step: Callable[[int], None] | None = None,
) -> list[tuple[object, int]]:
    """Run a text-to-image pipeline; image i uses seed ``seed + i`` (so any one image
    can be made again alone). Returns ``[(PIL image, seed), ...]``."""
    seeds = [(seed + i) % 2**32 for i in range(n_images)]
    # CPU generators: the same seed gives the same image on any device.
    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]

    def on_step_end(_pipe, step, _timestep, callback_kwargs):
        if on_step is not None:
            on_step(step + 1)
        return callback_kwargs

    result = pipe(
        prompt=prompt,
        negative_prompt=negative_prompt or None,
        width=width,
        height=height,
        num_inference_steps=steps,
        guidance_scale=guidance,
        num_images_per_prompt=n_images,
        generator=generators,
        callback_on_step_end=on_step_end,
    )
    return list(zip(result.images, seeds, strict=True))
