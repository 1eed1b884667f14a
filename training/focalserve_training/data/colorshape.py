"""ColorShape: a synthetic, deterministic stand-in for the FocalLens toy benchmark.

Each image holds one coloured shape (or, for compositionality, two shapes and a spatial
relation) on a noisy, tinted background, so that neither attribute can be read off a
trivial statistic such as the mean pixel. Everything is a pure function of
``(seed, index)``: datasets regenerate images on access instead of storing them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from focalserve_training.data.text import indefinite_article

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down, for soft edges
_SINGLE_SIZE = (0.35, 0.7)  # object side as a fraction of the image side
_SCENE_SIZE = (0.28, 0.42)  # two objects must fit in half the image each
_SINGLE_STREAM, _SCENE_STREAM = 0, 1  # keep sample(i) and sample_scene(i) independent

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end-exclusive


@dataclass(frozen=True)
class ColorShapeSample:
    """One coloured shape; ``mask`` marks the object's pixels (for checks and probes)."""

    image: Image.Image
    colour: str
    shape: str
    box: Box
    mask: np.ndarray


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    box: Box


@dataclass(frozen=True)
class TwoObjectScene:
    """Two shapes where ``objects[0]`` stands in ``relation`` to ``objects[1]``."""

    image: Image.Image
    objects: tuple[SceneObject, SceneObject]
    relation: str


def caption(sample: ColorShapeSample | SceneObject | TwoObjectScene) -> str:
    """Plain caption: "a red circle" or "a red circle left of an orange square"."""
    if isinstance(sample, TwoObjectScene):
        first, second = sample.objects
        return f"{_noun_phrase(first)} {sample.relation} {_noun_phrase(second)}"
    return _noun_phrase(sample)


def _noun_phrase(obj: ColorShapeSample | SceneObject) -> str:
    return f"{indefinite_article(obj.colour)} {obj.colour} {obj.shape}"


def answer(sample: ColorShapeSample, condition: str) -> str:
    """The expected answer text for a condition: the attribute's name."""
    if condition not in ("colour", "shape"):
        raise ValueError(f"unknown condition {condition!r}; expected 'colour' or 'shape'")
    return sample.colour if condition == "colour" else sample.shape


