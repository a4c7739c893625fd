"""Automatic judge for demo-model pictures: right colours, right shape, right place, right count?

Every check starts from the same reading of the image: each pixel is given the
name of the nearest palette colour (:data:`tools.demo.scenes.COLOURS`), the
background is the most common colour in the outer frame, and everything else
is "foreground". The palette is far apart, so this survives the blur and noise
of a generated picture better than any exact-colour test would.

The shape is read by a tiny CNN trained here on rendered scenes. Its input is
the largest foreground blob, cropped to a square and scaled to 32x32, so it
sees a silhouette and never colour, size or position. Train it with
``python -m tools.demo.judge --out shape_classifier.pt``.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .scenes import COLOUR_NAMES, COLOURS, POSITION_ANCHORS, SHAPES, Scene, render, sample_scene

_PALETTE = np.array([COLOURS[name] for name in COLOUR_NAMES], dtype=np.float32)
_PALETTE_NORMS = (_PALETTE**2).sum(axis=1)
_MAX_SIDE = 256  # bigger images are shrunk first: the judge needs no more detail, and it keeps it fast
_FRAME = 0.04  # outer frame, as a fraction of the side, that decides the background
INPUT_SIZE = 32  # the classifier's silhouette is INPUT_SIZE x INPUT_SIZE
# A blob counts as a shape if it is at least this fraction of the largest one.
# The shapes of a group are drawn the same size, so this drops only specks of noise.
_COUNT_FRACTION = 0.25


# -- reading colours -------------------------------------------------------------------------------


def palette_labels(image: Image.Image) -> np.ndarray:
    """Index into :data:`COLOUR_NAMES` of each pixel's nearest palette colour (an ``H x W`` array)."""
    image = image.convert("RGB")
    if max(image.size) > _MAX_SIDE:
        scale = _MAX_SIDE / max(image.size)
        new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        # Box averaging also damps the pixel noise of a generated picture.
        image = image.resize(new_size, Image.Resampling.BOX)
    pixels = np.asarray(image, dtype=np.float32).reshape(-1, 3)
    # |p - c|² = |p|² - 2 p·c + |c|²; |p|² is the same for every c, so one matrix product ranks them.
    distances = _PALETTE_NORMS - 2 * pixels @ _PALETTE.T
    return distances.argmin(axis=1).astype(np.uint8).reshape(image.height, image.width)


def background_index(labels: np.ndarray) -> int:
    """The palette index of the background: the most common colour in the outer frame."""
    h, w = labels.shape
    band = max(1, round(_FRAME * min(h, w)))
    frame = np.concatenate(
        [labels[:band].ravel(), labels[-band:].ravel(), labels[:, :band].ravel(), labels[:, -band:].ravel()]
    )
    return int(np.bincount(frame, minlength=len(COLOUR_NAMES)).argmax())


def majority_filter(labels: np.ndarray) -> np.ndarray:
    """Each pixel's label replaced by the most common one in its 3x3 neighbourhood (ties keep the pixel's own).

    Scattered noise pixels of a generated picture are each classified as some
    palette colour; on a plain background they can outnumber a small shape's
    pixels and win the shape-colour vote. A vote among neighbours removes them
    while leaving flat regions, and so clean renders, as they were.
    """
    onehot = labels[..., None] == np.arange(len(COLOUR_NAMES), dtype=np.uint8)
    padded = np.pad(onehot, ((1, 1), (1, 1), (0, 0)), mode="edge").astype(np.int16)
    h, w = labels.shape
    votes = sum(padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))
    return (2 * votes + onehot).argmax(axis=-1).astype(np.uint8)


def colour_match(image: Image.Image, scene: Scene) -> tuple[bool, bool]:
    """``(shape colour right, background right)`` for ``image`` against what ``scene`` asks for.

    The shape colour is the most common palette colour among the pixels that
    are not the background's; an image with no such pixel has no shape colour.
    Colours are read after a :func:`majority_filter`, so isolated noise does
    not vote.
    """
    labels = majority_filter(palette_labels(image))
    background = background_index(labels)
    foreground = labels[labels != background]
    background_ok = COLOUR_NAMES[background] == scene.background
    if foreground.size == 0:
        return False, background_ok
    shape_colour = int(np.bincount(foreground, minlength=len(COLOUR_NAMES)).argmax())
    return COLOUR_NAMES[shape_colour] == scene.colour, background_ok


# -- blobs -----------------------------------------------------------------------------------------


