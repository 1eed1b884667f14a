"""Several instructions for one image: `instructions` in POST /embed, on readout and full families.

The list form must answer exactly what separate single-instruction inputs answer, in the order
given; on a readout family the image goes to the image model once for all of them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from focalserve_devtools.launch import LocalTriton
from focalserve_training.export import export_family
from tests.helpers.images import b64, shape_png
from tests.helpers.inprocess import InProcessGateway, gateway_settings
from tests.helpers.models import TINY

INSTRUCTIONS = ["What colour is the shape?", "which shape is this?", "Is it bright?", "what colour is the shape?"]
RED, BLUE = shape_png((220, 30, 30)), shape_png((30, 30, 220), box=3)


@pytest.fixture(scope="module")
def gateway(readout_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    settings = gateway_settings(readout_repository, tmp_path_factory.mktemp("data"), max_inputs_per_request=8)
    with InProcessGateway(settings) as client:
        yield client


def embed(client: httpx.Client, model: str, inputs: list[dict]) -> list[dict]:
    response = client.post("/embed", json={"model": model, "inputs": inputs})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def matrix(data: list[dict]) -> np.ndarray:
    return np.array([entry["embedding"] for entry in data], dtype=np.float32)


def image_model_items(client: httpx.Client, model: str) -> float:
    """Items the family's image model has been called with so far (the batch-size histogram's sum)."""
    pattern = rf'^focalserve_batch_size_sum\{{model="{model}_image"\}} (\S+)$'
    found = re.search(pattern, client.get("/metrics").text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("model", ["tinyreadout", "tiny"])
def test_the_list_form_answers_what_single_instructions_answer_in_order(gateway, model):
    listed = embed(gateway, model, [{"image": b64(RED), "instructions": INSTRUCTIONS},
                                    {"image": b64(BLUE), "instructions": INSTRUCTIONS[:2]}])
    singles = embed(gateway, model, [{"image": b64(image), "instruction": text}
                                     for image, texts in ((RED, INSTRUCTIONS), (BLUE, INSTRUCTIONS[:2]))
                                     for text in texts])
    assert [entry["index"] for entry in listed] == [0, 0, 0, 0, 1, 1]
    assert [entry["instruction"] for entry in listed] == [entry["instruction"] for entry in singles]
    assert listed[0]["instruction"] == "what colour is the shape?"
    assert [entry["space"] for entry in listed] == [entry["space"] for entry in singles]
    cosines = np.sum(matrix(listed) * matrix(singles), axis=1)
    assert cosines.min() >= 0.9999, cosines


def test_instructions_change_a_readout_embedding(gateway):
    vectors = matrix(embed(gateway, "tinyreadout", [{"image": b64(RED), "instructions": INSTRUCTIONS[:2]}]))
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-3


def test_a_readout_family_takes_an_image_once_for_all_its_instructions(gateway):
    before = image_model_items(gateway, "tinyreadout")
    embed(gateway, "tinyreadout", [{"image": b64(BLUE), "instructions": INSTRUCTIONS}])
    assert image_model_items(gateway, "tinyreadout") - before == 1
    before = image_model_items(gateway, "tiny")
    embed(gateway, "tiny", [{"image": b64(BLUE), "instructions": INSTRUCTIONS}])
    assert image_model_items(gateway, "tiny") - before == len(INSTRUCTIONS)  # full: one forward each


def test_images_with_different_instruction_counts_share_a_batch(gateway):
    """The batcher pads a batch's condition lists to the longest and cuts each answer back."""
    inputs = [{"image": b64(RED), "instructions": INSTRUCTIONS[:1]}, {"image": b64(BLUE), "instructions": INSTRUCTIONS},
              {"image": b64(RED), "instructions": INSTRUCTIONS[:3]}]
    together = matrix(embed(gateway, "tinyreadout", inputs))
    alone = np.concatenate([matrix(embed(gateway, "tinyreadout", [item])) for item in inputs])
    assert together.shape == (8, alone.shape[1])
    assert np.sum(together * alone, axis=1).min() >= 0.9999


def test_repeated_instruction_fields_in_multipart_are_the_list_form(gateway):
    fields = {"model": "tinyreadout", "instruction": INSTRUCTIONS[:3]}
    response = gateway.post("/embed", files={"image": ("red.png", RED, "image/png")}, data=fields)
    assert response.status_code == 200, response.text
    expected = embed(gateway, "tinyreadout", [{"image": b64(RED), "instructions": INSTRUCTIONS[:3]}])
    assert np.sum(matrix(response.json()["data"]) * matrix(expected), axis=1).min() >= 0.9999


def test_models_report_the_conditioning(gateway):
    models = {model["name"]: model for model in gateway.get("/models").json()["models"]}
    assert models["tinyreadout"]["conditioning"] == "readout"
    assert models["tiny"]["conditioning"] == "full"


