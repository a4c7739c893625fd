"""Model references → loaded diffusers pipelines, kept warm per worker process.

A reference is a hub id (``stabilityai/stable-diffusion-2-1``), a local
diffusers folder, the committed demo model, or the built-in tiny test model,
which is built from configs on first use and then loaded through exactly the
same code as a real model.

A worker serving several catalog models keeps the pipelines it loaded in an LRU
bounded by ``GOUACHE_WORKER_MODEL_MEMORY_MB``: a pipeline's size is the bytes of its
parameters and buffers, and least recently used pipelines are dropped until the
new one fits (the one being loaded always stays, even alone over the budget).

The GPU path (:class:`Options`, from the settings and the model's catalog entry): weights
in ``GOUACHE_DTYPE`` (auto: float16 on CUDA, float32 elsewhere), read from the model's
``fp16`` variant files where it has them; on CUDA, channels-last UNet and VAE and fused
QKV projections; optionally ``torch.compile`` (``GOUACHE_COMPILE``, warmed when the worker
starts); VAE tiling above ``GOUACHE_VAE_TILING_ABOVE``; a replacement VAE (the fp16-safe
SDXL one) and the safety checker only where the catalog names them.
"""

from __future__ import annotations

import fcntl
import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch
from PIL import Image

from app.config import Settings
from app.generation.catalog import BUILTIN_DEMO_MODEL, BUILTIN_TINY_MODEL, DEMO_MODEL_DIR, get_catalog
from app.generation.images import Box, feather_mask

# A diffusers pipeline. Its components (unet, vae, scheduler ...) are attributes it
# registers at run time, which no type describes.
Pipeline: TypeAlias = Any
# on_step(done, total, latents or None); an exception it raises stops the run.
StepCallback: TypeAlias = Callable[[int, int, Any], None]

log = logging.getLogger(__name__)
_loaded: OrderedDict[str, Pipeline] = OrderedDict()  # ref -> pipeline, least recently used first
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


def pipeline_bytes(pipe: Pipeline) -> int:
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


DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def choose_dtype(setting: str, device: str) -> torch.dtype:
    """``GOUACHE_DTYPE`` for ``device``: auto is float16 on CUDA and float32 elsewhere
    (half precision on a CPU is slow and, for some kernels, missing)."""
    if setting == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return DTYPES[setting]


@dataclass(frozen=True)
class Options:
    """How a model is loaded and run on this worker (see the module's docstring)."""

    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    fuse_qkv: bool = False
    compile: bool = False
    vae_tiling_above: int = 0  # tile the VAE for images of more than this² pixels (0: never)
    vae: str = ""  # a replacement VAE's hub id or folder ("": the model's own)
    safety_checker: bool = False  # keep the model's safety checker (else it is not loaded)


def options_for(settings: Settings, ref: str) -> Options:
    """The options for ``ref`` on this worker: the settings, and the catalog entry whose
    source (or id) it is, if any."""
    device = pick_device(settings.device)
    cuda = device.startswith("cuda")
    spec = get_catalog(settings).find(ref)
    return Options(
        device=device,
        dtype=choose_dtype(settings.dtype, device),
        channels_last=cuda,
        fuse_qkv=cuda,
        compile=settings.compile,
        vae_tiling_above=settings.vae_tiling_above,
        vae=spec.vae if spec is not None else "",
        safety_checker=spec.safety_checker if spec is not None else False,
    )


def from_pretrained(source: str, options: Options) -> Pipeline:
    """Read the pipeline's weights (into host memory): the model's ``fp16`` variant files
    when the dtype is a half one and the model has them (half the bytes to read), else its
    full-precision files cast to the dtype."""
    from diffusers import AutoencoderKL, AutoPipelineForText2Image

    kwargs: dict[str, Any] = {_dtype_keyword(): options.dtype}
    if not options.safety_checker and "safety_checker" in _model_index(source):
        # the hub SD 1.x/2.x checker, only where the catalog asks for it: not even loaded
        kwargs.update(safety_checker=None, requires_safety_checker=False, feature_extractor=None)
    if options.vae:
        kwargs["vae"] = AutoencoderKL.from_pretrained(options.vae, **{_dtype_keyword(): options.dtype})
    if options.dtype in (torch.float16, torch.bfloat16):
        try:
            return AutoPipelineForText2Image.from_pretrained(source, variant="fp16", **kwargs)
        except (OSError, ValueError) as exc:  # no fp16 files: the full-precision ones, cast
            log.info("model %s has no fp16 variant (%s); casting its weights", source, str(exc).splitlines()[0][:200])
    return AutoPipelineForText2Image.from_pretrained(source, **kwargs)


