"""Readout conditioning: the trunk is the base ViT, and one pass over an image serves every condition."""

from __future__ import annotations

import pytest
import torch

from focalserve_training.models import FocalLensCLIP, create_base_clip, load_family_model
from focalserve_training.models.focallens import readout_image_features
from tests.helpers.models import MINILM, TINY, tiny_focallens


def _inputs(images: int = 3, instructions: int = 4):
    generator = torch.Generator().manual_seed(2)
    pixels = torch.randn(images, 3, 32, 32, generator=generator)
    tokens = torch.randint(1, 49000, (instructions, 16), generator=generator)
    return pixels, tokens


@pytest.mark.parametrize("model_name", [TINY, MINILM])
def test_at_initialisation_the_readout_embedding_is_the_base_clip_embedding(model_name):
    model = tiny_focallens(open_condition=False, model_name=model_name, conditioning="readout")
    pixels, _ = _inputs(images=4)
    with torch.no_grad():
        condition = torch.randn(4, model.condition_dim)  # any condition: the gates are closed
        conditional = model.encode_image(pixels, condition)
        base = model.clip.encode_image(pixels, normalize=True)
    torch.testing.assert_close(conditional, base, atol=1e-6, rtol=0)


def test_the_trunk_ignores_every_condition_and_gives_the_base_embedding():
    model = tiny_focallens(open_condition=True, conditioning="readout")
    pixels, tokens = _inputs()
    visual = model.clip.visual
    with torch.no_grad():
        conditions = model.encode_instruction(tokens)
        image_index = torch.tensor([0, 0, 1, 2])
        unconditional, conditional = readout_image_features(visual, model.condition_token, pixels, conditions,
                                                            image_index)
        base = model.clip.encode_image(pixels)
    torch.testing.assert_close(unconditional, base, atol=1e-5, rtol=0)
    assert conditional.shape == (4, base.shape[-1])


def test_several_conditions_in_one_pass_equal_one_condition_at_a_time():
    model = tiny_focallens(open_condition=True, conditioning="readout")
    pixels, tokens = _inputs(images=2, instructions=3)
    visual, token = model.clip.visual, model.condition_token
    with torch.no_grad():
        conditions = model.encode_instruction(tokens)
        image_index = torch.tensor([0, 0, 0, 1, 1, 1])
        _, together = readout_image_features(visual, token, pixels, conditions.repeat(2, 1), image_index)
        alone = [readout_image_features(visual, token, pixels[i : i + 1], conditions[j : j + 1], torch.tensor([0]))[1]
                 for i in range(2) for j in range(3)]
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=0)


def test_an_open_readout_changes_the_embedding_per_instruction():
    model = tiny_focallens(open_condition=True, conditioning="readout")
    pixels, tokens = _inputs(images=1, instructions=2)
    with torch.no_grad():
        conditions = model.encode_instruction(tokens)
        first = model.encode_image(pixels, conditions[:1])
        second = model.encode_image(pixels, conditions[1:])
    assert (first - second).abs().max() > 1e-3


def test_repeated_images_in_a_batch_equal_each_row_alone():
    """encode_image runs the trunk once per distinct image; rows must not depend on their neighbours."""
    model = tiny_focallens(open_condition=True, conditioning="readout")
    pixels, tokens = _inputs(images=2, instructions=4)
    batch = pixels[[0, 1, 0, 1]]
    with torch.no_grad():
        conditions = model.encode_instruction(tokens)
        together = model.encode_image(batch, conditions)
        alone = torch.cat([model.encode_image(batch[i : i + 1], conditions[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_gradients_reach_the_gates_and_projection_from_step_zero():
    model = tiny_focallens(open_condition=False, conditioning="readout")
    pixels, tokens = _inputs(images=4, instructions=4)
    model.encode_image(pixels, model.encode_instruction(tokens)).sum().backward()
    assert torch.count_nonzero(model.condition_token.gates.grad) > 0
    assert torch.count_nonzero(model.condition_token.projection.weight.grad) == 0  # gated off: no signal yet
    assert model.condition_token.projection.bias.grad is not None


def test_readout_needs_a_class_token_to_copy():
    base = create_base_clip(TINY)
    base.visual.pool_type = "avg"
    with pytest.raises(ValueError, match="pool_type"):
        FocalLensCLIP(base, conditioning="readout")


def test_a_checkpoint_keeps_its_conditioning(tmp_path):
    model = tiny_focallens(seed=5, conditioning="readout")
    path = tmp_path / "readout.pt"
    torch.save({"family": "focallens", "conditioning": "readout", "state_dict": model.state_dict()}, path)
    loaded = load_family_model("focallens", TINY, checkpoint=path)
    assert isinstance(loaded, FocalLensCLIP) and loaded.conditioning == "readout"
    with pytest.raises(ValueError, match="readout conditioning, not full"):
        load_family_model("focallens", TINY, checkpoint=path, conditioning="full")
    legacy = tmp_path / "full.pt"  # written before conditioning was recorded: full
    torch.save({"family": "focallens", "state_dict": model.state_dict()}, legacy)
    assert load_family_model("focallens", TINY, checkpoint=legacy).conditioning == "full"
