"""The whole `gouache` command: the web side's commands from ``app/cli.py`` (web, dev,
db, credits) and the worker side's: worker, generate, train-demo.

torch and diffusers are imported inside the commands that run a model, so ``gouache
--help`` and the web commands work in a web-only install (without the ``worker`` extra).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from app import cli as web_cli
from app.config import Settings, get_settings
from app.generation.catalog import ModelSpec, from_settings, get_catalog

if TYPE_CHECKING:
    from PIL import Image

    from app.generation.metadata import Parameters

cli = typer.Typer(help=web_cli.HELP, no_args_is_help=True)
cli.add_typer(web_cli.cli)  # no name: its commands join these at the top level


def _require_worker_extra(command: str) -> None:
    """Exit 1 with a message, not an ImportError, where the worker extra is not installed."""
    if any(importlib.util.find_spec(name) is None for name in ("torch", "diffusers")):
        typer.secho(
            f"gouache {command} runs models: install the worker extra (pip install 'gouache[worker]').",
            fg="red",
            err=True,
        )
        raise typer.Exit(1)


@cli.command()
def worker(
    models: str = typer.Option(
        None, help="Comma-separated catalog model ids to serve (default: every model in the catalog)."
    ),
    queues: str = typer.Option(None, help="Comma-separated Celery queues to consume instead of --models' queues."),
    loglevel: str = "INFO",
) -> None:
    """Run one generation worker (one job at a time; the models it served kept loaded
    within GOUACHE_WORKER_MODEL_MEMORY_MB)."""
    _require_worker_extra("worker")
    from app.queue import ensure_data_dir
    from workers.celery_app import app as celery_app

    ensure_data_dir(get_settings())
    celery_app.worker_main(argv=web_cli.worker_argv(queues, loglevel, models))


# generate -------------------------------------------------------------------------


def _model_spec(settings: Settings, model: str | None) -> ModelSpec:
    """A catalog id, or any model reference (hub id, folder) with that model's own defaults."""
    catalog = get_catalog(settings)
    found = catalog.find(model) if model else catalog.default
    return found or from_settings(settings.model_copy(update={"model": model, "model_name": ""})).default


def _sampler_or_exit(sampler: str) -> str:
    from app.errors import UserError
    from app.generation.schemas import parse_sampler

    try:
        return parse_sampler(sampler)
    except UserError as e:
        typer.secho(str(e), fg="red", err=True)
        raise typer.Exit(2) from None


def _image_paths(out: str, n: int) -> list[Path]:
    """``out`` itself for one image; ``name-1.png``, ``name-2.png`` ... for several."""
    target = Path(out)
    if n == 1:
        return [target]
    return [target.with_name(f"{target.stem}-{i + 1}{target.suffix or '.png'}") for i in range(n)]


def _write_pngs(images: list[tuple[Image.Image, int]], paths: list[Path], params: Parameters) -> None:
    """Each image as a PNG carrying its own seed and size in its parameters."""
    from app.generation import metadata

    for path, (image, image_seed) in zip(paths, images, strict=True):
        own = replace(params, seed=image_seed, width=image.width, height=image.height)
        path.write_bytes(metadata.png_bytes(image, own))
        typer.echo(f"{path}  seed {image_seed}  {image.width}×{image.height}")


@cli.command()
def generate(
    prompt: str = typer.Argument(..., help="What to draw."),
    out: str = typer.Option(
        "gouache.png", "--out", "-o", help="Where to write the PNG (several images: -1, -2 ... suffixes)."
    ),
    model: str = typer.Option(
        None, help="A catalog model id, a hub id or a local diffusers folder (default: the catalog's first model)."
    ),
    negative: str = typer.Option("", "--negative", help="Negative prompt."),
    steps: int = typer.Option(None, min=1, max=500, help="Sampling steps (default: the model's)."),
    width: int = typer.Option(None, min=64, max=4096, help="Width in pixels (the model's size multiple)."),
    height: int = typer.Option(None, min=64, max=4096, help="Height in pixels (the model's size multiple)."),
    guidance: float = typer.Option(None, min=0, max=30, help="Guidance scale (default: the model's)."),
    sampler: str = typer.Option("euler", help="euler, euler_a, dpmpp_2m_karras, ddim or unipc."),
    seed: int = typer.Option(None, min=0, max=2**32 - 1, help="Random when omitted; printed either way."),
    n: int = typer.Option(1, "--n", min=1, max=9, help="How many images."),
) -> None:
    """Generate images from the command line, without the web app or a worker."""
    import secrets
    import time

    from app.enums import SAMPLERS
    from app.generation.metadata import Parameters

    _require_worker_extra("generate")
    from workers import logs, pipelines

    logs.drop_library_notices()  # the libraries' notices a worker filters (its progress bars stay)

    settings = get_settings()
    spec = _model_spec(settings, model)
    sampler_key = _sampler_or_exit(sampler)
    params = Parameters(
        prompt=prompt,
        negative_prompt=negative,
        steps=steps or spec.default_steps,
        sampler=SAMPLERS[sampler_key],
        guidance=spec.default_guidance if guidance is None else guidance,
        seed=secrets.randbelow(2**32) if seed is None else seed,
        width=width or spec.default_size,
        height=height or spec.default_size,
        model=spec.name,
    )
    started = time.perf_counter()
    pipe = pipelines.load(settings, spec.source)
    loaded = time.perf_counter()
    multiple = pipelines.size_multiple(pipe)
    if params.width % multiple or params.height % multiple:
        typer.secho(f"Width and height must be multiples of {multiple} for this model.", fg="red", err=True)
        raise typer.Exit(2)
    images = pipelines.sample(
        pipe,
        prompt=prompt,
        negative_prompt=negative,
        width=params.width,
        height=params.height,
        steps=params.steps,
        guidance=params.guidance,
        seed=params.seed,
        n_images=n,
        sampler=sampler_key,
    )
    _write_pngs(images, _image_paths(out, n), params)
    typer.echo(f"loaded in {loaded - started:.1f} s, sampled in {time.perf_counter() - loaded:.1f} s")


