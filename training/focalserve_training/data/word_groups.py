"""Vocabulary groups for rule-based hard negatives, and a matcher that finds them in text.

A group holds interchangeable words or phrases of one type (colours, relations...): a
sibling from the same group makes a fluent but false caption. Where a sibling could be
a synonym (big/large) or still true (left of/above), an antonym is used instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from focalserve_training.data.colorshape import COLOR_NAMES, RELATIONS, SHAPES

WordGroups = Mapping[str, Sequence[str]]
Antonyms = Mapping[str, str]

COLORSHAPE_WORD_GROUPS: dict[str, tuple[str, ...]] = {
    "colour": COLOR_NAMES,
    "shape": SHAPES,
    "relation": RELATIONS,
}


def _phrases(text: str) -> tuple[str, ...]:
    return tuple(phrase.strip() for phrase in text.split(","))


def _both_ways(text: str) -> dict[str, str]:
    """Pairs written "a/b, c/d", each usable in both directions."""
    pairs = [tuple(word.strip() for word in pair.split("/")) for pair in text.split(",")]
    return {k: v for a, b in pairs for k, v in ((a, b), (b, a))}


COLORSHAPE_ANTONYMS: dict[str, str] = _both_ways("left of/right of, above/below")

# A small default for real captions; every size and state word has an antonym because
# their siblings are often synonyms. Only "gray" is listed, so "grey" never replaces it.
ENGLISH_WORD_GROUPS: dict[str, tuple[str, ...]] = {
    "colour": _phrases("red, orange, yellow, green, blue, purple, pink, brown, black, white, gray"),
    "size": _phrases("big, small, large, little, huge, tiny, tall, short, long"),
    "state": _phrases("young, old, open, closed, empty, full, wet, dry"),
    "count": _phrases("one, two, three, four, five"),
    "object": _phrases(
        "man, woman, boy, girl, child, dog, cat, horse, cow, sheep, bird, car, bus, truck, "
        "train, bicycle, boat, airplane, table, chair, bed, couch, plate, cup, bowl, pizza, cake"
    ),
    "relation": _phrases(
        "on, under, above, below, left of, right of, next to, in front of, behind, inside, "
        "outside, on top of"
    ),
}
ENGLISH_ANTONYMS: dict[str, str] = {
    **_both_ways(
        "left of/right of, above/below, on/under, in front of/behind, inside/outside, "
        "big/small, tall/short, huge/tiny, young/old, open/closed, empty/full, wet/dry"
    ),
    # one way only: the reverse direction is taken by a closer pair above
    "large": "small",
    "little": "big",
    "long": "short",
    "on top of": "under",
}


def normalise(phrase: str) -> str:
    """Lower-case with single spaces: the key a phrase is looked up by."""
    return " ".join(phrase.lower().split())


@dataclass(frozen=True)
class Span:
    """One vocabulary phrase found in a caption; ``text`` keeps the caption's spelling."""

    start: int
    end: int
    group: str
    text: str

    @property
    def key(self) -> str:
        return normalise(self.text)


class PhraseMatcher:
    """Finds whole-word, case-insensitive vocabulary phrases, longest phrase first
    ("on top of" before "on"); a phrase listed in two groups belongs to the first."""

    def __init__(self, groups: WordGroups) -> None:
        self.group_of: dict[str, str] = {}
        for group, phrases in groups.items():
            for phrase in phrases:
                self.group_of.setdefault(normalise(phrase), group)
        longest_first = sorted(self.group_of, key=len, reverse=True)
        alternatives = "|".join(r"\s+".join(map(re.escape, p.split())) for p in longest_first)
        self._pattern = re.compile(rf"(?<!\w)(?:{alternatives or '(?!)'})(?!\w)", re.IGNORECASE)

    def find(self, caption: str) -> list[Span]:
        """Non-overlapping matches, left to right."""
        return [
            Span(m.start(), m.end(), self.group_of[normalise(m.group())], m.group())
            for m in self._pattern.finditer(caption)
        ]