def _dtype_keyword() -> str:
    """``dtype`` where diffusers takes it (it warns that ``torch_dtype`` is deprecated),
    ``torch_dtype`` in the older diffusers that know only that one."""
    import diffusers.utils

    return "dtype" if hasattr(diffusers.utils, "_resolve_dtype") else "torch_dtype"


def _model_index(source: str) -> dict[str, Any]:
    """The pipeline's ``model_index.json`` (its components), or {} if it cannot be read."""
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(source))
    except (OSError, ValueError):
        return {}


def optimise(pipe: Pipeline, options: Options) -> Pipeline:
    """Apply the run-time options to a pipeline already on its device."""
    if options.channels_last:
        for name in ("unet", "vae"):
            module = getattr(pipe, name, None)
            if isinstance(module, torch.nn.Module):
                module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch takes it
    if options.fuse_qkv and hasattr(pipe, "fuse_qkv_projections"):
        try:
            # the VAE's attention too where it is an AutoencoderKL (not the demo's tiny one)
            pipe.fuse_qkv_projections(vae=type(pipe.vae).__name__ == "AutoencoderKL")
        except (ValueError, AttributeError, NotImplementedError) as exc:  # a model with added KV projections
            log.info("no fused QKV projections for %s: %s", type(pipe).__name__, exc)
    if options.compile and isinstance(getattr(pipe, "unet", None), torch.nn.Module):
        # in place: the module keeps its class (and config); compiled on its first call
        pipe.unet.compile(fullgraph=True, mode="max-autotune-no-cudagraphs")
    pipe._gouache_vae_tiling_above = options.vae_tiling_above
    return pipe


def use_vae_tiling(pipe: Pipeline, width: int, height: int) -> bool:
    """Decode in tiles when the image is over the pipeline's tiling size (a 2048² decode
    in one piece needs tens of GB); whether it does."""
    above = getattr(pipe, "_gouache_vae_tiling_above", 0)
    tiled = bool(above) and width * height > above * above
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "enable_tiling"):
        vae.enable_tiling() if tiled else vae.disable_tiling()
    return tiled


def load(settings: Settings, ref: str) -> Pipeline:
    """The text-to-image pipeline for ``ref``: loaded once, then kept warm while the
    worker's memory budget allows."""
    with _lock:
        pipe = _loaded.get(ref)
        if pipe is not None:
            _loaded.move_to_end(ref)
            return pipe
        options = options_for(settings, ref)
        source = resolve(settings, ref)
        log.info("loading model %s on %s (%s)", source, options.device, str(options.dtype).removeprefix("torch."))
        # Weights arrive in host memory: measure them, and make room on the device
        # before moving them there.
        pipe = from_pretrained(source, options)
        size = pipeline_bytes(pipe)
        _evict_for(ref, size, settings.worker_model_memory_mb * 2**20)
        pipe = optimise(pipe.to(options.device), options)
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


def use_sampler(pipe: Pipeline, sampler: str) -> None:
    """Give ``pipe`` the scheduler for ``sampler`` (an id from ``SAMPLERS``)."""
    import diffusers

    class_name, options = _SCHEDULERS[sampler]
    # Always derive from the model's original config, not from the last job's sampler.
    if not hasattr(pipe, "_gouache_scheduler_config"):
        pipe._gouache_scheduler_config = dict(pipe.scheduler.config)
    base = pipe._gouache_scheduler_config
    pipe.scheduler = getattr(diffusers, class_name).from_config(base, **options)


