"""The served demo family understands wordings it never trained on: every held-out phrasing meets
the demo's target through POST /embed, scored as `make demo-model` scores it (same held-out images,
same mAP, same target)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from focalserve_training.data import ColorShapeGenerator
from focalserve_training.data.colorshape import answer
from focalserve_training.data.phrasings import HELD_OUT_PHRASINGS
from focalserve_training.evaluate import ATTRIBUTES, EVAL_SEED, mean_average_precision, meets_target
from tests.helpers.images import b64, png
from tests.helpers.inprocess import InProcessGateway, gateway_settings

N_IMAGES = 600  # as in training/RESULTS.md
PER_REQUEST = 200
SAMPLES = [ColorShapeGenerator(seed=EVAL_SEED).sample(index) for index in range(N_IMAGES)]
LABELS = {attribute: [answer(sample, attribute) for sample in SAMPLES] for attribute in ATTRIBUTES}


IMAGES = [b64(png(sample.image)) for sample in SAMPLES]


@pytest.fixture(scope="module")
def gateway(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    with InProcessGateway(gateway_settings(demo_repository, tmp_path_factory.mktemp("data"))) as client:
        yield client


def served_embeddings(gateway: InProcessGateway, instruction: str) -> torch.Tensor:
    rows = []
    for start in range(0, N_IMAGES, PER_REQUEST):
        inputs = [{"image": image, "instruction": instruction} for image in IMAGES[start:start + PER_REQUEST]]
        response = gateway.post("/embed", json={"model": "demo", "inputs": inputs})
        assert response.status_code == 200, response.text
        rows += [item["embedding"] for item in response.json()["data"]]
    return torch.from_numpy(np.asarray(rows, dtype=np.float32))


@pytest.mark.parametrize(
    ("condition", "phrasing"),
    [(condition, phrasing) for condition, phrasings in HELD_OUT_PHRASINGS.items() for phrasing in phrasings],
)
def test_every_held_out_phrasing_meets_the_target_through_the_api(gateway, condition, phrasing):
    embeddings = served_embeddings(gateway, phrasing)
    scores = {attribute: mean_average_precision(embeddings, LABELS[attribute]) for attribute in ATTRIBUTES}
    assert meets_target(condition, scores), scores
