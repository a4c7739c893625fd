"""The GPU path's loader options, tested on the CPU with the tiny pipelines: the dtype
choice, the fp16 variant (and the fallback without one), channels-last and fused QKV,
VAE tiling, a replacement VAE, the safety checker only on request, the compile warm-up
before ready, previews that never wait for the device, and bench/gpu.py's code paths."""

from __future__ import annotations

import importlib.util
import shutil
import sys

import diffusers
import numpy as np
import pytest
import torch

from app.config import REPO_ROOT
from app.generation.catalog import get_catalog
from tests.support import make_settings
from workers import pipelines, tasks

pytestmark = pytest.mark.model  # runs models in this process (torch)

COMMON = dict(prompt="a red circle", width=64, height=64, steps=3, guidance=5.0, seed=3)


@pytest.fixture(autouse=True)
def fresh_cache():
    pipelines.unload_all()
    yield
    pipelines.unload_all()


def test_the_dtype_follows_the_setting_and_auto_is_half_only_on_cuda():
    assert pipelines.choose_dtype("auto", "cuda") is torch.float16
    assert pipelines.choose_dtype("auto", "cuda:1") is torch.float16
    assert pipelines.choose_dtype("auto", "cpu") is torch.float32
    assert pipelines.choose_dtype("auto", "mps") is torch.float32
    assert pipelines.choose_dtype("bfloat16", "cuda") is torch.bfloat16
    assert pipelines.choose_dtype("float32", "cuda") is torch.float32


def test_options_come_from_the_settings_and_the_catalog_entry(tmp_path, tiny_model):
    cpu = pipelines.options_for(make_settings(tmp_path, tiny_model, device="cpu"), str(tiny_model))
    assert (cpu.dtype, cpu.channels_last, cpu.fuse_qkv, cpu.compile) == (torch.float32, False, False, False)
    assert (cpu.vae, cpu.safety_checker, cpu.vae_tiling_above) == ("", False, 1536)
    cuda = pipelines.options_for(
        make_settings(tmp_path, tiny_model, device="cuda", dtype="bfloat16", compile=True, model_vae="some/vae"),
        str(tiny_model),
    )
    assert (cuda.dtype, cuda.channels_last, cuda.fuse_qkv, cuda.compile) == (torch.bfloat16, True, True, True)
    assert cuda.vae == "some/vae"


@pytest.fixture(scope="module")
def with_fp16_variant(tiny_model, tmp_path_factory):
    """The tiny model with fp16 variant files too, told apart by a marker weight."""
    folder = tmp_path_factory.mktemp("models") / "tiny-with-fp16"
    shutil.copytree(tiny_model, folder)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    with torch.no_grad():
        pipe.unet.conv_in.bias.fill_(0.5)
    pipe.to(torch.float16).save_pretrained(folder, variant="fp16")
    return folder


def test_half_precision_reads_the_fp16_variant_where_there_is_one(with_fp16_variant, tiny_model):
    half = pipelines.from_pretrained(str(with_fp16_variant), pipelines.Options(dtype=torch.float16))
    assert half.unet.dtype is torch.float16
    assert torch.all(half.unet.conv_in.bias == 0.5)  # the variant's files
    full = pipelines.from_pretrained(str(with_fp16_variant), pipelines.Options(dtype=torch.float32))
    assert not torch.all(full.unet.conv_in.bias == 0.5)  # float32: the full files
    fallback = pipelines.from_pretrained(str(tiny_model), pipelines.Options(dtype=torch.bfloat16))
    assert fallback.unet.dtype is torch.bfloat16  # no variant: the full files, cast


def test_channels_last_and_fused_qkv_change_the_kernels_not_the_images(tiny_model):
    plain = pipelines.from_pretrained(str(tiny_model), pipelines.Options())
    fast = pipelines.optimise(
        pipelines.from_pretrained(str(tiny_model), pipelines.Options()),
        pipelines.Options(channels_last=True, fuse_qkv=True),
    )
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert any(type(p).__name__ == "FusedAttnProcessor2_0" for p in fast.unet.attn_processors.values())
    [(a, _)] = pipelines.sample(plain, **COMMON)
    [(b, _)] = pipelines.sample(fast, **COMMON)
    diff = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int))
    assert diff.max() <= 2, diff.max()  # the same sums in another order: float32 rounding only


def test_fusing_skips_what_cannot_be_fused(tiny_sdxl_model):
    # the demo model's VAE is an AutoencoderTiny: only its UNet is fused
    demo = pipelines.from_pretrained(str(REPO_ROOT / "models" / "gouache-demo"), pipelines.Options())
    pipelines.optimise(demo, pipelines.Options(fuse_qkv=True))
    assert demo.fusing_unet and not demo.fusing_vae
    xl = pipelines.optimise(
        pipelines.from_pretrained(str(tiny_sdxl_model), pipelines.Options()), pipelines.Options(fuse_qkv=True)
    )
    [(image, _)] = pipelines.sample(xl, **COMMON)
    assert image.size == (64, 64)