class ColorShapeGenerator:
    """Renders samples as a pure function of ``(seed, index)``, independent of call order."""

    def __init__(self, seed: int = 0, image_size: int = 32) -> None:
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {image_size}")
        self.seed = seed
        self.image_size = image_size

    def sample(self, index: int) -> ColorShapeSample:
        """Index cycles through the colour x shape pairs, so that any 30 consecutive indices
        hold each pair once and small evaluation sets stay balanced."""
        rng = np.random.default_rng([self.seed, index, _SINGLE_STREAM])
        colour = COLOR_NAMES[index % len(COLOR_NAMES)]
        shape = SHAPES[(index // len(COLOR_NAMES)) % len(SHAPES)]
        side = self._side(rng, _SINGLE_SIZE)
        x0, y0 = (int(v) for v in rng.integers(0, self.image_size - side + 1, size=2))
        box = (x0, y0, x0 + side, y0 + side)
        canvas = _background(rng, self.image_size)
        alpha = _shape_alpha(shape, box, self.image_size)
        _paint(canvas, alpha, _jitter(rng, COLORS[colour]))
        return ColorShapeSample(_finish(canvas, rng), colour, shape, box, alpha > 0.5)

    def sample_scene(self, index: int) -> TwoObjectScene:
        """Two objects differing in colour or shape, separated along the relation's axis."""
        rng = np.random.default_rng([self.seed, index, _SCENE_STREAM])
        relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
        first = _random_attributes(rng)
        second = _random_attributes(rng)
        while second == first:
            second = _random_attributes(rng)
        boxes = self._scene_boxes(rng, relation)
        canvas = _background(rng, self.image_size)
        objects = []
        for (colour, shape), box in zip((first, second), boxes, strict=True):
            _paint(canvas, _shape_alpha(shape, box, self.image_size), _jitter(rng, COLORS[colour]))
            objects.append(SceneObject(colour, shape, box))
        return TwoObjectScene(_finish(canvas, rng), (objects[0], objects[1]), relation)

    def _side(self, rng: np.random.Generator, fractions: tuple[float, float]) -> int:
        low, high = (round(f * self.image_size) for f in fractions)
        return int(rng.integers(low, high + 1))

    def _scene_boxes(self, rng: np.random.Generator, relation: str) -> tuple[Box, Box]:
        """Subject in one half, object in the other; both near a shared line across the
        other axis, so the caption's relation is the only clear one."""
        size, half = self.image_size, self.image_size // 2
        sides = [self._side(rng, _SCENE_SIZE) for _ in range(2)]
        subject_first = relation in ("left of", "above")
        centre = rng.uniform(max(sides) / 2, size - max(sides) / 2)
        boxes = []
        for i, side in enumerate(sides):
            near_origin = (i == 0) == subject_first  # left or top half
            along = int(rng.integers(0, half - side + 1)) + (0 if near_origin else size - half)
            jitter = rng.uniform(-0.1, 0.1) * side
            across = int(np.clip(round(centre - side / 2 + jitter), 0, size - side))
            x, y = (along, across) if relation in ("left of", "right of") else (across, along)
            boxes.append((x, y, x + side, y + side))
        return boxes[0], boxes[1]


class ColorShapeCaptions(Dataset):
    """Single-object images with captions and integer labels (into COLOR_NAMES, SHAPES)."""

    def __init__(self, n: int, seed: int = 0, image_size: int = 32) -> None:
        self.n = n
        self.generator = ColorShapeGenerator(seed, image_size)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        sample = self.generator.sample(_check_index(index, self.n))
        return {
            "image": sample.image,
            "caption": caption(sample),
            "label_colour": COLOR_NAMES.index(sample.colour),
            "label_shape": SHAPES.index(sample.shape),
        }


class ColorShapeInstructions(Dataset):
    """`per_condition` items per (image, condition), holding the condition and its answer; the
    recipe words each condition per batch (`BatchPhrasings`). An image's items are contiguous
    and share an entry of ``image_ids``, which a grouped batch sampler keys on.

    Two items per condition by default: with one, the demo's instruction tower learned the
    plain wordings but read "tell me its shape, not its colour" as a colour question.
    """

    def __init__(
        self,
        n_images: int,
        seed: int = 0,
        image_size: int = 32,
        conditions: Sequence[str] = ("colour", "shape"),
        per_condition: int = 2,
    ) -> None:
        if not conditions or per_condition < 1:
            raise ValueError("at least one condition is needed, and per_condition must be positive")
        self.generator = ColorShapeGenerator(seed, image_size)
        self.slots = [condition for condition in conditions for _ in range(per_condition)]
        self.image_ids = [i for i in range(n_images) for _ in self.slots]
        self._last_sample: tuple[int, ColorShapeSample] | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict:
        image_id, slot = divmod(_check_index(index, len(self)), len(self.slots))
        sample = self._sample(image_id)
        condition = self.slots[slot]
        return {
            "image": sample.image,
            "answer": answer(sample, condition),
            "image_id": image_id,
            "condition": condition,
        }

    def _sample(self, image_id: int) -> ColorShapeSample:
        """The image's sample, rendered once for the run of its items that a batch fetches in turn
        (rendering was most of a training batch's collation); a pure function of `image_id`."""
        if self._last_sample is None or self._last_sample[0] != image_id:
            self._last_sample = (image_id, self.generator.sample(image_id))
        return self._last_sample[1]


class TwoObjectCaptions(Dataset):
    """Two-object scenes with relational captions, for compositional training and probes."""

    def __init__(self, n: int, seed: int = 0, image_size: int = 32) -> None:
        self.n = n
        self.generator = ColorShapeGenerator(seed, image_size)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        scene = self.generator.sample_scene(_check_index(index, self.n))
        return {"image": scene.image, "caption": caption(scene)}


def _check_index(index: int, length: int) -> int:
    """Generated datasets accept any integer, so bound them like a list would."""
    if not -length <= index < length:
        raise IndexError(f"index {index} out of range for dataset of length {length}")
    return index % length


def _random_attributes(rng: np.random.Generator) -> tuple[str, str]:
    colour = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
    return colour, SHAPES[int(rng.integers(len(SHAPES)))]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-saturation tint plus smooth blotches: varied, but never mistaken for a colour."""
    grey = rng.uniform(60, 200)
    tint = rng.uniform(-20, 20, size=3)
    coarse = rng.uniform(-25, 25, size=(4, 4)).astype(np.float32)
    blotches = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR))
    return grey + tint[None, None, :] + blotches[:, :, None]


def _shape_alpha(shape: str, box: Box, size: int) -> np.ndarray:
    """Coverage in [0, 1] of each pixel by the shape, drawn supersampled."""
    big = size * _SUPERSAMPLE
    x0, y0, x1, y1 = (v * _SUPERSAMPLE for v in box)
    x1, y1 = x1 - 1, y1 - 1  # PIL's box ends are inclusive
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    layer = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(layer)
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=255)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=255)
    elif shape == "cross":
        arm = (x1 - x0) / 6
        draw.rectangle((cx - arm, y0, cx + arm, y1), fill=255)
        draw.rectangle((x0, cy - arm, x1, cy + arm), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return np.asarray(layer.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int]) -> np.ndarray:
    """Small per-object colour variation, well below the distance between named colours."""
    return np.asarray(rgb, dtype=np.float32) + rng.uniform(-12, 12, size=3)


def _paint(canvas: np.ndarray, alpha: np.ndarray, rgb: np.ndarray) -> None:
    canvas *= 1.0 - alpha[:, :, None]
    canvas += alpha[:, :, None] * rgb[None, None, :]


def _finish(canvas: np.ndarray, rng: np.random.Generator) -> Image.Image:
    noisy = canvas + rng.normal(0.0, 6.0, size=canvas.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8))
