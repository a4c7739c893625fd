"""Procedurally drawn, captioned scenes for the demo text-to-image model.

A *scene* is one to three identical flat shapes of one colour on a flat
background of another colour. Everything is drawn with Pillow from a seed, so
the training set needs no download and any image can be drawn again.

Caption grammar (the only sentences :meth:`Scene.caption` produces and
:func:`parse_caption` reads)::

    caption   := article COLOUR SHAPE [" in the " POSITION] " on " article COLOUR " background"
               | ("two" | "three") COLOUR SHAPE "s on " article COLOUR " background"
    article   := "a" | "an"          ("an" before a vowel: "an orange star")

    a red circle on a blue background
    an orange star in the top left on a white background
    two green squares on a black background
    three pink triangles on an orange background

A position is only ever given for a single shape: two or three shapes squeezed
into one quadrant would be a few pixels each at the 64-pixel training size.

Held-out rule (compositional generalisation test): for every shape, five
(shape colour, background colour) pairs are never drawn in training; see
:data:`HELD_OUT`. Each colour appears exactly once per shape in those pairs,
either as the shape's colour or as the background, and no pair is held out for
more than one shape. So every held-out prompt combines a shape, a colour and a
background (and even the colour pair) that training has shown, just never all
three together.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star")
PLURALS = {shape: shape + "s" for shape in SHAPES}

# Ten colours at least ~100 apart in RGB (see the palette test), so that the
# judge's nearest-colour classification survives a blurry, noisy generation.
# The same palette serves for shapes and backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 20, 30),
    "orange": (245, 130, 0),
    "yellow": (250, 230, 40),
    "green": (30, 160, 60),
    "blue": (30, 80, 220),
    "purple": (120, 30, 170),
    "pink": (250, 140, 200),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
    "grey": (128, 128, 128),
}
COLOUR_NAMES = tuple(COLOURS)

POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
# Where a positioned shape's centre goes, as fractions of the image (x, y).
POSITION_ANCHORS: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}

COUNTS = ("one", "two", "three")  # Scene.count is 1, 2 or 3; "one" is written "a"/"an".
COUNT_WORDS = {2: "two", 3: "three"}

# (shape colour, background) pairs that training never draws, per shape.
HELD_OUT: dict[str, tuple[tuple[str, str], ...]] = {
    "circle": (("red", "green"), ("yellow", "purple"), ("blue", "white"), ("pink", "grey"), ("black", "orange")),
    "square": (("orange", "blue"), ("green", "pink"), ("purple", "black"), ("white", "red"), ("grey", "yellow")),
    "triangle": (("yellow", "black"), ("blue", "red"), ("pink", "orange"), ("white", "green"), ("grey", "purple")),
    "star": (("green", "yellow"), ("orange", "white"), ("purple", "blue"), ("black", "grey"), ("red", "pink")),
}
_HELD_OUT_TRIPLES = frozenset((shape, c, b) for shape, pairs in HELD_OUT.items() for c, b in pairs)

# How likely each count is when sampling; single shapes carry the positions, so they get half.
_COUNT_WEIGHTS = (2, 1, 1)
# Shape size (side or diameter) as a fraction of the image, per layout.
_SIZE_POSITIONED = (0.20, 0.36)  # must fit in a quadrant around its anchor
_SIZE_SINGLE = (0.20, 0.40)
_SIZE_GROUP = {2: (0.16, 0.26), 3: (0.14, 0.22)}
_JITTER = 0.05  # how far a positioned shape may stray from its anchor
_MARGIN = 0.02  # keep every shape this far inside the image
_STAR_INNER = 0.42  # inner/outer radius; a little fatter than a regular star so it survives 64 px


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class Scene:
    """What one picture shows: ``count`` ``colour`` ``shape``\\ s on a ``background``.

    ``position`` (one of :data:`POSITIONS`) is only allowed with ``count == 1``;
    ``None`` means "anywhere".
    """

    shape: str
    colour: str
    background: str
    position: str | None = None
    count: int = 1

    def __post_init__(self) -> None:
        problem = _scene_problem(self)
        if problem:
            raise ValueError(f"invalid scene {self!r}: {problem}")

    def caption(self) -> str:
        """The English caption, e.g. ``"a yellow triangle in the top left on a black background"``."""
        if self.count == 1:
            subject = f"{_article(self.colour)} {self.colour} {self.shape}"
        else:
            subject = f"{COUNT_WORDS[self.count]} {self.colour} {PLURALS[self.shape]}"
        where = f" in the {self.position}" if self.position else ""
        return f"{subject}{where} on {_article(self.background)} {self.background} background"

    @property
    def held_out(self) -> bool:
        """Whether this scene's (shape, colour, background) is kept out of training."""
        return is_held_out(self.shape, self.colour, self.background)


