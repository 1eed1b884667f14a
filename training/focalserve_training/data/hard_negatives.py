"""Rule-based hard-negative captions for FSC-CLIP, generated on the fly.

FSC-CLIP swaps same-type spans, replaces attributes/relations/objects with siblings or
antonyms, and shuffles 2-grams (with spaCy and WordNet). These strategies do the same
with plain vocabulary groups, which is exact for ColorShape and adequate for simple real
captions; any callable matching ``HardNegativeStrategy`` can replace them.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence
from itertools import combinations
from typing import Protocol

from focalserve_training.data.text import indefinite_article
from focalserve_training.data.word_groups import (
    ENGLISH_ANTONYMS,
    ENGLISH_WORD_GROUPS,
    Antonyms,
    PhraseMatcher,
    Span,
    WordGroups,
    normalise,
)

_ARTICLE_AT_END = re.compile(r"(?<!\w)(an?)(\s+)$", re.IGNORECASE)
_FINAL_PUNCTUATION = re.compile(r"[.!?]+$")


class HardNegativeStrategy(Protocol):
    def __call__(self, caption: str, rng: random.Random) -> str | None:
        """A false variant of ``caption``, or None where the strategy does not apply."""
        ...


class SwapSameType:
    """Swap two different phrases of one group: "a red circle left of a blue square" ->
    "a blue circle left of a red square"."""

    def __init__(self, groups: WordGroups) -> None:
        self.matcher = PhraseMatcher(groups)

    def __call__(self, caption: str, rng: random.Random) -> str | None:
        by_group: dict[str, list[Span]] = defaultdict(list)
        for span in self.matcher.find(caption):
            by_group[span.group].append(span)
        pairs = [
            (a, b)
            for spans in by_group.values()
            for a, b in combinations(spans, 2)
            if a.key != b.key
        ]
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        return splice(caption, [(a, b.key), (b, a.key)])


class ReplaceWord:
    """Replace one phrase with its antonym if it has one ("left of" -> "right of"), else
    with a random sibling from its group ("red" -> "green")."""

    def __init__(self, groups: WordGroups, antonyms: Antonyms | None = None) -> None:
        self.matcher = PhraseMatcher(groups)
        antonyms = {normalise(k): normalise(v) for k, v in (antonyms or {}).items()}
        self.alternatives: dict[str, list[str]] = {}
        for phrases in groups.values():
            keys = list(dict.fromkeys(normalise(p) for p in phrases))
            for key in keys:
                siblings = [k for k in keys if k != key]
                self.alternatives.setdefault(key, [antonyms[key]] if key in antonyms else siblings)

    def __call__(self, caption: str, rng: random.Random) -> str | None:
        spans = [span for span in self.matcher.find(caption) if self.alternatives[span.key]]
        if not spans:
            return None
        span = rng.choice(spans)
        return splice(caption, [(span, rng.choice(self.alternatives[span.key]))])


class BigramShuffle:
    """Shuffle the order of consecutive word pairs: "a red circle left of a blue square"
    -> "a blue circle left square of a red"; final punctuation stays at the end."""

    def __call__(self, caption: str, rng: random.Random) -> str | None:
        punctuation = _FINAL_PUNCTUATION.search(caption.rstrip())
        body = caption.rstrip()[: punctuation.start()] if punctuation else caption
        words = body.split()
        bigrams = [words[i : i + 2] for i in range(0, len(words), 2)]
        order = rng.sample(bigrams, len(bigrams))
        if order == bigrams:
            order = order[1:] + order[:1]  # a rotation differs unless all bigrams are equal
        shuffled = " ".join(word for bigram in order for word in bigram)
        if shuffled == " ".join(words):
            return None
        return shuffled + (punctuation.group() if punctuation else "")


class HardNegativeGenerator:
    """Fills ``num_negatives`` slots; slot j tries strategy j first, then (unless ``strict``) the others.

    Returns the negatives and a validity mask; unfilled slots are "" with False. A ``strict``
    generator keeps slot j for strategy j and masks it when that strategy produced nothing, as
    the reference FSC-CLIP code does; otherwise valid negatives come first. Negatives differ from
    the caption and from each other (ignoring case and spacing). Deterministic given the state of
    ``rng``.
    """

    def __init__(
        self,
        strategies: Sequence[HardNegativeStrategy],
        num_negatives: int = 3,
        tries_per_strategy: int = 3,
        strict: bool = False,
    ) -> None:
        if not strategies:
            raise ValueError("at least one strategy is required")
        self.strategies = list(strategies)
        self.num_negatives = num_negatives
        self.tries_per_strategy = tries_per_strategy
        self.strict = strict

    def __call__(self, caption: str, rng: random.Random) -> tuple[list[str], list[bool]]:
        slots: list[str | None] = []
        taken = {normalise(caption)}
        for slot in range(self.num_negatives):
            negative = self._fill(caption, rng, slot, taken)
            if negative is not None:
                taken.add(normalise(negative))
            slots.append(negative)
        if not self.strict:
            slots.sort(key=lambda negative: negative is None)  # stable: valid ones first, in slot order
        return ["" if negative is None else negative for negative in slots], [n is not None for n in slots]

    def _fill(self, caption: str, rng: random.Random, slot: int, taken: set[str]) -> str | None:
        count = len(self.strategies)
        for offset in range(1 if self.strict else count):
            strategy = self.strategies[(slot + offset) % count]
            for _ in range(self.tries_per_strategy):
                candidate = strategy(caption, rng)
                if candidate is None:
                    break  # not applicable to this caption, whatever the rng says
                if normalise(candidate) not in taken:
                    return candidate
        return None


def rule_based_generator(
    groups: WordGroups = ENGLISH_WORD_GROUPS,
    antonyms: Antonyms | None = ENGLISH_ANTONYMS,
    num_negatives: int = 3,
    strict: bool = False,
) -> HardNegativeGenerator:
    """Swap, replace and shuffle, in FSC-CLIP's order, over one vocabulary."""
    strategies: list[HardNegativeStrategy] = [SwapSameType(groups), ReplaceWord(groups, antonyms), BigramShuffle()]
    return HardNegativeGenerator(strategies, num_negatives, strict=strict)


def splice(caption: str, edits: Sequence[tuple[Span, str]]) -> str:
    """Replace non-overlapping spans, keeping a capital initial and fixing "a"/"an"."""
    out, position = "", 0
    for span, new in sorted(edits, key=lambda edit: edit[0].start):
        if span.text[:1].isupper():
            new = new[:1].upper() + new[1:]
        out = _fix_article(out + caption[position : span.start], new) + new
        position = span.end
    return out + caption[position:]


def _fix_article(head: str, word: str) -> str:
    match = _ARTICLE_AT_END.search(head)
    if match is None:
        return head
    article = indefinite_article(word)
    if match.group(1)[0].isupper():
        article = article.capitalize()
    return head[: match.start()] + article + match.group(2)
