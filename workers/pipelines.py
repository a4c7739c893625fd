"""Model references → loaded diffusers pipelines, kept warm per worker process.

A reference is a hub id (``stabilityai/stable-diffusion-2-1``), a local
diffusers folder, the committed demo model, or the built-in tiny test model,
which is built from configs on first use and then loaded through exactly the
same code as a real model.

A worker serving several catalog models keeps the pipelines it loaded in an LRU
bounded by ``GOUACHE_WORKER_MODEL_MEMORY_MB``: a pipeline's size is the bytes of its
parameters and buffers, and least recently used pipelines are dropped until the
new one fits (the one being loaded always stays, even alone over the budget).
"""

from __future__ import annotations

import fcntl
import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

import torch
from PIL import Image

from app.config import Settings
from app.generation.catalog import BUILTIN_DEMO_MODEL, BUILTIN_TINY_MODEL, DEMO_MODEL_DIR

log = logging.getLogger(__name__)
_loaded: OrderedDict[str, object] = OrderedDict()  # ref -> pipeline, least recently used first
_sizes: dict[str, int] = {}  # ref -> bytes
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
    if ref == BUILTIN_DEMO_MODEL:
        return str(DEMO_MODEL_DIR)
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


def pipeline_bytes(pipe) -> int:
    """The memory a pipeline's weights take: the bytes of every parameter and buffer of
    its torch modules (each tensor counted once, however many components share it)."""
    seen: set[int] = set()
    total = 0
    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for tensor in (*component.parameters(), *component.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


def loaded_refs() -> list[str]:
    """The references of the pipelines this process holds, least recently used first."""
    with _lock:
        return list(_loaded)


def unload_all() -> None:
    """Drop every loaded pipeline (tests; a worker keeps them)."""
    with _lock:
        _loaded.clear()
        _sizes.clear()
    _free_memory()


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _evict_for(ref: str, size: int, budget: int) -> None:
    """Drop least recently used pipelines (never ``ref``) until ``size`` more bytes fit."""
    evicted = False
    while budget and _loaded and sum(_sizes.values()) + size > budget:
        oldest = next(iter(_loaded))
        if oldest == ref:
            break
        log.info("unloading model %s (%.0f MB) to make room", oldest, _sizes[oldest] / 2**20)
        del _loaded[oldest]
        del _sizes[oldest]
        evicted = True
    if evicted:
        _free_memory()


def load(settings: Settings, ref: str):
    """The text-to-image pipeline for ``ref``: loaded once, then kept warm while the
    worker's memory budget allows."""
    with _lock:
        pipe = _loaded.get(ref)
        if pipe is not None:
            _loaded.move_to_end(ref)
            return pipe
        from diffusers import AutoPipelineForText2Image

        device = pick_device(settings.device)
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        source = resolve(settings, ref)
        log.info("loading model %s on %s", source, device)
        # Weights arrive in host memory: measure them, and make room on the device
        # before moving them there.
        pipe = AutoPipelineForText2Image.from_pretrained(source, torch_dtype=dtype)
        size = pipeline_bytes(pipe)
        _evict_for(ref, size, settings.worker_model_memory_mb * 2**20)
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        _loaded[ref] = pipe
        _sizes[ref] = size
        return pipe


# Sampler id (app.enums.Sampler) -> (diffusers scheduler class name, options).
# Each scheduler is built from the model's own scheduler config, so the model's noise
# schedule, prediction type and timestep spacing carry over; only the solver changes.
_SCHEDULERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "ddim": ("DDIMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def use_sampler(pipe, sampler: str) -> None:
    """Give ``pipe`` the scheduler for ``sampler`` (an id from ``SAMPLERS``)."""
    import diffusers

    class_name, options = _SCHEDULERS[sampler]
    # Always derive from the model's original config, not from the last job's sampler.
    if not hasattr(pipe, "_gouache_scheduler_config"):
        pipe._gouache_scheduler_config = dict(pipe.scheduler.config)
    base = pipe._gouache_scheduler_config
    pipe.scheduler = getattr(diffusers, class_name).from_config(base, **options)


def size_multiple(pipe) -> int:
    """Image sides must be multiples of the VAE's downscale (8 for Stable Diffusion, 16 for the demo)."""
    return max(8, int(getattr(pipe, "vae_scale_factor", 8)))  # diffusers checks for 8 in any case


def derived(pipe, kind: str):
    """The image-to-image or inpainting pipeline sharing ``pipe``'s loaded components
    (diffusers' ``from_pipe``: no weights are loaded or copied), made once per model."""
    cache = pipe.__dict__.setdefault("_gouache_derived", {})
    if kind not in cache:
        import diffusers

        auto = {"img2img": diffusers.AutoPipelineForImage2Image, "inpaint": diffusers.AutoPipelineForInpainting}[kind]
        runner = auto.from_pipe(pipe)
        runner.set_progress_bar_config(disable=True)
        runner._gouache_scheduler_config = getattr(pipe, "_gouache_scheduler_config", dict(pipe.scheduler.config))
        cache[kind] = runner
    return cache[kind]


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
    sampler: str = "euler",
    image=None,
    mask=None,
    strength: float | None = None,
    on_step: Callable[[int, int, object], None] | None = None,
) -> list[tuple[Image.Image, int]]:
    """Run the model: text-to-image, or image-to-image from ``image`` (at ``strength``),
    or inpainting of ``mask``'s white area of ``image``. Image i uses seed ``seed + i``
    (so any one image can be made again alone). ``on_step(done, total)`` follows the
    denoising steps actually run (image-to-image runs ``steps × strength`` of them),
    and gets the current latents for a preview; an exception it raises stops the run.
    Returns ``[(PIL image, seed), ...]``."""
    seeds = [(seed + i) % 2**32 for i in range(n_images)]
    # CPU generators: the same seed gives the same image on any device.
    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    kwargs: dict = {"width": width, "height": height}
    runner = pipe
    if image is not None:
        runner = derived(pipe, "inpaint" if mask is not None else "img2img")
        kwargs = {"image": image, "strength": 1.0 if strength is None else strength}
        if mask is not None:
            kwargs.update(mask_image=mask, width=width, height=height)
    use_sampler(runner, sampler)

    def on_step_end(pipe_, step, _timestep, callback_kwargs):
        if on_step is not None:
            total = max(1, getattr(pipe_, "num_timesteps", steps) or steps)
            on_step(step + 1, total, callback_kwargs.get("latents"))
        return callback_kwargs

    result = runner(
        prompt=prompt,
        negative_prompt=negative_prompt or None,
        num_inference_steps=steps,
        guidance_scale=guidance,
        num_images_per_prompt=n_images,
        generator=generators,
        callback_on_step_end=on_step_end,
        **kwargs,
    )
    images = result.images
    if mask is not None:
        # Only the masked area may change: paste the original back over the rest, as
        # AUTOMATIC1111 and DreamStudio do (the VAE's round trip would blur it).
        images = [runner.image_processor.apply_overlay(mask, image, out) for out in images]
    return list(zip(images, seeds, strict=True))


# Linear latent -> RGB approximations (the "cheap approximation" AUTOMATIC1111 and
# ComfyUI use for live previews): no VAE decode, microseconds per preview.
_SD_LATENT_RGB = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))
_SDXL_LATENT_RGB = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
_SDXL_BIAS = (0.1084, -0.0175, -0.0011)


def preview(pipe, latents, max_side: int = 256):
    """A rough RGB picture of the first image's latents, as a PIL image."""
    from PIL import Image

    x = latents[0].detach().float().cpu()
    if x.shape[0] == 4 and type(pipe.vae).__name__ == "AutoencoderKL":
        xl = "XL" in type(pipe).__name__
        factors = torch.tensor(_SDXL_LATENT_RGB if xl else _SD_LATENT_RGB)
        rgb = torch.einsum("chw,cr->rhw", x, factors)
        if xl:
            rgb = rgb + torch.tensor(_SDXL_BIAS)[:, None, None]
        rgb = (rgb + 1) / 2
    else:  # another VAE (the demo model's): stretch the first three channels
        rgb = x[:3] if x.shape[0] >= 3 else x[:1].repeat(3, 1, 1)
        lo = rgb.amin(dim=(1, 2), keepdim=True)
        hi = rgb.amax(dim=(1, 2), keepdim=True)
        rgb = (rgb - lo) / (hi - lo + 1e-6)
    array = (rgb.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
    image = Image.fromarray(array)
    scale = max_side / max(image.size)
    return image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BILINEAR
    )