def foreground_mask(image: Image.Image) -> np.ndarray:
    """``True`` where a pixel is not the background colour."""
    labels = palette_labels(image)
    return labels != background_index(labels)


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4-connected blobs of ``mask``: ``(labels, ids, sizes)``, largest blob first.

    ``labels`` holds, for each foreground pixel, the flat index of one pixel of
    its blob (and ``mask.size`` for background); ``ids`` lists the distinct
    blob labels and ``sizes`` their pixel counts, largest first. Pure numpy (no scipy): take
    the minimum over neighbours, then let labels follow each other (pointer
    jumping), which converges in a few dozen sweeps even for long thin blobs.
    """
    h, w = mask.shape
    none = h * w
    labels = np.where(mask, np.arange(none).reshape(h, w), none)
    while True:
        low = labels.copy()
        np.minimum(low[1:], labels[:-1], out=low[1:])
        np.minimum(low[:-1], labels[1:], out=low[:-1])
        np.minimum(low[:, 1:], labels[:, :-1], out=low[:, 1:])
        np.minimum(low[:, :-1], labels[:, 1:], out=low[:, :-1])
        low[~mask] = none
        flat = low.ravel()
        inside = flat < none
        flat[inside] = flat[flat[inside]]
        if np.array_equal(low, labels):
            break
        labels = low
    ids, sizes = np.unique(labels[mask], return_counts=True)
    order = np.argsort(-sizes, kind="stable")
    return labels, ids[order], sizes[order]


def count_shapes(image: Image.Image) -> int:
    """How many separate shapes the picture shows (blobs at least a quarter the size of the largest)."""
    _, _, sizes = connected_components(foreground_mask(image))
    if sizes.size == 0:
        return 0
    return int((sizes >= _COUNT_FRACTION * sizes[0]).sum())


def count_match(image: Image.Image, scene: Scene) -> bool:
    """Whether the picture shows as many shapes as ``scene`` asks for."""
    return count_shapes(image) == scene.count


def position_match(image: Image.Image, scene: Scene) -> bool | None:
    """Whether the largest shape sits nearest the anchor ``scene.position`` names (``None`` if it names none)."""
    if scene.position is None:
        return None
    labels, ids, _ = connected_components(foreground_mask(image))
    if ids.size == 0:
        return False
    ys, xs = np.nonzero(labels == ids[0])
    h, w = labels.shape
    return _nearest_position((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h) == scene.position


def _nearest_position(x: float, y: float) -> str:
    # Anchors are 0.35 apart at the closest, and a render strays at most 0.05
    # from its anchor, so a clean render is never near a boundary.
    return min(POSITION_ANCHORS, key=lambda name: math.dist(POSITION_ANCHORS[name], (x, y)))


def silhouette(image: Image.Image) -> np.ndarray | None:
    """The classifier's input: the largest blob, cropped square, as ``INPUT_SIZE``² floats in [0, 1].

    ``None`` when the picture has no foreground at all.
    """
    labels, ids, _ = connected_components(foreground_mask(image))
    if ids.size == 0:
        return None
    ys, xs = np.nonzero(labels == ids[0])
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    # Centre the blob in a square with a one-pixel border, so the shape's
    # proportions survive (a triangle is wider than tall).
    side = max(bottom - top, right - left) + 2
    square = np.zeros((side, side), dtype=np.uint8)
    y0, x0 = (side - (bottom - top)) // 2, (side - (right - left)) // 2
    square[y0 : y0 + bottom - top, x0 : x0 + right - left] = (labels[top:bottom, left:right] == ids[0]) * 255
    small = Image.fromarray(square).resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32) / 255.0


# -- the shape classifier --------------------------------------------------------------------------


def _shape_net() -> nn.Module:
    # ~16k parameters (64 KB): three conv/pool stages down to 4x4, then a linear read-out.
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (INPUT_SIZE // 8) ** 2, len(SHAPES)),
    )


class ShapeClassifier:
    """Callable ``classifier(image) -> shape name`` (``None`` for a picture with no shape)."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net.eval()

    def __call__(self, image: Image.Image) -> str | None:
        mask = silhouette(image)
        if mask is None:
            return None
        return self.classify_silhouettes(mask[None])[0]

    @torch.no_grad()
    def classify_silhouettes(self, masks: np.ndarray) -> list[str]:
        """Shape names for a batch of :func:`silhouette` arrays (``N x INPUT_SIZE x INPUT_SIZE``)."""
        logits = self.net(torch.from_numpy(np.asarray(masks, dtype=np.float32))[:, None])
        return [SHAPES[i] for i in logits.argmax(dim=1).tolist()]


@dataclass(frozen=True)
class TrainReport:
    """What :func:`train_shape_classifier` did: accuracy on fresh renders, time taken, file size."""

    accuracy: float
    seconds: float
    file_bytes: int
    path: Path


def rendered_silhouettes(n: int, seed: int, sizes: tuple[int, ...] = (64, 128, 256)) -> tuple[np.ndarray, np.ndarray]:
    """``n`` silhouettes of random scenes (every colour pair, count and position) and their shape indices.

    Image sizes cycle through ``sizes`` so the classifier also knows the small,
    blockier silhouettes of a 64-pixel picture.
    """
    rng = random.Random(f"gouache-judge:{seed}")
    masks = np.zeros((n, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    targets = np.zeros(n, dtype=np.int64)
    for i in range(n):
        scene = sample_scene(rng, include_held_out=True)
        masks[i] = silhouette(render(scene, sizes[i % len(sizes)], rng))
        targets[i] = SHAPES.index(scene.shape)
    return masks, targets


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Small rotations and scalings and left-right flips, all of which keep
    # every shape what it is, so the judge tolerates a slightly tilted or
    # squashed generated shape. (No vertical flip: a triangle points up.)
    n = batch.shape[0]
    angle = (torch.rand(n, generator=generator) - 0.5) * (2 * 0.2)  # ±0.2 rad ≈ ±11°
    scale = 0.9 + 0.2 * torch.rand(n, generator=generator)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, torch.zeros(n)], 1), torch.stack([sin * flip, cos, torch.zeros(n)], 1)], 1
    )
    grid = nn.functional.affine_grid(theta, list(batch.shape), align_corners=False)
    return nn.functional.grid_sample(batch, grid, align_corners=False)