def _scene_problem(scene: Scene) -> str | None:
    if scene.shape not in SHAPES:
        return f"unknown shape {scene.shape!r}"
    if scene.colour not in COLOURS or scene.background not in COLOURS:
        return "unknown colour"
    if scene.colour == scene.background:
        return "a shape in its background's colour would be invisible"
    if scene.count not in (1, 2, 3):
        return "count must be 1, 2 or 3"
    if scene.position is not None and (scene.position not in POSITIONS or scene.count != 1):
        return "a position is only given for a single shape"
    return None


def is_held_out(shape: str, colour: str, background: str) -> bool:
    """Whether (shape, colour, background) is one of the combinations training never sees."""
    return (shape, colour, background) in _HELD_OUT_TRIPLES


def all_scenes(include_held_out: bool = True) -> list[Scene]:
    """Every scene the grammar can describe (2,880 with held-out ones), in a fixed order."""
    scenes = []
    for shape in SHAPES:
        for colour in COLOUR_NAMES:
            for background in COLOUR_NAMES:
                if colour == background or (not include_held_out and is_held_out(shape, colour, background)):
                    continue
                for position in (None, *POSITIONS):
                    scenes.append(Scene(shape, colour, background, position, 1))
                scenes.extend(Scene(shape, colour, background, None, count) for count in (2, 3))
    return scenes


def sample_scene(rng: random.Random, include_held_out: bool = False) -> Scene:
    """Draw a random scene; held-out combinations only when ``include_held_out``."""
    while True:
        shape = rng.choice(SHAPES)
        colour = rng.choice(COLOUR_NAMES)
        background = rng.choice([name for name in COLOUR_NAMES if name != colour])
        if include_held_out or not is_held_out(shape, colour, background):
            break
    count = rng.choices((1, 2, 3), weights=_COUNT_WEIGHTS)[0]
    position = rng.choice((None, *POSITIONS)) if count == 1 else None
    return Scene(shape, colour, background, position, count)


# -- drawing ---------------------------------------------------------------------------------------


def layout(scene: Scene, rng: random.Random) -> list[tuple[float, float, float]]:
    """Where the shapes go: ``(centre x, centre y, size)`` per shape, as fractions of the image.

    Each shape fits in a ``size`` x ``size`` box around its centre; the boxes of
    a group never overlap, so shapes stay separate for the judge.
    """
    if scene.position is not None:
        size = rng.uniform(*_SIZE_POSITIONED)
        ax, ay = POSITION_ANCHORS[scene.position]
        return [(ax + rng.uniform(-_JITTER, _JITTER), ay + rng.uniform(-_JITTER, _JITTER), size)]
    if scene.count == 1:
        size = rng.uniform(*_SIZE_SINGLE)
        return [(_free_coordinate(rng, size), _free_coordinate(rng, size), size)]
    return _group_layout(scene.count, rng.uniform(*_SIZE_GROUP[scene.count]), rng)


def _free_coordinate(rng: random.Random, size: float) -> float:
    half = size / 2 + _MARGIN
    return rng.uniform(half, 1 - half)


def _group_layout(count: int, size: float, rng: random.Random) -> list[tuple[float, float, float]]:
    # Rejection sampling; with these sizes almost every try succeeds, and
    # shrinking after many failures keeps it from ever looping forever.
    gap = size * 1.15
    while True:
        for _ in range(100):
            centres: list[tuple[float, float]] = []
            for _ in range(count):
                x, y = _free_coordinate(rng, size), _free_coordinate(rng, size)
                if all(max(abs(x - cx), abs(y - cy)) >= gap for cx, cy in centres):
                    centres.append((x, y))
            if len(centres) == count:
                return [(x, y, size) for x, y in centres]
        size *= 0.9
        gap = size * 1.15


def _shape_polygon(shape: str, cx: float, cy: float, side: float) -> list[tuple[float, float]] | None:
    """Vertices in pixels for polygon shapes; ``None`` for the circle (drawn as an ellipse)."""
    half = side / 2
    if shape == "square":
        return [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    if shape == "triangle":
        # Equilateral, pointing up, centred vertically in its box.
        h = side * math.sqrt(3) / 2
        return [(cx, cy - h / 2), (cx + half, cy + h / 2), (cx - half, cy + h / 2)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = half if k % 2 == 0 else half * _STAR_INNER
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    return None


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, side: float, fill) -> None:
    polygon = _shape_polygon(shape, cx, cy, side)
    if polygon is None:
        half = side / 2
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=fill)
    else:
        draw.polygon(polygon, fill=fill)


