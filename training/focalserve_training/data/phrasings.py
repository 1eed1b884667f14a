"""Many ways to ask for one condition: the demo's instructions, generated from templates.

People type questions ("what colour is it?"), imperatives ("tell me its shape"), terse forms
("colour?"), US or UK spelling, synonyms ("hue", "outline"), filler ("in this picture, ...")
and even the other attribute's words ("ignore the shape: what colour is it?"). Training on all
of those teaches the instruction tower the condition rather than a wording. HELD_OUT_PHRASINGS
are written by hand in other constructions and are never produced by the templates (a test
checks), so evaluating under them measures what a visitor's own wording gets.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

from focalserve_training.data.colorshape import COLOR_NAMES, SHAPES

# The noun people use for each condition (UK and US spelling, then synonyms), the values it
# takes, and the other condition (for instructions that name it to rule it out).
ATTRIBUTE_WORDS: dict[str, tuple[str, ...]] = {
    "colour": ("colour", "color", "hue", "shade", "tint"),
    "shape": ("shape", "form", "outline", "geometry", "contour"),
}
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {"colour": COLOR_NAMES, "shape": SHAPES}
OTHER = {"colour": "shape", "shape": "colour"}
OBJECTS = ("object", "thing", "item", "figure", "symbol", "shape")

QUESTIONS = (
    "what {attr} is the {obj}?",
    "which {attr} is the {obj}?",
    "what is the {attr} of the {obj}?",
    "what {attr} does the {obj} have?",
    "what {attr} is it?",
    "what {attr} is this?",
    "which {attr} is this?",
    "which {attr} does it have?",
    "what's the {attr}?",
)
IMPERATIVES = (
    "tell me the {attr} of the {obj}",
    "name the {attr} of the {obj}",
    "identify the {attr}",
    "give me the {attr}",
    "describe the {attr} of the {obj}",
    "say which {attr} it is",
)
TERSE = ("{attr}", "{attr}?", "the {attr}", "{attr} of the {obj}", "{obj} {attr}", "{attr} only")
CONTRASTS = (  # the other attribute's word appears, and must be ignored
    "ignore the {other}: what {attr} is it?",
    "not the {other}, the {attr}",
    "the {attr}, never mind the {other}",
    "{attr} rather than {other}",
)
CHOICES = ("is it {a} or {b}?", "{a} or {b}?", "{a}, {b} or another {attr}?")
PREFIXES = ("", "please ", "in this picture, ", "quick question: ", "looking at the image, ")
SUFFIXES = ("", " please", " in the image")

HELD_OUT_PHRASINGS: dict[str, tuple[str, ...]] = {
    "colour": (
        "what color is that object?",
        "can you tell me which colour it is?",
        "what color would you call this?",
        "describe the coloring of the figure.",
        "what is the main colour here?",
        "colour of the thing in the picture?",
        "is it red, blue or some other colour?",
        "tell me its colour, not its shape.",
    ),
    "shape": (
        "what geometric shape is shown?",
        "can you tell me which shape it is?",
        "what form does this thing take?",
        "describe the figure's outline.",
        "which geometric figure is drawn here?",
        "shape of the thing in the picture?",
        "is it a circle, a square or something else?",
        "tell me its shape, not its colour.",
    ),
}


@cache
def training_phrasings() -> dict[str, tuple[str, ...]]:
    """Every templated instruction per condition, sorted."""
    return {condition: tuple(sorted(set(_phrasings(condition)))) for condition in ATTRIBUTE_WORDS}


@dataclass(frozen=True)
class BatchPhrasings:
    """Words each item of a batch's condition: `per_batch` phrasings per condition are drawn for
    the batch, and every item takes one of its condition's.

    Why per batch rather than per item: a pretrained text tower costs per distinct text (the
    model encodes each distinct instruction once per batch), so 16 distinct instructions in a
    batch of 128 instead of ~128 halves a CPU training step, while a run still draws every
    phrasing several times.
    """

    phrasings: Mapping[str, Sequence[str]]
    per_batch: int = 8

    def __call__(self, conditions: Sequence[str], rng: random.Random) -> list[str]:
        drawn = {
            condition: rng.sample(self.phrasings[condition], min(self.per_batch, len(self.phrasings[condition])))
            for condition in sorted(set(conditions))
        }
        return [rng.choice(drawn[condition]) for condition in conditions]


def sample_training_phrasings(per_condition: int, seed: int = 0) -> dict[str, tuple[str, ...]]:
    """A fixed sample of the training phrasings (evaluation and benchmarks use a few, not thousands)."""
    rng = random.Random(seed)
    return {condition: tuple(rng.sample(texts, per_condition)) for condition, texts in training_phrasings().items()}


def _phrasings(condition: str) -> list[str]:
    other = OTHER[condition]
    bodies = []
    for attr in ATTRIBUTE_WORDS[condition]:
        objects = [obj for obj in OBJECTS if obj != attr]
        for template in QUESTIONS + IMPERATIVES + TERSE:
            bodies += [template.format(attr=attr, obj=obj) for obj in objects] if "{obj}" in template else [
                template.format(attr=attr)
            ]
        bodies += [template.format(attr=attr, other=ATTRIBUTE_WORDS[other][0]) for template in CONTRASTS]
        bodies += [
            template.format(a=a, b=b, attr=attr)
            for template in CHOICES
            for a, b in itertools.combinations(ATTRIBUTE_VALUES[condition], 2)
        ]
    return [
        prefix + body + suffix
        for body in bodies
        for prefix in PREFIXES
        for suffix in (SUFFIXES if not body.endswith("?") else ("",))
    ]
