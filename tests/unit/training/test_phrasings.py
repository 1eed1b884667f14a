"""The demo's instruction phrasings: varied in the ways people vary them, held-out ones never trained on."""

import random
import re

from focalserve_training.data import (
    HELD_OUT_PHRASINGS,
    BatchPhrasings,
    ColorShapeInstructions,
    sample_training_phrasings,
    training_phrasings,
)
from focalserve_training.data.phrasings import ATTRIBUTE_WORDS
from focalserve_training.recipes import DataSpec, ModelSpec, create_recipe
from tests.helpers.models import TINY


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text))


def test_held_out_phrasings_are_never_trained_on_even_up_to_punctuation():
    trained = training_phrasings()
    squashed = {re.sub(r"[^a-z ]", "", text) for texts in trained.values() for text in texts}
    for condition, texts in HELD_OUT_PHRASINGS.items():
        for text in texts:
            assert text not in trained[condition]
            assert re.sub(r"[^a-z ]", "", text) not in squashed, text


def test_training_phrasings_vary_the_way_people_do():
    trained = training_phrasings()
    assert set(trained) == set(HELD_OUT_PHRASINGS) == {"colour", "shape"}
    colour, shape = trained["colour"], trained["shape"]
    assert min(len(colour), len(shape)) > 1000
    vocabulary = set().union(*map(words, colour))
    assert {"colour", "color", "hue", "shade", "tint"} <= vocabulary  # UK and US spelling, synonyms
    assert any(text.startswith(("what", "which")) and text.endswith("?") for text in colour)  # questions
    assert any(text.startswith(("tell me", "name", "describe")) for text in shape)  # imperatives
    assert {"shape", "form", "outline"} <= set(shape)  # terse forms
    assert any("in this picture" in text for text in shape)  # filler words
    # the other attribute's word appears in instructions about this one
    assert any("shape" in words(text) and "colour" in words(text) for text in colour)
    assert any("colour" in words(text) and "shape" in words(text) for text in shape)
    assert "what colour is the shape?" in colour and "which shape is this?" in shape  # the demo collection's


def test_every_phrasing_names_its_condition_or_one_of_its_values():
    from focalserve_training.data import COLOR_NAMES, SHAPES

    values = {"colour": set(COLOR_NAMES), "shape": set(SHAPES)}
    for condition, texts in training_phrasings().items():
        cues = set(ATTRIBUTE_WORDS[condition]) | values[condition]
        assert all(words(text) & cues for text in texts)


def test_the_evaluated_sample_is_fixed_and_drawn_from_training():
    sample = sample_training_phrasings(6)
    assert sample == sample_training_phrasings(6)
    for condition, texts in sample.items():
        assert len(set(texts)) == 6 and set(texts) <= set(training_phrasings()[condition])


def test_a_batch_is_worded_with_a_few_phrasings_per_condition_drawn_from_the_pool():
    draw = BatchPhrasings(training_phrasings(), per_batch=8)
    conditions = ["colour", "shape"] * 64
    worded = draw(conditions, random.Random(3))
    assert worded == draw(conditions, random.Random(3))
    for condition in ("colour", "shape"):
        used = {text for text, c in zip(worded, conditions) if c == condition}
        assert 1 < len(used) <= 8 and used <= set(training_phrasings()[condition])
    runs = [set(draw(conditions, random.Random(seed))) for seed in range(40)]
    assert len(set().union(*runs)) > 300  # across batches the whole pool is drawn


def test_the_focallens_recipe_words_colorshape_items_per_batch_reproducibly():
    recipe = create_recipe("focallens", ModelSpec(TINY), DataSpec("colorshape", size=16))
    dataset = recipe.dataset()
    assert isinstance(dataset, ColorShapeInstructions)
    items = [dataset[i] for i in range(32)]
    batch, again = recipe.collate(items), recipe.collate(items)
    assert batch["instructions"].equal(again["instructions"])
    assert len(batch["instructions"].unique(dim=0)) <= 16
