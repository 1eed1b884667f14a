"""A readout family exports one image model that takes each image with any number of conditions."""

from __future__ import annotations

import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from focalserve_family import families_from_configs, parse_pbtxt, read_repository
from tests.helpers.images import normalised


def test_the_family_reads_back_as_readout_with_a_variable_condition_count(readout_repository, readout_model):
    spec = families_from_configs(read_repository(readout_repository))["tinyreadout"]
    assert spec.conditioning == "readout"
    image = spec.models["image"]
    assert [tensor.dims for tensor in image.inputs] == [(3, 32, 32), (-1, readout_model.condition_dim)]
    assert image.output.dims == (-1, spec.embedding_dim)
    assert spec.models["instruction"].output.dims == (readout_model.condition_dim,)
    config = parse_pbtxt((readout_repository / "tinyreadout_image" / "config.pbtxt").read_text())
    assert config.parameters["conditioning"].string_value == "readout"


@pytest.mark.parametrize(("images", "per_image"), [(1, 1), (3, 2), (2, 5)])
def test_the_exported_image_model_equals_eager_for_every_image_and_condition(
    readout_repository, readout_model, images, per_image
):
    script = torch.jit.load(str(readout_repository / "tinyreadout_image" / "1" / "model.pt"))
    generator = torch.Generator().manual_seed(images * 10 + per_image)
    pixels = torch.randint(0, 256, (images, 3, 32, 32), generator=generator, dtype=torch.uint8)
    conditions = torch.randn(images, per_image, readout_model.condition_dim, generator=generator)
    floats = torch.from_numpy(normalised(pixels.numpy(), OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)).float()
    with torch.no_grad():
        exported = script(pixels, conditions)
        eager = torch.stack([
            readout_model.encode_image(floats[i : i + 1].expand(per_image, -1, -1, -1), conditions[i])
            for i in range(images)
        ])
    assert exported.shape == (images, per_image, eager.shape[-1])
    torch.testing.assert_close(exported, eager, atol=1e-5, rtol=0)
