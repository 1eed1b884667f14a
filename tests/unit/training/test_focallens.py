"""FocalLens on open_clip: base equivalence at initialisation, towers, checkpoint loading."""

from __future__ import annotations

import pickle

import pytest
import torch

from focalserve_training.models import FocalLensCLIP, create_base_clip, load_family_model
from focalserve_training.models.factory import read_checkpoint
from tests.helpers.models import TINY, tiny_focallens


def _inputs(batch: int = 4):
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(batch, 3, 32, 32, generator=generator)
    tokens = torch.randint(1, 49000, (batch, 16), generator=generator)
    return pixels, tokens


def test_at_initialisation_the_conditional_embedding_is_the_base_clip_embedding():
    model = tiny_focallens(open_condition=False)
    pixels, tokens = _inputs()
    with torch.no_grad():
        conditional = model.encode_image(pixels, model.encode_instruction(tokens))
        base = model.clip.encode_image(pixels, normalize=True)
    torch.testing.assert_close(conditional, base, atol=1e-6, rtol=0)


def test_instruction_tower_starts_as_a_copy_of_the_text_tower():
    model = tiny_focallens(open_condition=False)
    _, tokens = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_instruction(tokens), model.encode_text(tokens))
    assert (
        model.instruction_tower.text.token_embedding.weight.data_ptr() != model.clip.token_embedding.weight.data_ptr()
    )


def test_condition_projection_is_zero_initialised_and_gates_closed():
    model = tiny_focallens(open_condition=False)
    assert torch.count_nonzero(model.condition_token.projection.weight) == 0
    assert torch.count_nonzero(model.condition_token.gates) == 0


def test_gradients_reach_the_gates_and_projection_from_step_zero():
    """The gates must be trainable at exactly 0, or the condition could never switch on."""
    model = tiny_focallens(open_condition=False)
    pixels, tokens = _inputs()
    model.encode_image(pixels, model.encode_instruction(tokens)).sum().backward()
    assert torch.count_nonzero(model.condition_token.gates.grad) > 0


def test_an_open_condition_changes_the_embedding_per_instruction():
    model = tiny_focallens(open_condition=True)
    pixels, tokens = _inputs(2)
    with torch.no_grad():
        first = model.encode_image(pixels[:1], model.encode_instruction(tokens[:1]))
        second = model.encode_image(pixels[:1], model.encode_instruction(tokens[1:]))
    assert (first - second).abs().max() > 1e-3
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(1))


def test_freeze_answer_tower_leaves_image_instruction_and_scale_trainable():
    model = tiny_focallens()
    model.freeze_answer_tower()
    assert not model.clip.token_embedding.weight.requires_grad
    assert model.clip.visual.conv1.weight.requires_grad
    assert model.instruction_tower.text.token_embedding.weight.requires_grad
    assert model.clip.logit_scale.requires_grad


def test_fsc_clip_checkpoint_format_loads_into_both_families(tmp_path):
    """Public FSC-CLIP checkpoints: {epoch, name, state_dict, optimizer, scaler}, open_clip keys."""
    torch.manual_seed(3)
    source = create_base_clip(TINY)
    path = tmp_path / "fsc-clip.pt"
    state = {f"module.{k}": v for k, v in source.state_dict().items()}  # saved from DDP
    torch.save(
        {
            "epoch": 5,
            "name": "fsc-clip",
            "state_dict": state,
            "optimizer": {"state": {}, "param_groups": []},
            "scaler": None,
        },
        path,
    )
    clip = load_family_model("clip", TINY, checkpoint=path)
    focallens = load_family_model("focallens", TINY, checkpoint=path)
    pixels, _ = _inputs(2)
    with torch.no_grad():
        expected = source.encode_image(pixels, normalize=True)
        torch.testing.assert_close(clip.encode_image(pixels, normalize=True), expected)
        torch.testing.assert_close(focallens.clip.encode_image(pixels, normalize=True), expected)


def test_focallens_checkpoint_round_trips(tmp_path):
    model = tiny_focallens(seed=4)
    path = tmp_path / "focallens.pt"
    torch.save({"family": "focallens", "state_dict": model.state_dict()}, path)
    loaded = load_family_model("focallens", TINY, checkpoint=path)
    assert isinstance(loaded, FocalLensCLIP)
    pixels, tokens = _inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.encode_image(pixels, loaded.encode_instruction(tokens)),
            model.encode_image(pixels, model.encode_instruction(tokens)),
        )
    with pytest.raises(ValueError, match="FocalLens"):
        load_family_model("clip", TINY, checkpoint=path)


def test_read_checkpoint_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "hook": _inputs}, path)
    with pytest.raises(pickle.UnpicklingError):
        read_checkpoint(path)
