"""The GPU path: diffusers' default vs Gouache's loader options, on SD 1.5- and SDXL-shaped
pipelines with random weights built from the real configs (the same compute as the real
weights; nothing is downloaded; the tokenizer is a tiny CLIP one, as the tests build).

For each shape: seconds per image and it/s (one image, CFG on), the ratio, FLOPs per step
(``torch.utils.flop_counter`` over one UNet call at the CFG batch), the achieved fraction
of this GPU's measured fp16 matmul peak (MFU), peak memory, the PSNR of our image against
the default path's (same weights, same seed), and the throughput of 4 compatible jobs in
one call against 4 single calls.

"Default" is what a diffusers user writes: the pipeline in float16 on the GPU. "Ours" is
the same pipeline through ``workers.pipelines.optimise`` with the options the worker uses
on CUDA (channels-last, fused QKV; ``--compile`` adds torch.compile as GOUACHE_COMPILE).

Without a CUDA GPU it says so and exits 0. ``--device cpu --tiny`` runs every step on tiny
configs on the CPU (a smoke test of this script; its figures mean nothing).

    .venv/bin/python bench/gpu.py [--repeats 3] [--compile] [--only sd15|sdxl]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Shape:
    name: str
    xl: bool
    size: int
    steps: int


SHAPES = {"sd15": Shape("SD 1.5-shaped", False, 512, 50), "sdxl": Shape("SDXL-shaped", True, 1024, 30)}


# ---- the real configs (diffusers' and transformers' config.json, as dicts) -------------

SD15_UNET: dict[str, Any] = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
)
SDXL_UNET: dict[str, Any] = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
CLIP_L: dict[str, Any] = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu"
)
CLIP_BIGG: dict[str, Any] = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    hidden_act="gelu",
    projection_dim=1280,
)


def tiny(config: dict[str, Any], kind: str) -> dict[str, Any]:
    """The same architecture, a few channels wide (the --tiny smoke run)."""
    c = dict(config)
    if kind == "unet":
        n = len(c["block_out_channels"])
        c.update(block_out_channels=(32, 64, 64, 64)[:n], layers_per_block=1, norm_num_groups=32)
        c["attention_head_dim"] = 8 if isinstance(c["attention_head_dim"], int) else (8,) * n
        c["cross_attention_dim"] = 64 if c["cross_attention_dim"] == 2048 else 32
        if "transformer_layers_per_block" in c:
            c["transformer_layers_per_block"] = (1,) * n
            c.update(addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8)
    elif kind == "vae":
        c.update(block_out_channels=(32, 32, 32, 32), layers_per_block=1, norm_num_groups=32)
    else:
        c.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
        if "projection_dim" in c:
            c["projection_dim"] = 32
    return c


def build(shape: Shape, small: bool) -> Any:
    """The pipeline, random weights (seeded), float32 on the CPU."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from workers.tiny_model import _tiny_tokenizer

    def conf(config: dict[str, Any], kind: str) -> dict[str, Any]:
        return tiny(config, kind) if small else config

    def text(config: dict[str, Any]) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, **config)

    torch.manual_seed(0)
    tokenizer = _tiny_tokenizer()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    vae_extra = {"scaling_factor": 0.13025, "force_upcast": False} if shape.xl else {"scaling_factor": 0.18215}
    vae = AutoencoderKL(**conf(VAE, "vae"), **vae_extra)
    if not shape.xl:
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=CLIPTextModel(text(conf(CLIP_L, "text"))),
            tokenizer=tokenizer,
            unet=UNet2DConditionModel(**conf(SD15_UNET, "unet")),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text(conf(CLIP_L, "text"))),
        text_encoder_2=CLIPTextModelWithProjection(text(conf(CLIP_BIGG, "text"))),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=UNet2DConditionModel(**conf(SDXL_UNET, "unet")),
        scheduler=scheduler,
    )


class Clock:
    """Wall time of device work (synchronised on CUDA)."""

    def __init__(self, device: str):
        import torch

        self.cuda = device.startswith("cuda")
        self.torch = torch

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def time(self, fn: Any) -> float:
        self.sync()
        started = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - started


def matmul_peak(device: str, dtype: Any, clock: Clock) -> float:
    """This device's measured dense matmul FLOP/s in ``dtype`` (the best of a few runs)."""
    import torch

    n = 8192 if clock.cuda else 256
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = min(clock.time(lambda: [a @ b for _ in range(10)]) for _ in range(3)) / 10
    return 2 * n**3 / best