def _fit(net: nn.Module, masks: np.ndarray, targets: np.ndarray, epochs: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(masks)[:, None]
    y = torch.from_numpy(targets)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    steps_per_epoch = max(1, len(x) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=epochs * steps_per_epoch)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * 64 : (step + 1) * 64]
            loss = nn.functional.cross_entropy(net(_augment(x[batch], generator)), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    net.eval()


def train_shape_classifier(
    path: str | Path, seed: int = 0, n: int = 6000, epochs: int = 12, n_eval: int = 1000
) -> TrainReport:
    """Train the shape classifier on ``n`` rendered scenes, save it to ``path``, and report.

    The reported accuracy is measured on ``n_eval`` fresh 256-pixel renders
    from a different seed. Deterministic for a given ``seed``.
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    masks, targets = rendered_silhouettes(n, seed)
    net = _shape_net()
    _fit(net, masks, targets, epochs, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().clone() for name, tensor in net.state_dict().items()}
    torch.save({"shapes": list(SHAPES), "input_size": INPUT_SIZE, "state_dict": state}, path)
    seconds = time.perf_counter() - started
    accuracy = evaluate_shape_classifier(ShapeClassifier(net), n=n_eval, seed=seed + 1_000_000)
    return TrainReport(accuracy=accuracy, seconds=seconds, file_bytes=path.stat().st_size, path=path)


def load_shape_classifier(path: str | Path) -> ShapeClassifier:
    """The classifier :func:`train_shape_classifier` saved at ``path``."""
    saved = torch.load(Path(path), map_location="cpu", weights_only=True)
    if tuple(saved["shapes"]) != SHAPES or saved["input_size"] != INPUT_SIZE:
        raise ValueError(f"{path} was trained for other shapes or another input size")
    net = _shape_net()
    net.load_state_dict(saved["state_dict"])
    return ShapeClassifier(net)


def evaluate_shape_classifier(
    classifier: Callable[[Image.Image], str | None], n: int = 500, seed: int = 12345, size: int = 256
) -> float:
    """Fraction of ``n`` fresh clean renders (any scene, ``size`` pixels) whose shape ``classifier`` names."""
    if isinstance(classifier, ShapeClassifier):  # one batched forward pass instead of n
        masks, targets = rendered_silhouettes(n, seed, sizes=(size,))
        predicted = classifier.classify_silhouettes(masks)
        return float(np.mean([SHAPES.index(p) == t for p, t in zip(predicted, targets, strict=True)]))
    rng = random.Random(f"gouache-judge:{seed}")
    hits = 0
    for _ in range(n):
        scene = sample_scene(rng, include_held_out=True)
        hits += classifier(render(scene, size, rng)) == scene.shape
    return hits / n


# -- everything at once ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Every check of one picture against its scene; ``None`` where a check does not apply."""

    colour_ok: bool
    background_ok: bool
    count_ok: bool
    shape_ok: bool | None
    position_ok: bool | None

    @property
    def all_ok(self) -> bool:
        """Whether every applicable check passed."""
        return all(
            check is not False
            for check in (self.colour_ok, self.background_ok, self.count_ok, self.shape_ok, self.position_ok)
        )


def judge(image: Image.Image, scene: Scene, classifier: ShapeClassifier | None = None) -> Verdict:
    """All checks of ``image`` against ``scene``; the shape is checked only when given a ``classifier``."""
    colour_ok, background_ok = colour_match(image, scene)
    return Verdict(
        colour_ok=colour_ok,
        background_ok=background_ok,
        count_ok=count_match(image, scene),
        shape_ok=None if classifier is None else classifier(image) == scene.shape,
        position_ok=position_match(image, scene),
    )


def main(argv: list[str] | None = None) -> None:
    """Command line: train the shape classifier and print its accuracy per image size."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, default=Path("shape_classifier.pt"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-n", type=int, default=6000, help="training renders")
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args(argv)
    report = train_shape_classifier(args.out, seed=args.seed, n=args.n, epochs=args.epochs)
    print(f"saved {report.path} ({report.file_bytes} bytes) in {report.seconds:.1f} s")
    classifier = load_shape_classifier(report.path)
    for size in (64, 128, 256):
        accuracy = evaluate_shape_classifier(classifier, n=1000, seed=args.seed + 2_000_000, size=size)
        print(f"accuracy on 1000 fresh {size}px renders: {accuracy:.3f}")


if __name__ == "__main__":
    main()