def render(scene: Scene, size: int = 256, rng: random.Random | None = None) -> Image.Image:
    """Draw ``scene`` as a ``size`` x ``size`` RGB image.

    Flat colours, no anti-aliasing: every pixel is exactly the background's or
    the shape's palette colour, which is what the nearest-colour judge expects.
    ``rng`` decides size and placement; without one the layout is derived from
    the caption, so the same scene always looks the same.
    """
    rng = rng if rng is not None else random.Random(scene.caption())
    image = Image.new("RGB", (size, size), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    for x, y, side in layout(scene, rng):
        _draw_shape(draw, scene.shape, x * size, y * size, side * size, COLOURS[scene.colour])
    return image


# -- captions --------------------------------------------------------------------------------------

_COLOUR_RE = "|".join(COLOUR_NAMES)
_CAPTION_RE = re.compile(
    rf"(?P<count>a|an|one|two|three) (?P<colour>{_COLOUR_RE}) (?P<shape>{'|'.join(SHAPES)})(?P<plural>s?)"
    rf"(?: in the (?P<position>{'|'.join(POSITIONS)}))?"
    rf" on (?:a|an) (?P<background>{_COLOUR_RE}) background"
)
_COUNT_OF = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}


def parse_caption(text: str) -> Scene | None:
    """The scene a caption describes, or ``None`` if the grammar cannot produce it.

    The inverse of :meth:`Scene.caption`; it forgives case, extra spaces, a
    final full stop and a wrong or numeric article ("one", "a orange").
    """
    normalised = " ".join(text.lower().split()).rstrip(".").strip()
    match = _CAPTION_RE.fullmatch(normalised)
    if match is None:
        return None
    count = _COUNT_OF[match["count"]]
    if (count > 1) != bool(match["plural"]):
        return None
    try:
        return Scene(match["shape"], match["colour"], match["background"], match["position"], count)
    except ValueError:  # same colours twice, or a position with several shapes
        return None


def vocabulary_words() -> list[str]:
    """Every word a caption can contain, sorted (for the demo tokenizer's vocabulary)."""
    words = {"a", "an", "in", "the", "on", "background", *COUNT_WORDS.values(), *COLOUR_NAMES}
    words |= set(SHAPES) | set(PLURALS.values())
    for position in POSITIONS:
        words |= set(position.split())
    return sorted(words)


# -- data sets -------------------------------------------------------------------------------------


class Prompt(NamedTuple):
    """A caption and the scene it describes."""

    caption: str
    scene: Scene


def example(index: int, seed: int = 0, size: int = 256) -> tuple[Image.Image, str, Scene]:
    """Training example ``index`` of the data set with ``seed``: ``(image, caption, scene)``.

    Each example has its own random stream, so a data loader can fetch any
    index in any order or process and get the same picture.
    """
    rng = random.Random(f"gouache-demo:{seed}:{index}")
    scene = sample_scene(rng)
    return render(scene, size, rng), scene.caption(), scene


def dataset(n: int, seed: int = 0, size: int = 256) -> Iterator[tuple[Image.Image, str, Scene]]:
    """``n`` training examples ``(image, caption, scene)``; never a held-out combination."""
    for index in range(n):
        yield example(index, seed, size)


def held_out_prompts(n: int = 60, seed: int = 0) -> list[Prompt]:
    """``n`` distinct prompts whose (shape, colour, background) training never saw.

    Spread evenly: the 20 held-out combinations take turns, each contributing a
    different count/position variant per round, so 60 prompts are 3 per
    combination. Deterministic for a given ``seed``.
    """
    variants: dict[tuple[str, str, str], list[Scene]] = {}
    for scene in all_scenes():
        if scene.held_out:
            variants.setdefault((scene.shape, scene.colour, scene.background), []).append(scene)
    available = sum(len(v) for v in variants.values())
    if n > available:
        raise ValueError(f"only {available} held-out prompts exist, asked for {n}")
    rng = random.Random(f"gouache-demo-held-out:{seed}")
    triples = sorted(variants)
    rng.shuffle(triples)
    queues = {triple: _variant_order(variants[triple], rng) for triple in triples}
    prompts: list[Prompt] = []
    while len(prompts) < n:
        for triple in triples:
            if queues[triple] and len(prompts) < n:
                scene = queues[triple].pop(0)
                prompts.append(Prompt(scene.caption(), scene))
    return prompts


def _variant_order(scenes: list[Scene], rng: random.Random) -> list[Scene]:
    # Alternate single shapes and groups so that three prompts per combination
    # usually test both a position and a count, not three positions.
    singles = [s for s in scenes if s.count == 1]
    groups = [s for s in scenes if s.count > 1]
    rng.shuffle(singles)
    rng.shuffle(groups)
    order: list[Scene] = []
    while singles or groups:
        if singles:
            order.append(singles.pop())
        if groups:
            order.append(groups.pop())
    return order
