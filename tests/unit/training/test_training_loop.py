"""The training loop: exact resume, schedule, parameter groups, accumulation, frozen parts."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from focalserve_training.loop import MAX_LOGIT_SCALE, TrainConfig, Trainer, parameter_groups, warmup_cosine
from focalserve_training.models import load_family_model
from focalserve_training.recipes import DataSpec, ModelSpec, create_recipe
from tests.helpers.models import TINY

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_recipe(name: str, size: int = 64):
    torch.manual_seed(0)  # the recipe builds the model, before the Trainer seeds anything
    return create_recipe(name, ModelSpec(TINY), DataSpec("colorshape", size=size))


def make_config(output_dir: Path, **overrides) -> TrainConfig:
    settings = dict(batch_size=16, lr=1e-3, warmup_steps=2, amp=False, progress=False, log_every=1)
    return TrainConfig(output_dir, **{**settings, **overrides})


def train(name: str, output_dir: Path, **overrides) -> Trainer:
    trainer = Trainer(make_recipe(name), make_config(output_dir, **overrides))
    trainer.fit()
    return trainer


def assert_same_state(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    different = [name for name in first if not torch.equal(first[name], second[name])]
    assert not different, f"differ after resume: {different[:5]}"


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


# --- exact resume -------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["clip", "focallens"])
def test_a_run_stopped_at_3_and_resumed_to_6_equals_an_uninterrupted_6_step_run(tmp_path, recipe):
    # Warm-up covers all 6 steps, so the schedule does not depend on max_steps (3 or 6):
    # the two runs see the same learning rates and must end in identical weights.
    reference = train(recipe, tmp_path / "once", max_steps=6, warmup_steps=10)
    # 6 steps of 16 cross an epoch boundary in the clip recipe (64 images = 4 steps per epoch).
    assert reference.step == 6

    split = tmp_path / "split"
    train(recipe, split, max_steps=3, warmup_steps=10)
    assert (split / "checkpoints" / "step_3.pt").exists()
    resumed = train(recipe, split, max_steps=6, warmup_steps=10)

    assert resumed.step == 6
    assert (split / "checkpoints" / "step_6.pt").exists()
    assert_same_state(reference.model.state_dict(), resumed.model.state_dict())


def test_resuming_from_a_mid_run_checkpoint_reproduces_the_rest_of_the_run(tmp_path):
    """Mid-epoch, in the cosine part: optimizer, scheduler and data order resume exactly.

    (The clip recipe's sampler path is resumed mid-epoch by the split-run test above.)
    """
    recipe = "focallens"
    checkpoints = tmp_path / "checkpoints"
    train(recipe, tmp_path, max_steps=6, warmup_steps=2, save_every=3)
    finished = torch.load(checkpoints / "step_6.pt", weights_only=True)
    shutil.copy(checkpoints / "step_3.pt", checkpoints / "latest.pt")  # as if killed after step 3

    resumed = train(recipe, tmp_path, max_steps=6, warmup_steps=2, save_every=3)

    assert resumed.step == 6
    assert_same_state(finished["state_dict"], resumed.model.state_dict())
    assert resumed.scheduler.state_dict()["last_epoch"] == finished["scheduler"]["last_epoch"] == 6


def test_a_checkpoint_loads_back_into_its_family_model(tmp_path):
    trainer = train("focallens", tmp_path, max_steps=1)
    path = tmp_path / "checkpoints" / "latest.pt"
    state = torch.load(path, weights_only=True)
    assert (state["family"], state["recipe"], state["model_name"], state["step"]) == (
        "focallens",
        "focallens",
        TINY,
        1,
    )
    assert_same_state(
        trainer.model.state_dict(),
        load_family_model("focallens", TINY, checkpoint=path).state_dict(),
    )


def test_a_dataset_too_small_for_one_step_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no full step"):
        Trainer(make_recipe("clip", size=8), make_config(tmp_path, batch_size=16))


# --- learning-rate schedule --------------------------------------------------------------


def test_warmup_is_linear_then_cosine_decays_to_zero():
    factor = warmup_cosine(warmup_steps=4, total_steps=12)
    assert [factor(step) for step in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factor(4) == pytest.approx(1.0)
    assert factor(8) == pytest.approx(0.5)  # half-way through the cosine part
    assert factor(6) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert factor(12) == pytest.approx(0.0, abs=1e-12)
    assert factor(20) == pytest.approx(0.0, abs=1e-12)  # stays at 0 past the end
    cosine = [factor(step) for step in range(4, 13)]
    assert cosine == sorted(cosine, reverse=True)


def test_without_warmup_the_first_step_uses_the_full_learning_rate():
    factor = warmup_cosine(warmup_steps=0, total_steps=10)
    assert factor(0) == 1.0
    assert factor(5) == pytest.approx(0.5)


def test_the_trainer_applies_the_schedule_to_every_parameter_group(tmp_path):
    trainer = Trainer(
        make_recipe("focallens"), make_config(tmp_path, max_steps=10, warmup_steps=4, lr=1e-3)
    )
    base = [group["initial_lr"] for group in trainer.optimizer.param_groups]
    for step in range(6):
        expected = warmup_cosine(4, 10)(step)
        assert [group["lr"] for group in trainer.optimizer.param_groups] == pytest.approx(
            [lr * expected for lr in base]
        )
        trainer.optimizer.step()  # no gradients: only advances the scheduler cleanly
        trainer.scheduler.step()


# --- parameter groups --------------------------------------------------------------------


def test_parameter_groups_exclude_frozen_parameters_and_skip_decay_on_gains_embeddings_and_scale(
    tmp_path,
):
    recipe = make_recipe("focallens")  # freezes the answer tower
    config = make_config(tmp_path, lr=1e-3, weight_decay=0.1, new_parameter_lr_scale=10.0)
    groups = parameter_groups(recipe.model, config, recipe.new_parameter_names())
    setting = {
        id(p): (group["lr"], group["weight_decay"]) for group in groups for p in group["params"]
    }
    assert sum(len(group["params"]) for group in groups) == len(setting)  # each parameter once

    named = dict(recipe.model.named_parameters())
    trainable = {name for name, p in named.items() if p.requires_grad}
    assert {name for name, p in named.items() if id(p) in setting} == trainable
    assert "clip.token_embedding.weight" not in trainable  # the frozen answer tower

    def lr_and_decay(name: str) -> tuple[float, float]:
        return setting[id(named[name])]

    assert lr_and_decay("clip.visual.conv1.weight") == pytest.approx((1e-3, 0.1))
    assert lr_and_decay("clip.visual.proj") == pytest.approx((1e-3, 0.1))
    assert lr_and_decay("clip.visual.ln_pre.weight") == pytest.approx((1e-3, 0.0))
    assert lr_and_decay("clip.visual.transformer.resblocks.0.attn.in_proj_bias") == pytest.approx(
        (1e-3, 0.0)
    )
    assert lr_and_decay("clip.visual.positional_embedding") == pytest.approx(
        (1e-3, 0.0)
    )  # 2-D, but an embedding
    assert lr_and_decay("instruction_tower.text.token_embedding.weight") == pytest.approx(
        (1e-3, 0.0)
    )
    assert lr_and_decay("clip.logit_scale") == pytest.approx((1e-3, 0.0))
    assert lr_and_decay("condition_token.projection.weight") == pytest.approx((1e-2, 0.1))
    assert lr_and_decay("condition_token.projection.bias") == pytest.approx((1e-2, 0.0))
    assert lr_and_decay("condition_token.gates") == pytest.approx((1e-2, 0.0))
    assert lr_and_decay("condition_token.position") == pytest.approx((1e-2, 0.0))

    for name in trainable:  # the rule, for every parameter
        lr, decay = lr_and_decay(name)
        assert lr == pytest.approx(1e-2 if name.startswith("condition_token.") else 1e-3), name
        no_decay = named[name].ndim < 2 or "embedding" in name or "logit_scale" in name
        assert decay == (0.0 if no_decay else 0.1), name


def test_the_clip_recipe_has_no_new_parameters(tmp_path):
    recipe = make_recipe("clip")
    groups = parameter_groups(
        recipe.model, make_config(tmp_path, lr=1e-3), recipe.new_parameter_names()
    )
    assert {group["lr"] for group in groups} == {1e-3}
    assert sum(len(group["params"]) for group in groups) == len(list(recipe.model.parameters()))


# --- gradient accumulation and logging ---------------------------------------------------


def test_accumulation_takes_the_same_optimizer_steps_from_half_size_micro_batches(tmp_path):
    full = Trainer(
        make_recipe("fsc-clip"), make_config(tmp_path / "full", batch_size=16, max_steps=5)
    )
    recipe = make_recipe("fsc-clip")
    micro_batch_sizes = []
    collate = recipe.collate

    def counting_collate(items):
        micro_batch_sizes.append(len(items))
        return collate(items)

    recipe.collate = counting_collate
    output_dir = tmp_path / "accumulated"
    trainer = Trainer(recipe, make_config(output_dir, batch_size=8, accum_steps=2, max_steps=5))
    assert trainer.steps_per_epoch == full.steps_per_epoch == 4
    trainer.fit()

    assert trainer.step == 5
    assert micro_batch_sizes == [8] * 10
    records = [
        json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()
    ]
    assert [record["step"] for record in records] == [1, 2, 3, 4, 5]
    assert [record["epoch"] for record in records] == [0, 0, 0, 0, 1]
    for record in records:
        terms = [record[name] for name in ("contrastive_loss", "global_hn_loss", "local_hn_loss")]
        assert all(math.isfinite(term) for term in terms)
        assert record["loss"] == pytest.approx(sum(terms))
        assert 0 < record["logit_scale"] <= 100 + 1e-4


# --- what trains and what does not -------------------------------------------------------


def test_focallens_training_leaves_the_answer_tower_unchanged_and_moves_image_tower_and_gates(
    tmp_path,
):
    recipe = make_recipe("focallens")
    model = recipe.model
    before = snapshot(model)
    answer_tower = {
        name
        for name, p in model.named_parameters()
        if any(p is q for q in model.answer_tower_parameters())
    }
    assert "clip.token_embedding.weight" in answer_tower and "clip.text_projection" in answer_tower

    Trainer(recipe, make_config(tmp_path, max_steps=2)).fit()
    after = model.state_dict()

    for name in answer_tower:
        assert torch.equal(before[name], after[name]), name
    for name in (
        "clip.visual.conv1.weight",
        "clip.visual.transformer.resblocks.0.attn.in_proj_weight",
        "clip.visual.proj",
        "condition_token.gates",
        "condition_token.projection.weight",
    ):
        assert not torch.equal(before[name], after[name]), name
    assert all(not p.requires_grad for p in model.answer_tower_parameters())


@pytest.mark.parametrize(
    ("recipe", "start", "expected"),
    [
        ("clip", 10.0, MAX_LOGIT_SCALE),  # temperature below 1/100: clamped to 1/100
        ("focallens", -1.0, 0.0),  # scale below 1: clamped to 1
    ],
)
def test_the_logit_scale_is_clamped_after_each_step(tmp_path, recipe, start, expected):
    recipe = make_recipe(recipe)
    clip = getattr(recipe.model, "clip", recipe.model)
    with torch.no_grad():
        clip.logit_scale.fill_(start)
    Trainer(recipe, make_config(tmp_path, max_steps=1)).fit()
    assert clip.logit_scale.item() == pytest.approx(expected, abs=1e-7)
