"""`gouache train-demo` at toy sizes: every stage runs, the result is a standard diffusers
folder that the worker's own loading code serves, and an interrupted run resumes."""

from __future__ import annotations

from pathlib import Path

from workers.demo.train import TrainConfig, train


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
    from tests.conftest import make_settings
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
