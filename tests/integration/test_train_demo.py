"""`gouache train-demo` at toy sizes: every stage runs, the result is a standard diffusers
folder that the worker's own loading code serves, and an interrupted run resumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.demo.train import TrainConfig, train

pytestmark = pytest.mark.model  # runs models in this process (torch)


def toy_config(out: Path, **overrides) -> TrainConfig:
    values = dict(
        out=out,
        size=64,
        vae_steps=2,
        vae_batch=2,
        vae_crop=64,
        n_scenes=8,
        unet_steps=2,
        unet_batch=4,
        checkpoint_every=1,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_training_writes_a_model_the_worker_loads_and_samples(tmp_path, tiny_model):
    from tests.support import make_settings
    from workers import pipelines

    model = train(toy_config(tmp_path / "run"))
    for part in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler", "training.json"):
        assert (model / part).exists(), part

    settings = make_settings(tmp_path / "data", model, model_default_size=64)
    pipe = pipelines.load(settings, str(model))
    [(image, seed)] = pipelines.sample(
        pipe, prompt="a red circle on a blue background", width=64, height=64, steps=2, guidance=5, seed=3
    )
    assert image.size == (64, 64) and seed == 3
    # the tokenizer knows the grammar's words as whole tokens
    ids = pipe.tokenizer("three pink triangles", add_special_tokens=False).input_ids
    assert len(ids) == 3


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    seen: list[tuple[str, int]] = []

    def record(stage, step, _total, _loss):
        seen.append((stage, step))

    train(toy_config(tmp_path / "run", on_progress=record))
    assert seen == [("vae", 1), ("vae", 2), ("unet", 1), ("unet", 2)]

    seen.clear()  # "interrupted" after 2 UNet steps; ask for 4: only 3 and 4 run
    train(toy_config(tmp_path / "run", unet_steps=4, on_progress=record))
    assert seen == [("unet", 3), ("unet", 4)]


def test_a_time_budget_trims_the_unet_steps_and_the_recipe_says_so(tmp_path):
    import json

    seen: list[int] = []
    cfg = toy_config(
        tmp_path / "run", unet_steps=100_000, time_budget_s=1e-3, on_progress=lambda s, n, *_: seen.append(n)
    )
    model = train(cfg)
    # the pace is measured over steps 20-70; a budget already spent stops the run there
    assert max(seen) == 70 and cfg.unet_steps == 70
    assert json.loads((model / "training.json").read_text())["unet_steps"] == 70


def test_a_run_continues_an_exported_model_keeping_its_vae_and_text_encoder(tmp_path):
    import json

    import torch
    from diffusers import AutoencoderTiny, UNet2DConditionModel

    first = train(toy_config(tmp_path / "first"))
    second = train(toy_config(tmp_path / "second", init_from=first, init_unet=True, unet_lr=0.0))
    for a, b in zip(
        AutoencoderTiny.from_pretrained(first, subfolder="vae").state_dict().values(),
        AutoencoderTiny.from_pretrained(second, subfolder="vae").state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b)  # the VAE was reused, not trained again
    # with a learning rate of 0 the continued UNet is the first one's
    first_unet = UNet2DConditionModel.from_pretrained(first, subfolder="unet").state_dict()
    second_unet = UNet2DConditionModel.from_pretrained(second, subfolder="unet").state_dict()
    assert all(torch.equal(first_unet[k], second_unet[k]) for k in first_unet)
    recipe = json.loads((second / "training.json").read_text())
    assert recipe["init_from"] == "model" and recipe["init_unet"] is True and recipe["device"] == "cpu"


def test_the_command_refuses_bad_options_with_a_message(tmp_path):
    import torch
    from typer.testing import CliRunner

    from workers.cli import cli

    def run(*args):
        return CliRunner().invoke(cli, ["train-demo", "--out", str(tmp_path / "run"), *args])

    missing = run("--init-from", str(tmp_path / "nowhere"))
    assert missing.exit_code == 2 and "not an exported model folder" in missing.output
    orphan = run("--continue-unet")
    assert orphan.exit_code == 2 and "--continue-unet needs --init-from" in orphan.output
    channels = run("--unet-channels", "32,lots")
    assert channels.exit_code == 2 and "--unet-channels takes integers" in channels.output
    if not torch.cuda.is_available():
        gpu = run("--device", "cuda")
        assert gpu.exit_code == 2 and "no CUDA GPU is visible" in gpu.output
    assert not (tmp_path / "run").exists()  # refused before anything was written