def unet_flops(pipe: Any, shape: Shape, size: int, device: str, dtype: Any) -> int:
    """FLOPs of one denoising step: one UNet call at the CFG batch (2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    unet = pipe.unet
    latent = size // pipe.vae_scale_factor
    x = torch.randn(2, 4, latent, latent, device=device, dtype=dtype)
    cond = torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    extra: dict[str, Any] = {}
    if shape.xl:
        pooled = pipe.text_encoder_2.config.projection_dim
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, pooled, device=device, dtype=dtype),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device=device, dtype=dtype),
        }
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        unet(x, torch.tensor(500, device=device), encoder_hidden_states=cond, **extra)
    return int(counter.get_total_flops())


def psnr(a: Any, b: Any) -> float:
    import numpy as np

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


@dataclass
class Run:
    seconds: float
    its: float
    peak_mb: float
    image: Any
    batch4_ratio: float


def measure(pipe: Any, size: int, steps: int, repeats: int, clock: Clock) -> Run:
    import torch

    from workers import pipelines

    common = dict(width=size, height=size, guidance=7.5, sampler="euler")
    pipelines.sample(pipe, prompt="warm up", seed=0, steps=2, **common)  # (and compiles, with --compile)
    pipelines.sample_batch(pipe, [pipelines.Request("warm up", "", i, 1) for i in range(4)], steps=2, **common)
    if clock.cuda:
        torch.cuda.reset_peak_memory_stats()
    out: list[Any] = []
    times = [
        clock.time(lambda: out.append(pipelines.sample(pipe, prompt="a red circle", seed=1, steps=steps, **common)))
        for _ in range(repeats)
    ]
    seconds = statistics.median(times)
    four = [pipelines.Request(f"prompt {i}", "", i, 1) for i in range(4)]
    batched = clock.time(lambda: pipelines.sample_batch(pipe, four, steps=steps, **common))
    peak = torch.cuda.max_memory_allocated() / 2**20 if clock.cuda else float("nan")
    return Run(seconds, steps / seconds, peak, out[0][0][0], 4 * seconds / batched)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny configs, 64² × 2 steps (a smoke test)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also torch.compile the UNet (GOUACHE_COMPILE)")
    parser.add_argument("--only", choices=sorted(SHAPES), action="append")
    args = parser.parse_args(argv)

    import torch

    from workers import pipelines

    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU is present: nothing to measure (bench/gpu.py measures the CUDA path)")
        return 0
    clock = Clock(device)
    dtype = pipelines.choose_dtype("auto", device)
    name = torch.cuda.get_device_name(device) if clock.cuda else "CPU"
    peak = matmul_peak(device, dtype, clock)
    print(f"device {name}, {str(dtype).removeprefix('torch.')}, measured matmul peak {peak / 1e12:.1f} TFLOP/s")
    print(f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    header = (
        "| shape | path | s/image | it/s | ratio | GFLOP/step | MFU | peak MiB | PSNR vs default | 4 jobs batched |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    ours_options = pipelines.Options(
        device=device,
        dtype=dtype,
        channels_last=True,
        fuse_qkv=True,
        compile=args.compile,
    )
    for key in args.only or list(SHAPES):
        shape = SHAPES[key]
        size, steps = (64, 2) if args.tiny else (shape.size, shape.steps)
        pipe = build(shape, args.tiny).to(device, dtype)
        pipe.set_progress_bar_config(disable=True)
        flops = unet_flops(pipe, shape, size, device, dtype)
        default = measure(pipe, size, steps, args.repeats, clock)
        pipelines.optimise(pipe, ours_options)  # in place: the same weights
        ours = measure(pipe, size, steps, args.repeats, clock)
        for label, run in (("diffusers default", default), ("Gouache", ours)):
            ratio = default.seconds / run.seconds
            print(
                f"| {shape.name} {size}²×{steps} | {label} | {run.seconds:.3f} | {run.its:.1f} | {ratio:.2f}× "
                f"| {flops / 1e9:.4g} | {flops * run.its / peak:.1%} | {run.peak_mb:.0f} "
                f"| {psnr(run.image, default.image):.1f} dB | {run.batch4_ratio:.2f}× |"
            )
        del pipe
        if clock.cuda:
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
