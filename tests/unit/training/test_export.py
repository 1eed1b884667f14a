"""Export: TorchScript equals eager, configs parse with Triton's protobuf, the gateway reads them."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from tritonclient.grpc import model_config_pb2 as pb

from focalserve_family import families_from_configs, model_specs, parse_pbtxt, read_repository
from focalserve_training.export import example_inputs, export_family, family_metadata, role_modules
from focalserve_training.models.factory import create_text_tokenizer
from tests.helpers.models import MINILM, TINY, tiny_focallens


@pytest.mark.parametrize("family", ["focallens", "tinyclip"])
@pytest.mark.parametrize("batch", [1, 7])
def test_exported_models_equal_eager_outputs(model_repository, focallens_model, clip_model, family, batch):
    model = focallens_model if family == "focallens" else clip_model
    name = "tiny" if family == "focallens" else "tinyclip"
    metadata = family_metadata(model, "focallens" if family == "focallens" else "clip", name, TINY)
    modules = role_modules(model, metadata)
    for role, spec in model_specs(metadata, max_batch_size=64).items():
        script = torch.jit.load(str(model_repository / spec.name / "1" / "model.pt"))
        inputs = example_inputs(spec.inputs, batch)
        with torch.no_grad():
            torch.testing.assert_close(script(*inputs), modules[role](*inputs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_name", [TINY, MINILM])
def test_the_metadata_gives_the_text_towers_width_read_off_its_weights(model_name):
    """Read without a forward pass, so a model on any device exports (a GPU host exports from CUDA)."""
    model = tiny_focallens(model_name=model_name)
    with torch.no_grad():
        width = model.clip.encode_text(create_text_tokenizer(model_name)(["probe"])).shape[-1]
    assert family_metadata(model, "focallens", "probe", model_name).embedding_dim == width


def test_every_config_parses_with_tritons_protobuf(model_repository):
    configs = sorted(model_repository.glob("*/config.pbtxt"))
    assert {path.parent.name for path in configs} == {
        "tiny_image", "tiny_instruction", "tiny_text", "tinyclip_image", "tinyclip_text"}
    for path in configs:
        config = parse_pbtxt(path.read_text())
        assert config.name == path.parent.name
        assert config.max_batch_size > 0
        assert config.HasField("dynamic_batching")
        assert config.backend == "python"
        assert (path.parent / "1" / "model.py").is_file()


def test_libtorch_flavour_targets_gpus_with_preferred_batch_sizes_and_no_reoptimisation(tmp_path: Path, clip_model):
    export_family(clip_model, "clip", TINY, "gpu", tmp_path, "libtorch")
    config = parse_pbtxt((tmp_path / "gpu_image" / "config.pbtxt").read_text())
    assert config.backend == "pytorch"
    assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert list(config.dynamic_batching.preferred_batch_size) == [16, 32, 64]
    assert config.parameters["DISABLE_OPTIMIZED_EXECUTION"].string_value == "true"  # no per-shape re-optimisation
    assert not (tmp_path / "gpu_image" / "1" / "model.py").exists()
    assert (tmp_path / "gpu_image" / "1" / "model.pt").is_file()


def test_the_gateway_reads_the_family_that_export_wrote(model_repository, focallens_model):
    families = families_from_configs(read_repository(model_repository))
    tiny, tinyclip = families["tiny"], families["tinyclip"]
    assert tiny.conditional and not tinyclip.conditional
    assert tiny.models["image"].input_names == ("PIXELS", "CONDITION")
    assert tiny.models["instruction"].output.name == "CONDITION"
    assert tinyclip.models.keys() == {"image", "text"}
    assert (tiny.image_size, tiny.context_length, tiny.embedding_dim, tiny.condition_dim) == (32, 16, 64, 64)
    assert tiny.image_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert tiny.checkpoint_hash != tinyclip.checkpoint_hash


def test_the_fused_image_model_equals_the_hand_written_gated_attention(tmp_path: Path, focallens_model):
    """Gates closed, partly open and over 1: the log-bias on the condition key is the same softmax."""
    model = copy.deepcopy(focallens_model)
    with torch.no_grad():
        model.condition_token.gates.copy_(torch.linspace(0.0, 2.5, len(model.condition_token.gates)))
    export_family(model, "focallens", TINY, "fused", tmp_path)
    script = torch.jit.load(str(tmp_path / "fused_image" / "1" / "model.pt"))
    metadata = family_metadata(model, "focallens", "fused", TINY)
    pixels, condition = example_inputs(model_specs(metadata, max_batch_size=8)["image"].inputs, batch=5)
    assert pixels.dtype == torch.uint8  # the graph takes decoded pixels and normalises them itself
    mean, std = (torch.tensor(values).view(1, 3, 1, 1) for values in (metadata.image_mean, metadata.image_std))
    with torch.no_grad():
        expected = model.encode_image((pixels / 255 - mean) / std, condition)
        torch.testing.assert_close(script(pixels, condition), expected, atol=1e-5, rtol=0)
    assert "scaled_dot_product_attention" in script.inlined_graph.str()


def test_each_role_file_holds_only_the_weights_that_role_runs(model_repository):
    def parameter_names(model: str) -> set[str]:
        return set(torch.jit.load(str(model_repository / model / "1" / "model.pt")).state_dict())

    image, instruction, text = (parameter_names(f"tiny_{role}") for role in ("image", "instruction", "text"))
    assert all(name.startswith(("visual.", "condition_token.", "normalise.")) for name in image)
    assert any(name.startswith("condition_token.") for name in image)
    assert all(name.startswith("instruction_tower.") for name in instruction)
    assert not any(name.startswith(("visual.", "instruction_tower.", "condition_token.", "logit_")) for name in text)
    assert all(name.startswith(("visual.", "normalise.")) for name in parameter_names("tinyclip_image"))
    assert not any(name.startswith(("visual.", "logit_")) for name in parameter_names("tinyclip_text"))
