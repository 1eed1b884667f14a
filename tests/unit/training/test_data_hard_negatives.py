import random

import pytest

from focalserve_training.data import (
    COLOR_NAMES,
    COLORSHAPE_ANTONYMS,
    COLORSHAPE_WORD_GROUPS,
    BigramShuffle,
    ColorShapeGenerator,
    HardNegativeGenerator,
    PhraseMatcher,
    ReplaceWord,
    SwapSameType,
    caption,
    rule_based_generator,
)

SCENE = "a red circle left of a blue square"


def outputs(strategy, caption, n=40):
    rng = random.Random(0)
    return {strategy(caption, rng) for _ in range(n)}


def test_matcher_prefers_longest_phrase_and_whole_words():
    matcher = PhraseMatcher({"relation": ["on", "on top of"], "colour": ["red"]})
    spans = matcher.find("A Red cat on top of a bored dog, on reddish grass")
    assert [(s.text, s.group) for s in spans] == [
        ("Red", "colour"),
        ("on top of", "relation"),
        ("on", "relation"),
    ]


def test_swap_exchanges_two_phrases_of_the_same_group():
    swap = SwapSameType(COLORSHAPE_WORD_GROUPS)
    assert outputs(swap, SCENE) == {
        "a blue circle left of a red square",
        "a red square left of a blue circle",
    }
    assert swap("a red circle left of a red circle", random.Random(0)) is None
    assert swap("a red circle", random.Random(0)) is None


def test_swap_fixes_articles():
    swap = SwapSameType({"colour": COLOR_NAMES})
    result = swap("an orange circle left of a red square", random.Random(0))
    assert result == "a red circle left of an orange square"


def test_replace_uses_siblings_and_relation_antonyms():
    replace = ReplaceWord(COLORSHAPE_WORD_GROUPS, COLORSHAPE_ANTONYMS)
    results = outputs(replace, SCENE, n=300)
    assert "a red circle right of a blue square" in results
    assert "a green circle left of a blue square" in results
    assert "a red circle left of a blue triangle" in results
    assert not any(r.startswith("a red circle above") for r in results)
    assert SCENE not in results
    # one phrase changed: 5 other colours for each colour, 4 other shapes for each shape,
    # and only the antonym for the relation
    assert len(results) == 5 + 5 + 4 + 4 + 1
    assert replace("a sphere", random.Random(0)) is None


def test_replace_keeps_capitals_and_articles():
    replace = ReplaceWord({"colour": ["red", "orange"]})
    assert replace("A red circle.", random.Random(0)) == "An orange circle."
    assert replace("Red circle", random.Random(0)) == "Orange circle"


def test_bigram_shuffle_reorders_pairs_and_always_differs():
    shuffle = BigramShuffle()
    bigrams = {"a red", "circle left", "of a", "blue square"}
    for result in outputs(shuffle, SCENE):
        assert result != SCENE
        words = result.split()
        assert {" ".join(words[i : i + 2]) for i in range(0, 8, 2)} == bigrams
    assert shuffle("a dog.", random.Random(0)) is None
    assert shuffle("a dog", random.Random(0)) is None
    assert shuffle("a dog on grass.", random.Random(0)) == "on grass a dog."


def test_generator_fills_slots_with_distinct_negatives_and_masks_the_rest():
    generator = rule_based_generator(COLORSHAPE_WORD_GROUPS, COLORSHAPE_ANTONYMS, num_negatives=4)
    negatives, mask = generator(SCENE, random.Random(1))
    assert len(negatives) == len(mask) == 4 and all(mask)
    assert len(set(negatives)) == 4 and SCENE not in negatives

    negatives, mask = generator("hello", random.Random(1))
    assert negatives == ["", "", "", ""] and mask == [False] * 4


def test_generator_puts_valid_negatives_first():
    only_swap = HardNegativeGenerator([SwapSameType(COLORSHAPE_WORD_GROUPS)], num_negatives=3)
    negatives, mask = only_swap("a red circle left of a blue square", random.Random(0))
    assert mask == [True, True, False]
    assert set(negatives[:2]) == {
        "a blue circle left of a red square",
        "a red square left of a blue circle",
    }
    assert negatives[2] == ""


def test_generator_ignores_candidates_equal_to_the_caption():
    def echo(caption, rng):
        return "  " + caption.upper()

    generator = HardNegativeGenerator([echo, BigramShuffle()], num_negatives=2)
    negatives, mask = generator("a red circle", random.Random(0))
    assert negatives == ["circle a red", ""] and mask == [True, False]


def test_generator_is_deterministic_given_the_rng():
    generator = rule_based_generator()
    caption = "A big dog on top of a red table next to a small cat."
    assert generator(caption, random.Random(5)) == generator(caption, random.Random(5))


@pytest.mark.parametrize("index", range(20))
def test_every_colorshape_scene_gets_three_valid_negatives(index):
    text = caption(ColorShapeGenerator(seed=index).sample_scene(index))
    generator = rule_based_generator(COLORSHAPE_WORD_GROUPS, COLORSHAPE_ANTONYMS)
    negatives, mask = generator(text, random.Random(index))
    assert all(mask) and text not in negatives and len(set(negatives)) == 3


def test_a_strict_generator_keeps_each_slot_for_its_strategy_and_masks_it_when_that_fails():
    swap, replace = SwapSameType(COLORSHAPE_WORD_GROUPS), ReplaceWord(COLORSHAPE_WORD_GROUPS, COLORSHAPE_ANTONYMS)
    strict = HardNegativeGenerator([swap, replace, BigramShuffle()], num_negatives=3, strict=True)
    negatives, mask = strict("a red circle", random.Random(0))  # one colour, one shape: nothing to swap
    assert mask == [False, True, True] and negatives[0] == ""
    assert negatives[1] not in ("", "a red circle") and negatives[2] == "circle a red"

    loose = HardNegativeGenerator([swap, replace, BigramShuffle()], num_negatives=3)
    assert loose("a red circle", random.Random(0))[1] == [True, True, True]  # slot 0 borrowed a replace


def test_a_strict_generator_matches_the_loose_one_where_every_strategy_applies():
    text = "a red circle left of a blue square"
    strict = rule_based_generator(COLORSHAPE_WORD_GROUPS, COLORSHAPE_ANTONYMS, strict=True)
    loose = rule_based_generator(COLORSHAPE_WORD_GROUPS, COLORSHAPE_ANTONYMS)
    assert strict(text, random.Random(3)) == loose(text, random.Random(3))