# train-demo -----------------------------------------------------------------------


@dataclass(frozen=True)
class _TrainOptions:
    """train-demo's options that need checking before anything is written."""

    size: int
    device: str
    init_from: str
    continue_unet: bool
    unet_channels: str


def _refuse(message: str) -> typer.Exit:
    typer.secho(message, fg="red", err=True)
    return typer.Exit(2)


def _checked_channels(options: _TrainOptions) -> tuple[int, ...]:
    """The UNet's channels per level, after refusing (exit 2, nothing written) options
    that cannot work: a size off the VAE's grid, --continue-unet alone, a folder that is
    not an exported model, a CUDA device that is not there."""
    if options.size % 64:
        raise _refuse("--size must be a multiple of 64.")
    if options.continue_unet and not options.init_from:
        raise _refuse("--continue-unet needs --init-from.")
    if options.init_from and not (Path(options.init_from) / "model_index.json").is_file():
        raise _refuse(f"--init-from {options.init_from}: not an exported model folder (no model_index.json).")
    if options.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise _refuse(f"--device {options.device}: no CUDA GPU is visible here (try --device auto).")
    try:
        return tuple(int(c) for c in options.unet_channels.split(","))
    except ValueError:
        raise _refuse("--unet-channels takes integers such as 32,64,128,128.") from None


@cli.command("train-demo")
def train_demo(
    out: str = typer.Option("var/train-demo", help="Working folder: checkpoints/ and the finished model/."),
    seed: int = typer.Option(0, help="Everything (data, initial weights, noise) follows from this seed."),
    size: int = typer.Option(256, help="Native image size (a multiple of 64)."),
    vae_steps: int = typer.Option(1500, min=1),
    unet_steps: int = typer.Option(3000, min=1),
    n_scenes: int = typer.Option(6000, min=1, help="Training scenes for the UNet (latents computed once)."),
    unet_batch: int = typer.Option(32, min=1),
    vae_batch: int = typer.Option(16, min=1),
    unet_lr: float = typer.Option(6e-4, min=0, help="Peak learning rate (cosine decay to 10%)."),
    warmup_steps: int = typer.Option(0, min=0, help="Linear learning-rate warm-up steps."),
    unet_channels: str = typer.Option("32,64,128,128", help="UNet channels per level, comma-separated."),
    attention_levels: int = typer.Option(2, min=1, help="Cross-attention in the coarsest N levels."),
    device: str = typer.Option("auto", help="auto (CUDA when there is a GPU), cpu, cuda or cuda:N."),
    init_from: str = typer.Option("", help="Continue from an exported model folder: reuse its VAE and text encoder."),
    continue_unet: bool = typer.Option(False, help="With --init-from: start from its UNet weights too."),
    time_budget: float = typer.Option(0, min=0, help="Seconds the UNet stage may take (0: unlimited)."),
    checkpoint_every: int = typer.Option(100, min=1),
) -> None:
    """Train the demo model on drawn scenes; run it again to resume after an interruption."""
    import logging

    _require_worker_extra("train-demo")
    from tools.demo.train import TrainConfig, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    channels = _checked_channels(_TrainOptions(size, device, init_from, continue_unet, unet_channels))
    cfg = TrainConfig(
        out=Path(out),
        seed=seed,
        size=size,
        vae_steps=vae_steps,
        unet_steps=unet_steps,
        n_scenes=n_scenes,
        unet_batch=unet_batch,
        vae_batch=vae_batch,
        vae_crop=min(64, size),
        unet_lr=unet_lr,
        warmup_steps=warmup_steps,
        unet_channels=channels,
        attention_levels=attention_levels,
        device=device,
        init_from=Path(init_from) if init_from else None,
        init_unet=continue_unet,
        time_budget_s=time_budget,
        checkpoint_every=checkpoint_every,
    )
    path = train(cfg)
    typer.echo(f"Model written to {path}. Use it with GOUACHE_MODEL={path.resolve()}")


def main() -> None:
    web_cli.run(cli)


if __name__ == "__main__":
    main()