def size_multiple(pipe: Pipeline) -> int:
    """Image sides must be multiples of the VAE's downscale (8 for Stable Diffusion, 16 for the demo)."""
    return max(8, int(getattr(pipe, "vae_scale_factor", 8)))  # diffusers checks for 8 in any case


def derived(pipe: Pipeline, kind: str) -> Pipeline:
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
    pipe: Pipeline,
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
    image: Image.Image | None = None,
    mask: Image.Image | None = None,
    strength: float | None = None,
    on_step: StepCallback | None = None,
) -> list[tuple[Image.Image, int]]:
    """Run the model: text-to-image, or image-to-image from ``image`` (at ``strength``),
    or inpainting of ``mask``'s white area of ``image``. Image i uses seed ``seed + i``
    (so any one image can be made again alone). ``on_step(done, total)`` follows the
    denoising steps actually run (image-to-image runs ``steps × strength`` of them),
    and gets the current latents for a preview; an exception it raises stops the run.
    Returns ``[(PIL image, seed), ...]``."""
    seeds = image_seeds(seed, n_images)
    kwargs: dict[str, Any] = {"width": width, "height": height}
    runner = pipe
    if image is not None:
        runner = derived(pipe, "inpaint" if mask is not None else "img2img")
        kwargs = {"image": image, "strength": 1.0 if strength is None else strength}
        if mask is not None:
            kwargs.update(mask_image=mask, width=width, height=height)
    images = _call(
        runner,
        prompt=prompt,
        negative_prompt=negative_prompt or None,
        num_images_per_prompt=n_images,
        seeds=seeds,
        size=(width, height),
        steps=steps,
        guidance=guidance,
        sampler=sampler,
        on_step=on_step,
        **kwargs,
    )
    if mask is not None and image is not None:
        # Only the masked area may change: paste the original back over the rest, as
        # AUTOMATIC1111 and DreamStudio do (the VAE's round trip would blur it).
        images = [runner.image_processor.apply_overlay(mask, image, out) for out in images]
    return list(zip(images, seeds, strict=True))


@dataclass(frozen=True)
class Request:
    """One job's share of a batched text-to-image call: its prompts, and its images'
    first seed (image i uses ``seed + i``, as when it runs alone)."""

    prompt: str
    negative_prompt: str
    seed: int
    n_images: int


def sample_batch(
    pipe: Pipeline,
    requests: Sequence[Request],
    *,
    width: int,
    height: int,
    steps: int,
    guidance: float,
    sampler: str = "euler",
    on_step: StepCallback | None = None,
) -> list[list[tuple[Image.Image, int]]]:
    """Text-to-image for several jobs that share the size, steps, guidance and sampler, in
    ONE pipeline call: each image gets its own prompt, negative prompt and generator (CPU,
    seeded as :func:`sample` seeds it), so each job's images are the ones it would make
    alone (to rounding: the batch's arithmetic is grouped differently). ``on_step`` gets
    the whole batch's latents, its images in ``requests``' order. Returns each request's
    ``[(PIL image, seed), ...]``."""
    if len({bool(request.negative_prompt) for request in requests}) > 1:
        # SDXL encodes no negative prompt as zeros, an empty one as text: not the same images
        raise ValueError("a batch's requests must all have a negative prompt, or none")
    prompts: list[str] = []
    negatives: list[str] = []
    seeds: list[int] = []
    for request in requests:
        prompts += [request.prompt] * request.n_images
        negatives += [request.negative_prompt] * request.n_images
        seeds += image_seeds(request.seed, request.n_images)
    images = _call(
        pipe,
        prompt=prompts,
        negative_prompt=negatives if any(negatives) else None,
        num_images_per_prompt=1,
        seeds=seeds,
        size=(width, height),
        steps=steps,
        guidance=guidance,
        sampler=sampler,
        on_step=on_step,
        width=width,
        height=height,
    )
    made = list(zip(images, seeds, strict=True))
    out: list[list[tuple[Image.Image, int]]] = []
    for request in requests:
        out.append(made[: request.n_images])
        made = made[request.n_images :]
    return out


