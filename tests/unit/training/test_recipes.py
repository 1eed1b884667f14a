"""Recipes: collated batches, batch samplers, one loss call each, deterministic hard negatives."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import BatchSampler

from focalserve_training.data import GroupedInstructionBatchSampler
from focalserve_training.loop import TrainConfig, Trainer
from focalserve_training.losses import same_text_ids
from focalserve_training.options import FSCCLIPOptions
from focalserve_training.recipes import DataSpec, ModelSpec, create_recipe
from tests.helpers.models import TINY

REPOSITORY = Path(__file__).resolve().parents[3]
CONTEXT_LENGTH = 16  # focalserve-tiny
LOSS_TERMS = {
    "clip": {"contrastive_loss"},
    "focallens": {"contrastive_loss"},
    "fsc-clip": {"contrastive_loss", "global_hn_loss", "local_hn_loss"},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def recipes():
    torch.manual_seed(0)
    return {
        name: create_recipe(name, ModelSpec(TINY), DataSpec("colorshape", size=32))
        for name in LOSS_TERMS
    }


def first_batch(recipe, batch_size: int = 8) -> list[dict]:
    """The items of the batch the loop would train on first (grouped for FocalLens)."""
    dataset = recipe.dataset()
    sampler = recipe.batch_sampler(dataset, batch_size, 0, 1, 0)
    indices = next(iter(sampler)) if sampler is not None else range(batch_size)
    return [dataset[index] for index in indices]


def assert_ids_match_texts(ids: torch.Tensor, texts: list[str]) -> None:
    for i in range(len(texts)):
        for j in range(len(texts)):
            assert (ids[i] == ids[j]).item() == (texts[i] == texts[j]), (texts[i], texts[j])


# --- collate -----------------------------------------------------------------------------


def test_clip_collate_gives_pixels_and_tokens_equal_for_identical_captions(recipes):
    recipe = recipes["clip"]
    dataset = recipe.dataset()
    items = [dataset[0], dataset[1], dataset[2], dataset[0]]  # a repeated caption
    batch = recipe.collate(items)
    assert set(batch) == {"pixels", "captions"}
    assert batch["pixels"].shape == (4, 3, 32, 32) and batch["pixels"].dtype == torch.float32
    assert batch["captions"].shape == (4, CONTEXT_LENGTH) and batch["captions"].dtype == torch.long
    # the loss masks duplicates by token rows (gathered across ranks under DDP)
    assert_ids_match_texts(same_text_ids(batch["captions"]), [item["caption"] for item in items])


def test_same_text_ids_equal_exactly_for_identical_token_rows():
    tokens = torch.tensor([[1, 2, 3], [1, 2, 4], [1, 2, 3], [5, 5, 5]])
    ids = same_text_ids(tokens)
    assert ids[0] == ids[2]
    assert len({ids[0].item(), ids[1].item(), ids[3].item()}) == 3


def test_focallens_collate_gives_instructions_and_answers(recipes):
    recipe = recipes["focallens"]
    items = first_batch(recipe, batch_size=16)
    batch = recipe.collate(items)
    assert set(batch) == {"pixels", "instructions", "answers"}
    assert batch["pixels"].shape == (16, 3, 32, 32) and batch["pixels"].dtype == torch.float32
    for key in ("instructions", "answers"):
        assert batch[key].shape == (16, CONTEXT_LENGTH) and batch[key].dtype == torch.long
    answers = [item["answer"] for item in items]
    assert len(set(answers)) < len(answers)  # several instructions of one image: repeated answers
    assert_ids_match_texts(same_text_ids(batch["answers"]), answers)


def test_fsc_clip_collate_tokenises_only_the_valid_negatives(recipes):
    recipe = recipes["fsc-clip"]
    items = first_batch(recipe)
    batch = recipe.collate(items)
    assert set(batch) == {"pixels", "captions", "negatives", "negative_mask"}
    assert batch["pixels"].shape == (8, 3, 32, 32)
    assert batch["captions"].shape == (8, CONTEXT_LENGTH)
    mask = batch["negative_mask"]
    assert mask.shape == (8, 3) and mask.dtype == torch.bool
    assert mask.any(dim=1).all()  # colour/shape captions always have some valid negative
    assert not mask.all()  # and missing ones: they are not tokenised, so not encoded
    assert batch["negatives"].shape == (mask.sum(), CONTEXT_LENGTH) and batch["negatives"].dtype == torch.long
    captions = batch["captions"].unsqueeze(1).expand(8, 3, -1)[mask]  # row-major order, like the negatives
    assert not (batch["negatives"] == captions).all(dim=-1).any()  # a valid negative differs from its caption


def test_fsc_clip_slots_follow_their_generator_unless_told_otherwise(recipes):
    """As in the reference, slot 0 holds a swap or nothing: single-object captions have nothing to swap."""
    items = first_batch(recipes["fsc-clip"])
    assert not recipes["fsc-clip"].collate(items)["negative_mask"][:, 0].any()
    loose_slots = FSCCLIPOptions(strict_negative_slots=False)
    loose = create_recipe("fsc-clip", ModelSpec(TINY), DataSpec("colorshape", size=32), fsc_clip=loose_slots)
    assert loose.collate(items)["negative_mask"].all()  # another generator fills the slot


def test_fsc_clip_negatives_are_the_same_for_the_same_batch(recipes):
    recipe = recipes["fsc-clip"]
    items = first_batch(recipe)
    first, second = recipe.collate(items), recipe.collate(items)
    torch.manual_seed(123)  # the global RNG plays no part
    third = create_recipe("fsc-clip", ModelSpec(TINY), DataSpec("colorshape", size=32)).collate(
        items
    )
    for other in (second, third):
        assert torch.equal(first["negatives"], other["negatives"])
        assert torch.equal(first["negative_mask"], other["negative_mask"])


_NEGATIVES_SCRIPT = """
import json, torch
from focalserve_training.recipes import DataSpec, ModelSpec, create_recipe
recipe = create_recipe("fsc-clip", ModelSpec("focalserve-tiny"), DataSpec("colorshape", size=32))
dataset = recipe.dataset()
batch = recipe.collate([dataset[index] for index in range(8)])
print(json.dumps([batch["negatives"].tolist(), batch["negative_mask"].tolist()]))
"""


def test_fsc_clip_negatives_do_not_depend_on_the_process_hash_seed(recipes):
    """DDP ranks and resumed runs are separate processes: str hashing must not change negatives."""
    environment = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _NEGATIVES_SCRIPT],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    negatives, mask = json.loads(done.stdout.strip().splitlines()[-1])
    recipe = recipes["fsc-clip"]
    dataset = recipe.dataset()
    batch = recipe.collate([dataset[index] for index in range(8)])
    assert negatives == batch["negatives"].tolist()
    assert mask == batch["negative_mask"].tolist()


# --- batch samplers ----------------------------------------------------------------------


def test_focallens_batches_group_several_instructions_of_each_image(recipes, tmp_path):
    recipe = recipes["focallens"]
    trainer = Trainer(
        recipe, TrainConfig(tmp_path, batch_size=16, max_steps=1, amp=False, progress=False)
    )
    assert isinstance(trainer.sampler, GroupedInstructionBatchSampler)
    image_ids = trainer.dataset.image_ids
    k = recipe.instructions_per_image
    for batch in list(trainer.sampler)[:4]:
        per_image = Counter(image_ids[index] for index in batch)
        assert len(batch) == 16
        assert all(count % k == 0 for count in per_image.values()), per_image


def test_caption_recipes_use_the_loops_own_shuffling(recipes, tmp_path):
    for name in ("clip", "fsc-clip"):
        recipe = recipes[name]
        assert recipe.batch_sampler(recipe.dataset(), 8, 0, 1, 0) is None
    trainer = Trainer(
        recipes["clip"], TrainConfig(tmp_path, batch_size=8, max_steps=1, amp=False, progress=False)
    )
    assert isinstance(trainer.sampler, BatchSampler)


# --- losses ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LOSS_TERMS))
def test_one_loss_call_returns_finite_named_terms_with_gradients(recipes, name):
    recipe = recipes[name]
    model = recipe.model.train()
    batch = recipe.collate(first_batch(recipe, batch_size=8))
    terms = recipe.loss(model, batch)
    assert set(terms) == LOSS_TERMS[name]
    for term in terms.values():
        assert term.ndim == 0 and term.requires_grad and math.isfinite(term.item())

    model.zero_grad(set_to_none=True)
    sum(terms.values()).backward()
    clip = getattr(model, "clip", model)
    assert (
        clip.visual.conv1.weight.grad is not None and clip.visual.conv1.weight.grad.abs().sum() > 0
    )
    assert clip.logit_scale.grad is not None
    if name == "focallens":
        assert all(p.grad is None for p in model.answer_tower_parameters())  # frozen
        assert model.condition_token.gates.grad.abs().sum() > 0  # the gates learn from step 0
    else:
        assert clip.token_embedding.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_focallens_names_its_new_parameters(recipes):
    recipe = recipes["focallens"]
    prefixes = recipe.new_parameter_names()
    assert prefixes == ("condition_token.",)
    new = [name for name, _ in recipe.model.named_parameters() if name.startswith(prefixes)]
    assert set(new) == {
        "condition_token.projection.weight",
        "condition_token.projection.bias",
        "condition_token.position",
        "condition_token.gates",
    }
    assert recipes["clip"].new_parameter_names() == recipes["fsc-clip"].new_parameter_names() == ()


# --- errors ------------------------------------------------------------------------------


def test_unknown_recipes_and_unsupported_data_are_refused(recipes):
    with pytest.raises(ValueError, match="unknown recipe"):
        create_recipe("dino", ModelSpec(TINY), DataSpec("colorshape", size=8))
    focallens = create_recipe("focallens", ModelSpec(TINY), DataSpec("scenes", size=8))
    with pytest.raises(ValueError, match="colorshape or llava"):
        focallens.dataset()
    clip = create_recipe("clip", ModelSpec(TINY), DataSpec("llava", size=8))
    with pytest.raises(ValueError, match=r"colorshape, scenes, colorshape\+scenes or captions"):
        clip.dataset()


def test_the_cli_lists_every_recipe_by_name():
    """`focalserve train` reads the names from a module without torch; they must be the recipes'."""
    from focalserve_training.recipe_names import RECIPES
    from focalserve_training.recipes import ClipRecipe, FocalLensRecipe, FSCCLIPRecipe

    assert RECIPES == tuple(recipe.name for recipe in (ClipRecipe, FocalLensRecipe, FSCCLIPRecipe))
