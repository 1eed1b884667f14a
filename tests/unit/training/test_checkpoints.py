"""Checkpoints that load, or say why not: FSC-CLIP LoRA files merged, mismatched architectures refused."""

from __future__ import annotations

import warnings
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from focalserve_training.models import create_base_clip, load_family_model
from focalserve_training.models.architecture import ActivationWarning, CheckpointMismatch, check_checkpoint
from tests.helpers.lora import LINEAR_TARGETS, release_checkpoint, with_lora_factors
from tests.helpers.models import TINY, tiny_focallens

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RANK = 4


@pytest.fixture(scope="module")
def base_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(5)
    return create_base_clip(TINY).state_dict()


def save(checkpoint: dict, path: Path) -> Path:
    torch.save(checkpoint, path)
    return path


def merged_by_hand(lora: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """W + scale * B @ A for each adapted layer, written out per layout (conv: B @ A viewed as the kernel)."""
    merged = {key: value for key, value in lora.items() if "lora_" not in key}
    for key in merged:
        if key.endswith("attn.in_proj_weight"):
            merged[key] = lora[key] + scale * lora[key + "_lora_B"] @ lora[key + "_lora_A"]
        elif key.endswith(LINEAR_TARGETS):
            stem = key.removesuffix("weight")
            merged[key] = lora[key] + scale * lora[stem + "lora_B"] @ lora[stem + "lora_A"]
    conv = lora["visual.conv1.weight"]
    delta = lora["visual.conv1.lora_B"] @ lora["visual.conv1.lora_A"]
    merged["visual.conv1.weight"] = conv + scale * delta.view(conv.shape)
    return merged


@pytest.mark.parametrize("ddp_prefix", [True, False])
def test_a_lora_release_checkpoint_loads_merged_as_by_hand(tmp_path, base_state, ddp_prefix):
    lora = with_lora_factors(base_state, RANK)
    path = save(release_checkpoint(lora, ddp_prefix), tmp_path / "lora.pt")
    loaded = load_family_model("clip", TINY, checkpoint=path).state_dict()

    expected = merged_by_hand(lora, 1 / RANK)  # lora_alpha 1, as in the release
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value, msg=key)
    changed = [key for key in expected if not torch.equal(expected[key], base_state[key])]
    blocks = 3 + 2  # focalserve-tiny: 3 vision and 2 text layers, 4 adapted weights each, plus the patch embedding
    assert len(changed) == 4 * blocks + 1


def test_merged_layers_compute_what_the_releases_unmerged_layers_compute(tmp_path, base_state):
    """The release's forward: x W^T + b + (x A^T B^T) / r, for an MLP layer and the packed attention projection."""
    lora = with_lora_factors(base_state, RANK)
    model = load_family_model("clip", TINY, checkpoint=save(release_checkpoint(lora, True), tmp_path / "lora.pt"))
    block, at = model.transformer.resblocks[1], "transformer.resblocks.1."
    x = torch.randn(5, model.transformer.width)

    def unmerged(weight: str, bias: str, factors: str) -> torch.Tensor:
        delta = F.linear(F.linear(x, lora[at + factors + "lora_A"]), lora[at + factors + "lora_B"]) / RANK
        return F.linear(x, lora[at + weight], lora[at + bias]) + delta

    with torch.no_grad():
        torch.testing.assert_close(block.mlp.c_fc(x), unmerged("mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_fc."))
        torch.testing.assert_close(
            F.linear(x, block.attn.in_proj_weight, block.attn.in_proj_bias),
            unmerged("attn.in_proj_weight", "attn.in_proj_bias", "attn.in_proj_weight_"),
        )


def test_lora_alpha_scales_every_delta(tmp_path, base_state):
    path = save(release_checkpoint(with_lora_factors(base_state, RANK), True), tmp_path / "lora.pt")
    once = load_family_model("clip", TINY, checkpoint=path).state_dict()
    twice = load_family_model("clip", TINY, checkpoint=path, lora_alpha=2.0).state_dict()
    for key in ("visual.conv1.weight", "transformer.resblocks.0.attn.in_proj_weight"):
        torch.testing.assert_close(twice[key] - base_state[key], 2 * (once[key] - base_state[key]))