def image_seeds(seed: int, n_images: int) -> list[int]:
    return [(seed + i) % 2**32 for i in range(n_images)]


def _call(
    runner: Pipeline,
    *,
    seeds: list[int],
    size: tuple[int, int],
    steps: int,
    guidance: float,
    sampler: str,
    on_step: StepCallback | None,
    **kwargs: Any,
) -> list[Image.Image]:
    """One pipeline call: its sampler, VAE tiling and per-image CPU generators (the same
    seed gives the same image on any device); ``on_step`` after each step."""
    use_sampler(runner, sampler)
    use_vae_tiling(runner, *size)
    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]

    def on_step_end(pipe_: Pipeline, step: int, _timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        # Only Python ints here and the latents handed on as they are: nothing waits for
        # the device (a preview copies them only when one is due: workers/tasks.py).
        if on_step is not None:
            total = max(1, getattr(pipe_, "num_timesteps", steps) or steps)
            on_step(step + 1, total, callback_kwargs.get("latents"))
        return callback_kwargs

    result = runner(
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generators,
        callback_on_step_end=on_step_end,
        **kwargs,
    )
    return list(result.images)


def upscale(
    pipe: Pipeline,
    source: Image.Image,
    *,
    size: tuple[int, int],
    boxes: Sequence[Box],
    overlap: int,
    prompt: str,
    negative_prompt: str = "",
    steps: int,
    guidance: float,
    seed: int,
    sampler: str = "euler",
    strength: float | None,
    on_step: StepCallback | None = None,
) -> Image.Image:
    """Resize ``source`` (Lanczos) to ``size``, then repaint detail with a low-strength
    image-to-image pass in each of ``boxes`` (the tiles the job was priced for; tile i
    uses seed ``seed + i``), blended where neighbours share ``overlap`` pixels.
    ``on_step`` follows the steps of all the tiles together."""
    big = source.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    out = big.copy()
    ramp = overlap // 2 if len(boxes) > 1 else 0
    for i, box in enumerate(boxes):
        tile = big.crop(box)
        [(painted, _)] = sample(
            pipe,
            prompt=prompt,
            negative_prompt=negative_prompt,
            width=tile.width,
            height=tile.height,
            steps=steps,
            guidance=guidance,
            seed=seed + i,
            sampler=sampler,
            image=tile,
            strength=strength,
            on_step=_tile_progress(on_step, i, len(boxes)),
        )
        out.paste(painted.resize(tile.size), box[:2], feather_mask(tile.size, box, big.size, ramp))
    return out


def _tile_progress(on_step: StepCallback | None, index: int, count: int) -> StepCallback | None:
    """Tile ``index``'s steps as steps of the whole upscale."""
    if on_step is None:
        return None
    report = on_step

    def tile_step(done: int, total: int, latents: Any) -> None:
        report(index * total + done, total * count, latents)

    return tile_step


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


@dataclass(frozen=True)
class HostCopy:
    """Latents on their way to host memory: an asynchronous copy from the GPU, and the
    event that marks it done (the pipeline's thread never waits for it)."""

    tensor: torch.Tensor
    ready: Any  # torch.cuda.Event

    def wait(self) -> torch.Tensor:
        self.ready.synchronize()
        return self.tensor


Latents: TypeAlias = "torch.Tensor | HostCopy"


def snapshot(latents: torch.Tensor) -> Latents:
    """A copy of ``latents`` the next steps cannot change, taken without waiting for the
    device: on CUDA, queued behind the step that made them into pinned host memory."""
    latents = latents.detach()
    if latents.device.type != "cuda":
        return latents.clone()
    host = torch.empty(latents.shape, dtype=latents.dtype, pin_memory=True)
    host.copy_(latents, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return HostCopy(host, ready)


def preview(pipe: Pipeline, latents: Latents, max_side: int = 256) -> Image.Image:
    """A rough RGB picture of the first image's latents, as a PIL image."""
    if isinstance(latents, HostCopy):
        latents = latents.wait()
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
