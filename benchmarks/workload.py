"""What the benchmark sends: a few pre-encoded ColorShape images and the instruction of each request.

Images are encoded (PNG, base64) once before any timed loop, so the load generator spends
its share of the shared cores on sending requests, not on making them.
"""

from __future__ import annotations

import base64
import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace

from PIL import Image

from focalserve_training.data import ColorShapeGenerator, sample_training_phrasings

PHRASINGS: tuple[str, ...] = tuple(text for texts in sample_training_phrasings(4).values() for text in texts)
InstructionFor = Callable[[int], str]  # request number -> its instruction


def rotating(number: int) -> str:
    """The default mix: the family's eight trained phrasings in turn (a warm condition cache serves them all)."""
    return PHRASINGS[number % len(PHRASINGS)]


def repeated(number: int) -> str:
    """Every request asks the same thing: the condition cache's best case."""
    return PHRASINGS[0]


def distinct() -> InstructionFor:
    """A new instruction on every call, warm-up included, so no request can hit the condition cache."""
    counter = itertools.count()
    return lambda number: f"{PHRASINGS[0]} variant {next(counter)}"


@dataclass(frozen=True)
class Workload:
    """One image and one instruction per request; request n takes image n modulo the image count."""

    images: tuple[bytes, ...]
    images_b64: tuple[str, ...]
    instruction_for: InstructionFor = rotating

    @classmethod
    def colorshape(cls, count: int = 8, seed: int = 1) -> Workload:
        generator = ColorShapeGenerator(seed=seed)
        images = tuple(_png(generator.sample(index).image) for index in range(count))
        return cls(images, tuple(base64.b64encode(image).decode("ascii") for image in images))

    def with_instructions(self, instruction_for: InstructionFor) -> Workload:
        return replace(self, instruction_for=instruction_for)

    def image(self, number: int) -> bytes:
        return self.images[number % len(self.images)]

    def image_b64(self, number: int) -> str:
        return self.images_b64[number % len(self.images)]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