def test_vae_tiling_switches_on_above_the_size(tiny_model):
    pipe = pipelines.optimise(pipelines.from_pretrained(str(tiny_model), pipelines.Options()), pipelines.Options())
    assert not pipelines.use_vae_tiling(pipe, 4096, 4096)  # 0: never
    pipe._gouache_vae_tiling_above = 48
    [(tiled, _)] = pipelines.sample(pipe, **COMMON)
    assert pipe.vae.use_tiling and tiled.size == (64, 64)
    assert not pipelines.use_vae_tiling(pipe, 48, 48)
    assert not pipe.vae.use_tiling


def test_a_configured_vae_replaces_the_models_own(tmp_path, tiny_model):
    vae = diffusers.AutoencoderKL.from_pretrained(tiny_model, subfolder="vae")
    with torch.no_grad():
        vae.decoder.conv_out.bias.fill_(0.25)
    vae.save_pretrained(tmp_path / "fixed-vae")
    settings = make_settings(tmp_path / "data", tiny_model, model_vae=str(tmp_path / "fixed-vae"))
    pipe = pipelines.load(settings, str(tiny_model))
    assert torch.all(pipe.vae.decoder.conv_out.bias == 0.25)


def test_the_safety_checker_is_loaded_only_when_the_catalog_asks(tiny_model, tiny_sdxl_model, monkeypatch):
    calls: list[dict] = []
    original = diffusers.AutoPipelineForText2Image.from_pretrained.__func__

    def recording(cls, source, *args, **kwargs):
        calls.append(kwargs)
        return original(cls, source, *args, **kwargs)

    monkeypatch.setattr(diffusers.AutoPipelineForText2Image, "from_pretrained", classmethod(recording))
    pipelines.from_pretrained(str(tiny_model), pipelines.Options())
    assert calls[-1]["safety_checker"] is None and calls[-1]["requires_safety_checker"] is False
    pipelines.from_pretrained(str(tiny_model), pipelines.Options(safety_checker=True))
    assert "safety_checker" not in calls[-1]  # the model's own, as diffusers loads it
    pipelines.from_pretrained(str(tiny_sdxl_model), pipelines.Options())
    assert "safety_checker" not in calls[-1]  # SDXL has none to turn off


def test_with_compile_the_worker_compiles_and_warms_before_ready(tmp_path, tiny_model, monkeypatch):
    compiled: list[str] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append(type(self).__name__))
    runs: list[tuple[int, int]] = []
    real = pipelines.sample
    monkeypatch.setattr(
        pipelines, "sample", lambda pipe, **kw: runs.append((kw["width"], kw["n_images"])) or real(pipe, **kw)
    )
    settings = make_settings(tmp_path / "data", tiny_model, compile=True, batch_max_images=3)
    monkeypatch.setattr(tasks, "get_settings", lambda: settings)
    monkeypatch.setattr(tasks, "served_models", lambda s: list(get_catalog(s)))  # (no Celery worker here)
    tasks._warm_up()  # what worker_process_init runs, before Celery's worker_ready
    assert compiled == ["UNet2DConditionModel"]
    assert runs == [(64, 1), (64, 3)]  # the default size, one image and a full batch


def test_a_preview_copy_never_waits_for_the_device():
    latents = torch.randn(2, 4, 8, 8)
    copy = pipelines.snapshot(latents[:1])
    assert isinstance(copy, torch.Tensor) and copy.data_ptr() != latents.data_ptr()
    latents.zero_()  # the next step may change them in place
    assert copy.abs().sum() > 0

    class Ready:  # a CUDA event's stand-in: the writer's thread waits on it, not the pipeline's
        waited = False

        def synchronize(self):
            Ready.waited = True

    pipe = diffusers.StableDiffusionPipeline.__new__(diffusers.StableDiffusionPipeline)
    pipe.__dict__["vae"] = diffusers.AutoencoderTiny.__new__(diffusers.AutoencoderTiny)
    image = pipelines.preview(pipe, pipelines.HostCopy(torch.randn(1, 4, 8, 8), Ready()))
    assert Ready.waited and image.size == (256, 256)


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO_ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def test_bench_gpu_says_there_is_no_gpu_and_exits_0(capsys, monkeypatch):
    bench = load_bench()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main([]) == 0
    assert "no CUDA GPU is present" in capsys.readouterr().out


def test_bench_gpu_runs_every_step_on_tiny_configs_on_the_cpu(capsys):
    bench = load_bench()
    assert bench.main(["--device", "cpu", "--tiny", "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| SD")]
    assert len(rows) == 4  # two shapes × default and ours
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2]) > 0 and float(cells[5]) > 0  # seconds per image, GFLOP per step
        assert cells[8].endswith("dB")
