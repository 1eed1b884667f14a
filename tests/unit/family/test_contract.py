"""The model-family contract: metadata round-trips through config parameters, tensors per role,
and a repository that breaks the contract is refused with a message naming what is wrong."""

from __future__ import annotations

import dataclasses

import pytest
from tritonclient.grpc import model_config_pb2 as pb

from focalserve_family import (
    FamilyMetadata,
    RepositoryError,
    default_batching,
    families_from_configs,
    model_config,
    model_specs,
    parse_pbtxt,
    to_pbtxt,
)

LENS = FamilyMetadata(
    family="focallens",
    name="lens",
    open_clip_model="focalserve-tiny",
    image_size=32,
    image_mean=(0.48145466, 0.4578275, 0.40821073),
    image_std=(0.26862954, 0.26130258, 0.27577711),
    interpolation="bicubic",
    resize_mode="shortest",
    tokenizer="focalserve-tiny",
    context_length=16,
    embedding_dim=64,
    condition_dim=48,
    checkpoint_hash="0123456789ab",
)
CLIP = dataclasses.replace(LENS, family="clip", name="plain", condition_dim=0)


def configs(metadata: FamilyMetadata) -> list:
    specs = model_specs(metadata, max_batch_size=8)
    batching = default_batching("python", 8)
    return [parse_pbtxt(to_pbtxt(model_config(spec, metadata, "python", batching))) for spec in specs.values()]


def test_metadata_round_trips_exactly_through_config_parameters():
    family = families_from_configs(configs(LENS))["lens"]
    assert FamilyMetadata(**{f.name: getattr(family, f.name) for f in dataclasses.fields(FamilyMetadata)}) == LENS


def test_each_role_has_the_tensors_of_the_contract():
    lens = model_specs(LENS, 8)
    assert {role: spec.name for role, spec in lens.items()} == {
        "image": "lens_image", "instruction": "lens_instruction", "text": "lens_text"}
    assert lens["image"].input_names == ("PIXELS", "CONDITION")
    assert [t.dims for t in lens["image"].inputs] == [(3, 32, 32), (48,)]
    assert (lens["instruction"].output.name, lens["instruction"].output.dims) == ("CONDITION", (48,))
    assert lens["text"].inputs[0].dtype == "int64" and lens["text"].output.dims == (64,)
    plain = model_specs(CLIP, 8)
    assert plain.keys() == {"image", "text"} and plain["image"].input_names == ("PIXELS",)


def test_the_gateway_reads_back_what_export_wrote():
    families = families_from_configs(configs(LENS) + configs(CLIP))
    assert families["lens"].conditional and not families["plain"].conditional
    assert families["lens"].models == model_specs(LENS, 8)


def test_configs_of_other_models_are_ignored():
    other = parse_pbtxt('name: "ensemble" platform: "ensemble" max_batch_size: 4')
    assert families_from_configs([other]) == {}


def test_a_family_missing_a_role_is_refused():
    incomplete = [c for c in configs(LENS) if not c.name.endswith("_instruction")]
    with pytest.raises(RepositoryError, match="lacks its instruction model"):
        families_from_configs(incomplete)


def test_a_missing_or_unknown_parameter_is_named():
    config = configs(CLIP)[0]
    del config.parameters["embedding_dim"]
    with pytest.raises(RepositoryError, match="'embedding_dim' missing"):
        families_from_configs([config])
    config = configs(CLIP)[0]
    config.parameters["family"].string_value = "diffusion"
    with pytest.raises(RepositoryError, match="unknown family kind 'diffusion'"):
        families_from_configs([config])


def test_a_config_that_breaks_tritons_schema_is_refused():
    with pytest.raises(RepositoryError, match="unknown_field"):
        parse_pbtxt('name: "x" unknown_field: 1', "x/config.pbtxt")


def test_image_models_take_uint8_pixels_and_a_repository_of_float_pixels_is_refused():
    assert [t.dtype for t in model_specs(LENS, 8)["image"].inputs] == ["uint8", "fp32"]
    older = configs(LENS)
    image = next(config for config in older if config.name == "lens_image")
    image.input[0].data_type = pb.TYPE_FP32  # as exported before the image model normalised its pixels
    with pytest.raises(RepositoryError, match="export the family again"):
        families_from_configs(older)
