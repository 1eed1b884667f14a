"""POST /v1/embeddings driven by the real `openai` package, compared with POST /embed."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import openai
import pytest
from openai import OpenAI, omit
from openai.types import CreateEmbeddingResponse

from focalserve_client import Client
from tests.helpers.images import b64, shape_png
from tests.helpers.inprocess import BASE_URL, InProcessGateway

RED = shape_png((220, 30, 30))
COLOUR = "what colour is the shape?"


def image_message(image: bytes, instruction: str | None = None) -> list[dict]:
    content = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(image)}}]
    if instruction is not None:
        content.append({"type": "text", "text": instruction})
    return [{"role": "user", "content": content}]


def vectors(response: CreateEmbeddingResponse) -> np.ndarray:
    assert [item.index for item in response.data] == list(range(len(response.data)))
    return np.array([item.embedding for item in response.data], dtype=np.float32)


@pytest.fixture(scope="module")
def oai(gateway: InProcessGateway) -> OpenAI:
    # Not closed here: closing it would close the shared gateway client it sends through.
    return OpenAI(base_url=BASE_URL + "/v1", api_key="unused", max_retries=0, http_client=gateway)


@pytest.fixture(scope="module")
def sdk(gateway: InProcessGateway) -> Iterator[Client]:
    with Client(BASE_URL, transport=gateway.transport()) as client:
        yield client


def test_texts_equal_the_native_text_embeddings(oai, sdk):
    default = oai.embeddings.create(
        model="tiny", input=["red", "Blue  "]
    )  # the package asks for base64
    floats = oai.embeddings.create(model="tiny", input=["red", "Blue  "], encoding_format="float")
    native = sdk.embed_text(["red", "blue"], model="tiny")
    np.testing.assert_allclose(vectors(default), native, atol=1e-6)
    np.testing.assert_allclose(vectors(floats), native, atol=1e-6)
    assert (
        default.model == "tiny"
        and default.object == "list"
        and default.data[0].object == "embedding"
    )
    assert default.usage.prompt_tokens == default.usage.total_tokens == 6  # start, word, end; twice
    single = oai.embeddings.create(model="tiny", input="red", encoding_format="float")
    np.testing.assert_allclose(vectors(single)[0], native[0], atol=1e-6)


def test_base64_is_little_endian_float32(gateway, sdk):
    body = gateway.post(
        "/v1/embeddings",
        json={"model": "tiny", "input": ["red"], "encoding_format": "base64"},
    ).json()
    decoded = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, sdk.embed_text("red", model="tiny")[0])


def test_an_image_under_an_instruction_equals_the_native_embedding(oai, sdk):
    native = sdk.embed(RED, COLOUR, model="tiny")[0]
    posted = oai.post(
        "/embeddings",
        cast_to=CreateEmbeddingResponse,
        body={"model": "tiny", "messages": image_message(RED, COLOUR), "encoding_format": "float"},
    )
    created = oai.embeddings.create(
        model="tiny", input=omit, extra_body={"messages": image_message(RED, COLOUR)}
    )
    np.testing.assert_allclose(vectors(posted), [native], atol=1e-6)
    np.testing.assert_allclose(vectors(created), [native], atol=1e-6)
    assert posted.usage.prompt_tokens == 8  # start, 5 words, "?", end; the image counts none
    other = oai.post(
        "/embeddings",
        cast_to=CreateEmbeddingResponse,
        body={"model": "tiny", "messages": image_message(RED, "which shape is this?")},
    )
    assert np.abs(vectors(other)[0] - native).max() > 1e-3


def test_plain_clip_embeds_an_image_alone_and_refuses_an_instruction(oai, sdk):
    native = sdk.embed(RED, model="tinyclip")[0]
    alone = oai.post(
        "/embeddings",
        cast_to=CreateEmbeddingResponse,
        body={"model": "tinyclip", "messages": image_message(RED), "encoding_format": "float"},
    )
    np.testing.assert_allclose(vectors(alone), [native], atol=1e-6)
    with pytest.raises(openai.UnprocessableEntityError) as error:
        oai.post(
            "/embeddings",
            cast_to=CreateEmbeddingResponse,
            body={"model": "tinyclip", "messages": image_message(RED, COLOUR)},
        )
    assert (
        error.value.body["code"] == "invalid_instruction"
        and "plain CLIP" in error.value.body["message"]
    )


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        (
            {"model": "tiny", "messages": image_message(RED)},
            422,
            "invalid_instruction",
            "FocalLens",
        ),
        (
            {
                "model": "tiny",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "https://example.com/a.png"},
                            },
                            {"type": "text", "text": COLOUR},
                        ],
                    }
                ],
            },
            422,
            "media_url_refused",
            "remote image URLs are off on this gateway",
        ),
        (
            {"model": "tiny", "messages": image_message(RED, COLOUR) + image_message(RED)},
            422,
            "invalid_request",
            "one image part",
        ),
        ({"model": "tiny", "input": [[1, 2, 3]]}, 422, "invalid_request", "token ids"),
        (
            {"model": "tiny", "input": "red", "messages": image_message(RED, COLOUR)},
            422,
            "invalid_request",
            "exactly one",
        ),
        ({"model": "tiny", "input": "red", "dimensions": 32}, 422, "invalid_request", "dimensions"),
        ({"model": "tiny", "input": ["red"] * 17}, 413, "too_many_inputs", "limit is 16"),
        ({"model": "nope", "input": "red"}, 404, "unknown_model", "nope"),
    ],
)
def test_refusals(gateway, body, status, code, words):
    response = gateway.post("/v1/embeddings", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and words in error["message"]


def test_the_openai_package_raises_its_own_errors(oai):
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="nope", input="red")
    with pytest.raises(openai.UnprocessableEntityError):
        oai.embeddings.create(model="tiny", input="")


def test_a_text_message_embeds_the_text(oai, sdk):
    message = [{"role": "user", "content": "red"}]
    response = oai.post(
        "/embeddings",
        cast_to=CreateEmbeddingResponse,
        body={"model": "tiny", "messages": message, "encoding_format": "float"},
    )
    np.testing.assert_allclose(vectors(response), sdk.embed_text("red", model="tiny"), atol=1e-6)
