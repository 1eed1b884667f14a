"""POST /embed and the service endpoints against a real gateway with tiny real models."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from tests.helpers.images import b64, shape_png

RED = shape_png((220, 30, 30))
BLUE = shape_png((30, 30, 220))


def embed(gateway: httpx.Client, inputs: list[dict], model: str | None = "tiny") -> httpx.Response:
    body = {"inputs": inputs} if model is None else {"model": model, "inputs": inputs}
    return gateway.post("/embed", json=body)


def vectors(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([item["embedding"] for item in response.json()["data"]], dtype=np.float32)


def test_response_shape_and_normalisation(gateway):
    response = embed(gateway, [{"image": b64(RED), "instruction": "  What COLOUR is\tthe shape? "},
                               {"text": "red"}])
    body = response.json()
    assert body["model"] == "tiny" and body["dim"] == 64
    first, second = body["data"]
    assert first["index"] == 0 and first["instruction"] == "what colour is the shape?"
    assert first["space"].startswith("focallens:") and second["space"].endswith(":text")
    assert np.linalg.norm(vectors(response), axis=1) == pytest.approx([1, 1], abs=1e-5)


def test_same_image_under_two_instructions_gives_different_embeddings(gateway):
    out = vectors(embed(gateway, [{"image": b64(RED), "instruction": "what colour is the shape?"},
                                  {"image": b64(RED), "instruction": "which shape is this?"}]))
    assert np.abs(out[0] - out[1]).max() > 1e-3
    spaces = [d["space"] for d in embed(gateway, [{"image": b64(RED), "instruction": "a"},
                                                  {"image": b64(RED), "instruction": "b"}]).json()["data"]]
    assert spaces[0] != spaces[1]


def test_identical_requests_give_identical_embeddings(gateway):
    inputs = [{"image": b64(BLUE), "instruction": "what colour is the shape?"}]
    np.testing.assert_array_equal(vectors(embed(gateway, inputs)), vectors(embed(gateway, inputs)))


async def test_embedding_alone_equals_embedding_inside_a_batch(gateway):
    alone = vectors(embed(gateway, [{"image": b64(RED), "instruction": "what colour is the shape?"}]))[0]
    images = [shape_png((30 * i, 200 - 20 * i, 90)) for i in range(8)]
    async with gateway.async_client() as client:
        concurrent = [client.post("/embed", json={"model": "tiny", "inputs": [
            {"image": b64(image), "instruction": f"question {i}"}]}) for i, image in enumerate(images)]
        concurrent.append(client.post("/embed", json={"model": "tiny", "inputs": [
            {"image": b64(RED), "instruction": "what colour is the shape?"}]}))
        responses = await asyncio.gather(*concurrent)
    np.testing.assert_allclose(vectors(responses[-1])[0], alone, atol=1e-5)
    in_one_request = vectors(embed(gateway, [{"image": b64(i), "instruction": "x"} for i in images[:3]]
                               + [{"image": b64(RED), "instruction": "what colour is the shape?"}]))
    np.testing.assert_allclose(in_one_request[-1], alone, atol=1e-5)


def test_gateway_equals_the_eager_model(gateway, focallens_model):
    """Decode, open_clip preprocessing, tokenizer, condition and image model match eager PyTorch."""
    instruction = "what colour is the shape?"
    served = vectors(embed(gateway, [{"image": b64(RED), "instruction": instruction}, {"text": "red"}]))
    transform = open_clip.image_transform(32, is_train=False)
    tokenizer = open_clip.get_tokenizer("focalserve-tiny", context_length=16)
    pixels = transform(Image.open(io.BytesIO(RED)).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        condition = focallens_model.encode_instruction(tokenizer([instruction]))
        image = focallens_model.encode_image(pixels, condition)[0].numpy()
        text = focallens_model.encode_text(tokenizer(["red"]))[0].numpy()
    np.testing.assert_allclose(served[0], image, atol=1e-5)
    np.testing.assert_allclose(served[1], text, atol=1e-5)


def test_multipart_upload_equals_json(gateway):
    instruction = "which shape is this?"
    files = {"image": ("red.png", RED, "image/png")}
    response = gateway.post("/embed", data={"instruction": instruction, "model": "tiny"}, files=files)
    np.testing.assert_allclose(vectors(response), vectors(embed(gateway, [
        {"image": b64(RED), "instruction": instruction}])), atol=1e-6)


def test_base64_encoding_carries_the_same_float32_vectors(gateway):
    inputs = [{"image": b64(RED), "instruction": "which shape is this?"}, {"text": "a red circle"}]
    as_floats = vectors(embed(gateway, inputs))
    packed = gateway.post("/embed", json={"model": "tiny", "inputs": inputs, "encoding_format": "base64"})
    decoded = [np.frombuffer(base64.b64decode(entry["embedding"]), dtype="<f4") for entry in packed.json()["data"]]
    np.testing.assert_array_equal(decoded, as_floats.astype(np.float32))
    files = {"image": ("red.png", RED, "image/png")}
    form = {"instruction": "which shape is this?", "model": "tiny", "encoding_format": "base64"}
    multipart = gateway.post("/embed", data=form, files=files).json()["data"][0]["embedding"]
    assert np.frombuffer(base64.b64decode(multipart), dtype="<f4").tolist() == decoded[0].tolist()
    refused = gateway.post("/embed", data={**form, "encoding_format": "hex"}, files=files)
    assert refused.status_code == 422 and refused.json()["error"]["loc"] == ["encoding_format"]


def test_plain_clip_family_embeds_without_instruction(gateway):
    out = embed(gateway, [{"image": b64(RED)}, {"text": "a red circle"}], model="tinyclip")
    assert vectors(out).shape == (2, 64)
    assert out.json()["data"][0]["space"].endswith(":none")


def test_model_may_be_omitted_only_when_one_family_is_loaded(gateway):
    response = embed(gateway, [{"text": "red"}], model=None)
    assert response.status_code == 404
    assert "tiny" in response.json()["error"]["message"]


def _truncated(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, fmt)
    data = buffer.getvalue()
    return data[: len(data) // 2]


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buffer, "PNG")  # a few KB declaring 25 megapixels
    return buffer.getvalue()


BAD_INPUTS = [
    ("zero-byte image", [{"image": "", "instruction": "x"}], "tiny", 422, "invalid_image"),
    ("not base64", [{"image": "%%%not-base64%%%", "instruction": "x"}], "tiny", 422, "invalid_image"),
    ("non-image bytes", [{"image": b64(b"GIF89a but not really"), "instruction": "x"}], "tiny", 422, "invalid_image"),
    ("truncated PNG", [{"image": b64(_truncated("PNG")), "instruction": "x"}], "tiny", 422, "invalid_image"),
    ("truncated JPEG", [{"image": b64(_truncated("JPEG")), "instruction": "x"}], "tiny", 422, "invalid_image"),
    ("decompression bomb", [{"image": b64(_bomb()), "instruction": "x"}], "tiny", 413, "image_too_large"),
    ("unknown model", [{"text": "x"}], "nope", 404, "unknown_model"),
    ("missing instruction", [{"image": b64(RED)}], "tiny", 422, "invalid_instruction"),
    ("instruction for CLIP", [{"image": b64(RED), "instruction": "x"}], "tinyclip", 422, "invalid_instruction"),
    ("empty instruction", [{"image": b64(RED), "instruction": " \n\t "}], "tiny", 422, "invalid_instruction"),
    ("over-long instruction", [{"image": b64(RED), "instruction": "why " * 40}], "tiny", 422, "invalid_instruction"),
    ("too many inputs", [{"text": "x"}] * 17, "tiny", 413, "too_many_inputs"),
    ("no inputs", [], "tiny", 422, "invalid_request"),
    ("image and text", [{"image": b64(RED), "text": "x"}], "tiny", 422, "invalid_request"),
    ("instruction on text", [{"text": "x", "instruction": "y"}], "tiny", 422, "invalid_request"),
    ("unknown field", [{"img": b64(RED)}], "tiny", 422, "invalid_request"),
]


@pytest.mark.parametrize(("inputs", "model", "status", "code"), [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_gets_a_clear_4xx(gateway, inputs, model, status, code):
    response = embed(gateway, inputs, model=model)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


def test_errors_locate_their_input_and_name_the_limit(gateway):
    long_instruction = [{"text": "ok"}, {"image": b64(RED), "instruction": "why " * 40}]
    error = embed(gateway, long_instruction).json()["error"]
    assert (error["loc"], error["limit"], error["code"]) == (["inputs", 1, "instruction"], 64, "invalid_instruction")
    assert not error["message"].startswith("inputs")  # the position is in `loc`, not spliced into the text

    error = embed(gateway, [{"text": "x"}] * 17).json()["error"]
    assert (error["loc"], error["limit"], error["code"]) == (["inputs"], 16, "too_many_inputs")

    error = embed(gateway, [{"text": "x"}, {"text": "y"}, {"image": "not base64!"}]).json()["error"]
    assert (error["loc"], error["code"]) == (["inputs", 2, "image"], "invalid_image") and "limit" not in error

    error = embed(gateway, [{"image": b64(RED)}]).json()["error"]
    assert (error["loc"], error["code"]) == (["inputs", 0, "instruction"], "invalid_instruction")

    error = embed(gateway, [{"text": "x"}, {"img": b64(RED)}]).json()["error"]
    assert error["code"] == "invalid_request" and error["loc"][:2] == ["inputs", 1]

    error = embed(gateway, [{"text": "x"}], model="nope").json()["error"]
    assert (error["loc"], error["code"]) == (["model"], "unknown_model")


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"inputs": "x"}'])
def test_malformed_json_gets_422(gateway, body):
    response = gateway.post("/embed", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_multipart_without_image_gets_422(gateway):
    response = gateway.post("/embed", data={"instruction": "x"}, files={"other": ("a", b"b")})
    assert response.status_code == 422


def test_unknown_route_is_a_json_404(gateway):
    response = gateway.get("/nope")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_service_endpoints(gateway):
    assert gateway.get("/healthz").json()["status"] == "ok"
    assert gateway.get("/readyz").json() == {"status": "ok", "detail": {}}
    models = {m["name"]: m for m in gateway.get("/models").json()["models"]}
    assert models["tiny"]["requires_instruction"] and not models["tinyclip"]["requires_instruction"]
    embed(gateway, [{"image": b64(RED), "instruction": "cache me"}])
    embed(gateway, [{"image": b64(BLUE), "instruction": "cache me"}])
    metrics = gateway.get("/metrics").text
    for name in ("focalserve_request_duration_seconds_bucket", "focalserve_batch_size_bucket",
                 "focalserve_queue_depth", 'focalserve_condition_cache_total{model="tiny",result="hit"}'):
        assert name in metrics


def _instruction_batches(gateway: httpx.Client) -> float:
    for line in gateway.get("/metrics").text.splitlines():
        if line.startswith('focalserve_batch_size_count{model="tiny_instruction"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_repeated_instruction_costs_no_instruction_model_call(gateway):
    before = _instruction_batches(gateway)
    for image in (RED, BLUE, RED):
        embed(gateway, [{"image": b64(image), "instruction": "Is it  ROUND?"}])
    embed(gateway, [{"image": b64(BLUE), "instruction": "is it round?"}])  # same once normalised
    assert _instruction_batches(gateway) == before + 1