@pytest.mark.parametrize(
    ("entry", "status", "loc"),
    [
        ({"image": b64(RED), "instruction": "a", "instructions": ["b"]}, 422, ["inputs", 0]),
        ({"image": b64(RED), "instructions": []}, 422, ["inputs", 0, "instructions"]),
        ({"text": "red", "instructions": ["a"]}, 422, ["inputs", 0]),
        ({"image": b64(RED), "instructions": ["fine", " "]}, 422, ["inputs", 0, "instructions", 1]),
        ({"image": b64(RED), "instructions": ["x"] * 9}, 413, ["inputs"]),
    ],
)
def test_bad_instruction_lists_get_located_4xx_json(gateway, entry, status, loc):
    response = gateway.post("/embed", json={"model": "tinyreadout", "inputs": [entry]})
    assert response.status_code == status, response.text
    assert response.json()["error"]["loc"][: len(loc)] == loc


def test_a_collection_adds_a_readout_item_under_every_condition_in_one_pass(gateway):
    assert gateway.post("/collections", json={"name": "multi", "model": "tinyreadout"}).status_code == 201
    for text in INSTRUCTIONS[:3]:
        assert gateway.post("/collections/multi/conditions", json={"instruction": text}).status_code == 202
    deadline = time.monotonic() + 60
    while any(c["status"] != "ready" for c in gateway.get("/collections/multi/conditions").json()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    before = image_model_items(gateway, "tinyreadout")
    added = gateway.post("/collections/multi/items", json={"items": [{"id": "red", "image": b64(RED)},
                                                                     {"id": "blue", "image": b64(BLUE)}]})
    assert added.status_code == 201, added.text
    assert image_model_items(gateway, "tinyreadout") - before == 2  # two images, three conditions
    for text in INSTRUCTIONS[:3]:
        found = gateway.post("/search", json={"collection": "multi", "condition": text,
                                              "query": {"image": b64(RED)}, "k": 1}).json()["results"][0]
        assert found["id"] == "red" and found["score"] == pytest.approx(1.0, abs=1e-4), text


@pytest.fixture(scope="module")
def readout_triton_gateway(readout_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    """A real tritonserver (CPU, python backend) serving only `tinyreadout`, and a gateway on it."""
    repository = tmp_path_factory.mktemp("readout_only")
    export_family(readout_model, "focallens", TINY, "tinyreadout", repository, "python")
    server = LocalTriton.on_free_ports(repository, tmp_path_factory.mktemp("readout_triton"))
    server.start()
    try:
        settings = gateway_settings(repository, tmp_path_factory.mktemp("data"), backend="triton",
                                    triton_url=server.grpc_url, triton_timeout_s=30)
        with InProcessGateway(settings) as client:
            yield client
    finally:
        server.kill()


def test_triton_serves_the_list_form_as_the_embedded_backend_does(readout_triton_gateway, gateway):
    inputs = [{"image": b64(RED), "instructions": INSTRUCTIONS[:1]}, {"image": b64(BLUE), "instructions": INSTRUCTIONS},
              {"image": b64(RED), "instruction": INSTRUCTIONS[1]}]
    via_triton = embed(readout_triton_gateway, "tinyreadout", inputs)
    in_process = embed(gateway, "tinyreadout", inputs)
    assert [e["instruction"] for e in via_triton] == [e["instruction"] for e in in_process]
    np.testing.assert_allclose(matrix(via_triton), matrix(in_process), atol=1e-5)


def test_conditions_registered_together_build_in_one_pass_over_the_stored_images(readout_repository, tmp_path):
    """`instructions` registers several conditions in one transaction; their backfills share chunks,
    and each stored image goes to the readout image model once for all of them."""
    settings = gateway_settings(readout_repository, tmp_path, build_chunk_size=4)
    images = [shape_png((8 * n, 200 - 8 * n, 60), box=2 + n % 6) for n in range(24)]
    with InProcessGateway(settings) as client:
        client.post("/collections", json={"name": "backfill", "model": "tinyreadout"}).raise_for_status()
        items = [{"id": f"i{n}", "image": b64(image)} for n, image in enumerate(images)]
        client.post("/collections/backfill/items", json={"items": items}).raise_for_status()
        before = image_model_items(client, "tinyreadout")
        registered = client.post("/collections/backfill/conditions", json={"instructions": INSTRUCTIONS[:3]})
        assert registered.status_code == 202, registered.text
        assert [c["instruction"] for c in registered.json()] == [text.lower() for text in INSTRUCTIONS[:3]]
        again = client.post("/collections/backfill/conditions", json={"instructions": INSTRUCTIONS[1:3]})
        assert again.status_code == 200 and len(again.json()) == 2  # already registered: nothing new
        deadline = time.monotonic() + 60
        while any(c["status"] != "ready" for c in client.get("/collections/backfill/conditions").json()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert image_model_items(client, "tinyreadout") - before == len(images)  # 3 x 24 one at a time
        for text in INSTRUCTIONS[:3]:
            found = client.post("/search", json={"collection": "backfill", "condition": text,
                                                 "query": {"image": b64(images[5])}, "k": 1}).json()["results"][0]
            assert found["id"] == "i5" and found["score"] == pytest.approx(1.0, abs=1e-4), text
        bad = client.post("/collections/backfill/conditions", json={"instructions": ["fine", "x" * 600]})
        assert bad.status_code == 422 and bad.json()["error"]["loc"] == ["instructions", 1]
        both = client.post("/collections/backfill/conditions", json={"instruction": "a", "instructions": ["b"]})
        assert both.status_code == 422
