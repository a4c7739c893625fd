"""Build a tiny, randomly initialised Stable Diffusion pipeline offline.

This is diffusers' own test technique (``get_dummy_components``): every
component is built from a small config, so no weights are downloaded. The
result is saved in the standard diffusers folder layout and is loaded back
through exactly the code that loads a real model (``workers.pipelines``).

Its images are noise: it exists so that the app runs end to end on a machine
with no model, and so tests exercise the real loading and sampling path.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

# Words the tokenizer knows; anything else is spelled out letter by letter.
_WORDS = (
    "a an the of on in at with and red green blue yellow orange purple pink "
    "black white grey gray brown circle square triangle star cat dog house "
    "tree sky sea mountain photo painting portrait landscape top bottom left "
    "right one two three big small"
).split()

MODEL_CARD = """---
license: other
tags: [gouache, test-model, untrained]
---
# Gouache tiny random model

An **untrained** Stable Diffusion-shaped pipeline with random weights, built
from configs by Gouache so that the app runs with no downloaded model. Its
images are coloured noise. Point `GOUACHE_MODEL` at a real model to make
pictures.
"""


def _write_tokenizer_files(directory: Path) -> tuple[Path, Path]:
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    tokens += [f"{w}</w>" for w in _WORDS]
    letters = string.ascii_lowercase + string.digits
    tokens += list(letters) + [f"{c}</w>" for c in letters]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.json"
    merges_file = directory / "merges.txt"
    vocab_file.write_text(json.dumps(vocab))
    merges_file.write_text("#version: 0.2\n")
    return vocab_file, merges_file


def _tiny_vae(sample_size: int) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=sample_size,
    )


def _tiny_unet(sample_size: int, **options: Any) -> Any:
    """A two-level UNet; ``options`` add the family's conditioning."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=sample_size // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        **options,
    )


def _tiny_tokenizer() -> Any:
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = _write_tokenizer_files(Path(tmp))
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)


def _text_config(tokenizer: Any, hidden_size: int, **options: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=len(tokenizer.get_vocab()),
        max_position_embeddings=77,
        **options,
    )


def _save(pipe: Any, path: Path, card: str) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(path, safe_serialization=True)
    (path / "README.md").write_text(card)
    return path


def build_tiny_pipeline(
    path: Path,
    *,
    seed: int = 0,
    cross_attention_dim: int = 32,
    text_hidden_size: int = 32,
    sample_size: int = 64,
) -> Path:
    """Write a tiny random SD pipeline to ``path`` and return ``path``.

    ``cross_attention_dim`` and ``text_hidden_size`` must match for a working
    model; tests pass different values to get a model that loads but raises
    while sampling, the way a broken real checkpoint would.
    """
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(seed)  # the components below draw their weights in this order
    unet = _tiny_unet(sample_size, cross_attention_dim=cross_attention_dim)
    vae = _tiny_vae(sample_size)
    tokenizer = _tiny_tokenizer()
    text_encoder = CLIPTextModel(_text_config(tokenizer, text_hidden_size))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _save(pipe, path, MODEL_CARD)


def build_tiny_sdxl_pipeline(path: Path, *, seed: int = 0, sample_size: int = 64) -> Path:
    """Write a tiny random SDXL-shaped pipeline (two text encoders, the UNet's
    ``text_time`` added conditioning) to ``path``: diffusers' own SDXL test components."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)  # the components below draw their weights in this order
    unet = _tiny_unet(
        sample_size,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six size/crop numbers + the pooled text
        cross_attention_dim=64,  # both encoders' hidden states side by side
    )
    vae = _tiny_vae(sample_size)
    tokenizer, tokenizer_2 = _tiny_tokenizer(), _tiny_tokenizer()
    config = _text_config(tokenizer, 32, projection_dim=32)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(config),
        text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),  # fmt: skip
    )
    return _save(pipe, path, MODEL_CARD.replace("Stable Diffusion-shaped", "SDXL-shaped"))
