"""Train Gouache's demo text-to-image model from procedurally drawn scenes.

Stages, in the order they run, each resumable from its checkpoint:

1. ``build_tokenizer``  a CLIPTokenizer whose vocabulary is the caption grammar's words
2. ``train_vae``        an AutoencoderTiny (8× down) that reconstructs the flat-colour scenes
3. ``encode_scenes``    render the training set once and store its latents
4. ``train_unet``       a UNet2DConditionModel, conditioned on a small random, frozen CLIPTextModel
5. ``export``           a standard diffusers folder, loadable by ``from_pretrained``

Everything comes from a seed; nothing is downloaded. A run interrupted at any
point continues from the last checkpoint when started again with the same
output folder.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    out: Path
    seed: int = 0
    size: int = 256  # native image size; latents are size/latent_down
    # 8x down, as Stable Diffusion. A 16x VAE (8 channels) would make UNet steps 3x cheaper,
    # but at this width it stalled at an MSE of 0.13 (8x: 0.004).
    latent_down: int = 8
    latent_channels: int = 4
    vae_steps: int = 1500
    vae_batch: int = 16
    vae_crop: int = 64  # the VAE is convolutional: train it on crops, use it at any size
    vae_lr: float = 1e-3
    n_scenes: int = 6000  # the UNet's training set (latents computed once)
    unet_steps: int = 3000
    unet_batch: int = 32
    unet_lr: float = 6e-4
    caption_dropout: float = 0.1  # trains the unconditional branch for classifier-free guidance
    unet_channels: tuple[int, ...] = (32, 64, 128, 128)
    attention_levels: int = 2  # cross-attention in the coarsest N levels
    # v-prediction on a schedule rescaled to zero terminal SNR (Lin et al. 2023): with SD's
    # own schedule the last training step still leaks the image's mean colour, so a model
    # sampling from pure noise cannot choose a flat background's colour; this one must.
    prediction_type: str = "v_prediction"
    text_hidden: int = 128
    text_layers: int = 3
    # The text encoder is random and frozen, with word vectors far apart: trained jointly from
    # CLIP's tiny initialisation it collapsed (every caption encoded alike, the UNet learned
    # to ignore it: the same loss with the right caption, a wrong one or none).
    text_trainable: bool = False
    text_token_std: float = 1.0
    text_position_std: float = 0.3
    warmup_steps: int = 0  # linear learning-rate warm-up (useful when continuing a model)
    checkpoint_every: int = 100
    threads: int = 0  # 0: torch's default
    # "auto": CUDA when there is a GPU (bf16 autocast for the UNet), else the CPU.
    device: str = "auto"
    # Continue from an exported model: reuse its VAE and text encoder (and, with
    # init_unet, its UNet weights) instead of training them from the seed.
    init_from: Path | None = None
    init_unet: bool = False
    # Seconds the UNet stage may take (0: no limit): after 50 steps the run measures its
    # pace and lowers unet_steps to fit; the exported recipe records the steps run.
    time_budget_s: float = 0
    on_progress: Callable[[str, int, int, float], None] | None = field(default=None, repr=False)

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return self.out / "model"

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


# ---- 1. tokenizer ---------------------------------------------------------------------------


def build_tokenizer(cfg: TrainConfig):
    """A CLIP BPE tokenizer whose merges spell out exactly the grammar's words, so each
    word is one token (a 12-word caption fits in 32 positions); anything else falls
    back to single characters, so no prompt fails to tokenize."""
    import string

    from transformers import CLIPTokenizer

    from tools.demo import scenes

    folder = cfg.checkpoints / "tokenizer-src"
    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + ",.-'"
    tokens = ["<|startoftext|>", "<|endoftext|>", *chars, *(f"{c}</w>" for c in chars)]
    merges: list[tuple[str, str]] = []
    # Longest words first: a short word's merges must not break a longer word apart.
    words = sorted(scenes.vocabulary_words(), key=lambda w: (-len(w), w))
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        built = pieces[0]
        for piece in pieces[1:]:
            merges.append((built, piece))
            built += piece
            tokens.append(built)
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in dict.fromkeys(merges))]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=32)
    split = [w for w in words if len(tokenizer(w, add_special_tokens=False).input_ids) != 1]
    if split:
        raise RuntimeError(f"the tokenizer splits grammar words: {split}")
    return tokenizer


# ---- models -----------------------------------------------------------------------------------


def make_vae(cfg: TrainConfig):
    # diffusers' AutoencoderTiny (the TAESD design: plain convolutions, no GroupNorm); each
    # block after the first halves the side. AutoencoderKL's GroupNorm hides a flat image's absolute colour: trained on
    # these scenes it reconstructed sharp shapes in two canonical tones and stalled at an
    # MSE of 0.29; AutoencoderTiny reaches 0.017 in 300 steps and decodes 256x256 in 66 ms.
    # Stable Diffusion pipelines accept it as their VAE.
    from diffusers import AutoencoderTiny

    blocks = cfg.latent_down.bit_length()  # 16 -> 5 blocks, 4 halvings
    if 1 << (blocks - 1) != cfg.latent_down:
        raise ValueError("latent_down must be a power of two")
    # StableDiffusionPipeline derives its vae_scale_factor from len(block_out_channels).
    return AutoencoderTiny(
        encoder_block_out_channels=(32,) * blocks,
        decoder_block_out_channels=(32,) * blocks,
        num_encoder_blocks=(1,) * blocks,
        num_decoder_blocks=(1,) * blocks,
        latent_channels=cfg.latent_channels,
    )


def make_unet(cfg: TrainConfig):
    from diffusers import UNet2DConditionModel

    c = cfg.unet_channels
    attn = min(cfg.attention_levels, len(c))
    # Cross-attention only in the coarsest levels (8x8 and 4x4 latents at 256x256): the
    # prompt decides colours, shapes and quadrants, which they carry; self-attention over
    # the 16x16 level costs 1.5x per step on CPU, over 32x32 far more.
    return UNet2DConditionModel(
        sample_size=cfg.size // cfg.latent_down,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        block_out_channels=c,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * (len(c) - attn) + ("CrossAttnDownBlock2D",) * attn,
        up_block_types=("CrossAttnUpBlock2D",) * attn + ("UpBlock2D",) * (len(c) - attn),
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def make_text_encoder(cfg: TrainConfig, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    model = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.text_hidden,
            intermediate_size=cfg.text_hidden * 2,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=4,
            max_position_embeddings=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    embeddings = getattr(model, "text_model", model).embeddings  # transformers 5 flattened CLIPTextModel
    with torch.no_grad():
        embeddings.token_embedding.weight.normal_(0.0, cfg.text_token_std)
        embeddings.position_embedding.weight.normal_(0.0, cfg.text_position_std)
    return model


# ---- checkpoints ---------------------------------------------------------------------------------


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: an interrupted save never leaves a broken checkpoint


def _load(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None


def _report(cfg: TrainConfig, stage: str, step: int, total: int, loss: torch.Tensor) -> None:
    # Reading the loss waits for the device: only when it is shown, so a GPU keeps queueing work.
    if cfg.on_progress:
        cfg.on_progress(stage, step, total, loss.item())
    elif step % 50 == 0 or step == total:
        log.info("%s step %d/%d loss %.4f", stage, step, total, loss.item())


# ---- 2. VAE -------------------------------------------------------------------------------------


def _scene_batch(
    rng: random.Random, n: int, size: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, list[str]]:
    """``n`` drawn scenes as a [-1, 1] float batch on ``device``, and their captions."""
    import numpy as np

    from tools.demo import scenes

    images, captions = [], []
    for _ in range(n):
        scene = scenes.sample_scene(rng)
        images.append(np.asarray(scenes.render(scene, size=size, rng=rng), dtype=np.uint8))
        captions.append(scene.caption())
    # bytes travel to the device; the float conversion happens there
    batch = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return batch, captions


def train_vae(cfg: TrainConfig):
    device = cfg.torch_device
    if cfg.init_from is not None:
        from diffusers import AutoencoderTiny

        return AutoencoderTiny.from_pretrained(cfg.init_from, subfolder="vae").to(device).eval()
    path = cfg.checkpoints / "vae.pt"
    vae = make_vae(cfg).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    state = _load(path) or {"step": 0}
    if "model" in state:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
    rng = random.Random(cfg.seed * 1000 + 1 + state["step"])
    torch.manual_seed(cfg.seed * 1000 + 1 + state["step"])
    vae.train()
    for step in range(state["step"] + 1, cfg.vae_steps + 1):
        images, _ = _scene_batch(rng, cfg.vae_batch, cfg.size, device)
        if cfg.vae_crop < cfg.size:
            span, align = cfg.size - cfg.vae_crop + 1, cfg.latent_down
            x0, y0 = rng.randrange(0, span, align), rng.randrange(0, span, align)
            images = images[:, :, y0 : y0 + cfg.vae_crop, x0 : x0 + cfg.vae_crop]
        recon = vae.decode(vae.encode(images).latents).sample
        loss = F.mse_loss(recon, images)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _report(cfg, "vae", step, cfg.vae_steps, loss.detach())
        if step % cfg.checkpoint_every == 0 or step == cfg.vae_steps:
            _save(path, {"step": step, "model": vae.state_dict(), "opt": opt.state_dict()})
    vae.eval()
    return vae


# ---- 3. latents -----------------------------------------------------------------------------------


@torch.no_grad()
def encode_scenes(cfg: TrainConfig, vae) -> dict:
    path = cfg.checkpoints / "latents.pt"
    cached = _load(path)
    if cached is not None and cached["n"] == cfg.n_scenes and cached["size"] == cfg.size:
        return cached
    rng = random.Random(cfg.seed * 1000 + 2)
    device = next(vae.parameters()).device
    chunk = 32 if device.type == "cpu" else 512  # the same scenes either way: one rng, in order
    latents, captions = [], []
    for start in range(0, cfg.n_scenes, chunk):
        images, caps = _scene_batch(rng, min(chunk, cfg.n_scenes - start), cfg.size, device)
        latents.append(vae.encode(images).latents.cpu())
        captions += caps
    stacked = torch.cat(latents)
    if cfg.init_from is not None:  # keep the continued model's latent scale
        scaling = float(vae.config.scaling_factor)
    else:  # Stable Diffusion's convention: scale latents to unit variance for the UNet.
        scaling = float(1.0 / stacked.std())
    data = {"n": cfg.n_scenes, "size": cfg.size, "latents": stacked * scaling, "captions": captions, "scaling": scaling}
    _save(path, data)
    return data


# ---- 4. UNet + text encoder --------------------------------------------------------------------------


def _schedule(cfg: TrainConfig) -> dict:
    """The noise schedule shared by training and the exported sampler."""
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=cfg.prediction_type,
        rescale_betas_zero_snr=cfg.prediction_type == "v_prediction",
    )


def _wait_for(device: torch.device) -> None:
    """Let the device finish its queued work (so a clock reading means what it says)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _lr(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% at ``unet_steps`` (a resumed run recomputes it)."""
    warm = min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    return cfg.unet_lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / cfg.unet_steps))))


def _caption_context(cfg: TrainConfig, tokenizer, text_encoder, captions: list[str], device):
    """Token ids (trainable encoder) or the frozen encoder's output, per distinct caption.

    Returns ``(table, index)``: ``table[index[i]]`` is caption ``i``'s entry, and the last
    row of ``table`` is the empty caption (classifier-free guidance's unconditional branch).
    """
    distinct = list(dict.fromkeys(captions))
    row = {c: i for i, c in enumerate(distinct)}
    padded = dict(padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
    tokens = tokenizer([*distinct, ""], **padded).input_ids.to(device)
    index = torch.tensor([row[c] for c in captions], device=device)
    if cfg.text_trainable:
        return tokens, index
    with torch.no_grad():  # a frozen encoder gives each caption the same context every step
        table = torch.cat([text_encoder(part)[0] for part in tokens.split(1024)])
    return table, index


def _unet_and_text_encoder(cfg: TrainConfig, tokenizer):
    """A fresh UNet and text encoder, or those of the model ``--init-from`` names."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(cfg.seed * 1000 + 3)
    unet = make_unet(cfg)
    text_encoder = make_text_encoder(cfg, len(tokenizer.get_vocab()))
    if cfg.init_from is not None:
        text_encoder = CLIPTextModel.from_pretrained(cfg.init_from, subfolder="text_encoder")
        if cfg.init_unet:
            unet = UNet2DConditionModel.from_pretrained(cfg.init_from, subfolder="unet")
    unet.to(cfg.torch_device)
    text_encoder.to(cfg.torch_device)
    return unet, text_encoder


@dataclass
class _UnetBatches:
    """What each UNet step draws its batch from, all on the training device."""

    latents: torch.Tensor
    table: torch.Tensor  # the text encoder's output (or token ids, when it trains) per caption
    caption_row: torch.Tensor  # each scene's row in ``table``
    alphas: torch.Tensor  # the noise schedule's cumulative alphas
    timesteps: int

    @property
    def empty_row(self) -> int:
        return self.table.shape[0] - 1  # the empty caption, for classifier-free guidance


def _unet_loss(cfg: TrainConfig, unet, text_encoder, batches: _UnetBatches, gen: torch.Generator, autocast):
    """One batch: noise latents to random timesteps and score the UNet's prediction."""
    device = cfg.torch_device
    idx = torch.randint(0, len(batches.caption_row), (cfg.unet_batch,), generator=gen, device=device)
    x0 = batches.latents[idx]
    # drawn on the device: a host-to-device copy each step would wait for the queued work
    dropped = torch.rand(cfg.unet_batch, generator=gen, device=device) < cfg.caption_dropout
    rows = torch.where(dropped, batches.empty_row, batches.caption_row[idx])
    noise = torch.randn(x0.shape, generator=gen, device=device)
    t = torch.randint(0, batches.timesteps, (x0.shape[0],), generator=gen, device=device)
    a = batches.alphas[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - batches.alphas[t]).sqrt().view(-1, 1, 1, 1)
    noisy = a * x0 + s * noise
    target = a * noise - s * x0 if cfg.prediction_type == "v_prediction" else noise
    with autocast:
        context = text_encoder(batches.table[rows])[0] if cfg.text_trainable else batches.table[rows]
        pred = unet(noisy, t, encoder_hidden_states=context).sample
    return F.mse_loss(pred.float(), target)


class _Pacer:
    """Fits the UNet stage into ``cfg.time_budget_s``: the pace is measured over 50 steps
    after a 20-step warm-up (kernels, caches), then ``cfg.unet_steps`` is cut to what fits."""

    def __init__(self, cfg: TrainConfig, first_step: int) -> None:
        self.cfg, self.first_step = cfg, first_step
        self.started = self.paced = time.perf_counter()

    def after(self, step: int) -> None:
        cfg = self.cfg
        if not cfg.time_budget_s:
            return
        if step == self.first_step + 20:
            _wait_for(cfg.torch_device)
            self.paced = time.perf_counter()
        if step == self.first_step + 70:
            _wait_for(cfg.torch_device)
            now = time.perf_counter()
            pace = (now - self.paced) / 50
            fits = step + int((cfg.time_budget_s - (now - self.started)) / pace)
            if fits < cfg.unet_steps:
                log.info("%.1f ms per step: %d UNet steps fit the time budget", pace * 1000, fits)
                cfg.unet_steps = max(step, fits)


def train_unet(cfg: TrainConfig, tokenizer, data: dict):
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler  # the module: mypy sees diffusers' dummies

    device = cfg.torch_device
    path = cfg.checkpoints / "unet.pt"
    unet, text_encoder = _unet_and_text_encoder(cfg, tokenizer)
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if cfg.text_trainable else [])
    text_encoder.requires_grad_(cfg.text_trainable)
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    state = _load(path) or {"step": 0}
    if "unet" in state:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["opt"])
    noise_scheduler = DDPMScheduler(**_schedule(cfg))
    alphas = noise_scheduler.alphas_cumprod.to(device)
    latents = data["latents"].to(device)
    text_encoder.train(cfg.text_trainable)
    table, caption_row = _caption_context(cfg, tokenizer, text_encoder, data["captions"], device)
    batches = _UnetBatches(latents, table, caption_row, alphas, noise_scheduler.config.num_train_timesteps)
    gen = torch.Generator(device).manual_seed(cfg.seed * 1000 + 4 + state["step"])
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    unet.train()
    step, pacer = state["step"], _Pacer(cfg, state["step"])
    while step < cfg.unet_steps:
        step += 1
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step)
        loss = _unet_loss(cfg, unet, text_encoder, batches, gen, autocast)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        pacer.after(step)
        _report(cfg, "unet", step, cfg.unet_steps, loss.detach())
        if step % cfg.checkpoint_every == 0 or step == cfg.unet_steps:
            weights = {"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict()}
            _save(path, {"step": step, **weights, "opt": opt.state_dict()})
    unet.eval().to("cpu")
    text_encoder.eval().to("cpu")
    return unet, text_encoder


# ---- 5. export ------------------------------------------------------------------------------------------


def export(cfg: TrainConfig, tokenizer, vae, unet, text_encoder, scaling: float) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    vae.register_to_config(scaling_factor=scaling)
    # "trailing" spacing starts sampling at the last (pure-noise) training step.
    scheduler = EulerDiscreteScheduler(**_schedule(cfg), steps_offset=1, timestep_spacing="trailing")
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    cfg.model_dir.mkdir(parents=True, exist_ok=True)
    # mypy sees diffusers' dummy class (the module's own annotations reject None and our scheduler)
    pipe.save_pretrained(cfg.model_dir, safe_serialization=True)  # type: ignore[attr-defined]
    # the recipe, without the machine's own paths
    recipe = {k: v for k, v in asdict(cfg).items() if k not in ("on_progress", "out", "init_from", "device")}
    recipe["device"] = cfg.torch_device.type
    if cfg.init_from is not None:
        recipe["init_from"] = Path(cfg.init_from).name
    (cfg.model_dir / "training.json").write_text(json.dumps(recipe, indent=2))
    return cfg.model_dir


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) every stage and write the diffusers folder; returns its path."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg.checkpoints.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tokenizer = build_tokenizer(cfg)
    vae = train_vae(cfg)
    data = encode_scenes(cfg, vae)
    unet, text_encoder = train_unet(cfg, tokenizer, data)
    path = export(cfg, tokenizer, vae.to("cpu"), unet, text_encoder, data["scaling"])
    log.info("trained in %.0f s; model in %s", time.perf_counter() - started, path)
    return path