def test_a_lora_factor_without_its_partner_is_refused(tmp_path, base_state):
    lora = with_lora_factors(base_state, RANK)
    del lora["visual.transformer.resblocks.0.mlp.c_proj.lora_B"]
    with pytest.raises(ValueError, match=r"mlp\.c_proj\.lora_A/lora_B: the checkpoint has no .*c_proj\.lora_B"):
        load_family_model("clip", TINY, checkpoint=save(release_checkpoint(lora, False), tmp_path / "lora.pt"))


# --- architecture mismatches --------------------------------------------------------------


@pytest.fixture(scope="module")
def vit_b_32_state() -> dict[str, torch.Tensor]:
    """ViT-B-32's keys and shapes without its 600 MB: every tensor a broadcast zero (what is checked is shapes)."""
    meta = open_clip.create_model("ViT-B-32", device="meta").state_dict()
    return {key: torch.zeros((), dtype=value.dtype).expand(value.shape) for key, value in meta.items()}


@pytest.mark.parametrize("family", ["clip", "focallens"])
def test_a_checkpoint_with_other_shapes_is_refused_naming_the_config_that_fits(tmp_path, base_state, family):
    state = base_state if family == "clip" else tiny_focallens().state_dict()
    path = save({"state_dict": state}, tmp_path / "tiny.pt")
    with pytest.raises(CheckpointMismatch, match="other shapes; use --model focalserve-tiny") as raised:
        load_family_model(family, "ViT-B-32", checkpoint=path)
    assert raised.value.configs == ("focalserve-tiny",)


@pytest.mark.parametrize(
    ("file_name", "chosen", "needed"),
    [
        ("coco_fsc-clip-lora-ViT-B-32.pt", "ViT-B-32", "ViT-B-32-quickgelu"),  # OpenAI-based: QuickGELU
        ("laioncoco_fsc-clip-ViT-B-32.pt", "ViT-B-32", "ViT-B-32-quickgelu"),
        ("dcxl_fsc-clip-ViT-B-32.pt", "ViT-B-32-quickgelu", "ViT-B-32"),  # DataComp-based: GELU
    ],
)
def test_a_release_file_with_the_other_activation_is_refused(tmp_path, vit_b_32_state, file_name, chosen, needed):
    path = save(release_checkpoint(vit_b_32_state, True), tmp_path / file_name)
    with pytest.raises(CheckpointMismatch, match=f"fine-tuned from ViT-B-32 .*; use --model {needed}$") as raised:
        load_family_model("clip", chosen, checkpoint=path)
    assert raised.value.configs == (needed,)


def test_a_recorded_config_with_the_other_activation_is_refused(tmp_path, vit_b_32_state):
    path = save({"model_name": "ViT-B-32-quickgelu", "state_dict": vit_b_32_state}, tmp_path / "step_10.pt")
    with pytest.raises(CheckpointMismatch, match="records the config ViT-B-32-quickgelu") as raised:
        load_family_model("focallens", "ViT-B-32", checkpoint=path)
    assert raised.value.configs == ("ViT-B-32-quickgelu",)


def test_a_checkpoint_that_records_nothing_and_fits_both_activations_is_warned_about(vit_b_32_state):
    with pytest.warns(ActivationWarning, match=r"fit ViT-B-32 \(GELU\) and ViT-B-32-quickgelu \(QuickGELU\)"):
        check_checkpoint("ViT-B-32", {"state_dict": vit_b_32_state}, Path("weights.pt"))


def test_a_checkpoint_only_one_config_fits_loads_without_a_warning(tmp_path, base_state):
    path = save({"state_dict": base_state}, tmp_path / "weights.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ActivationWarning)
        load_family_model("clip", TINY, checkpoint=path)


def test_an_open_clip_tag_trained_with_the_other_activation_is_refused_before_downloading():
    with pytest.raises(CheckpointMismatch, match="use --model ViT-L-14-336-quickgelu$"):
        create_base_clip("ViT-L-14-336", "openai")
